// Prerequisites of tests that need real parts (sshd, rsync, root, network
// namespaces). On a developer's machine a missing part skips the test with a
// printed reason; under CI=true it is a failure.

/** Whether this run is CI (`CI=true`), where nothing may be skipped. */
export const IN_CI: boolean = Deno.env.get("CI") === "true";

/** The first of `candidates` that exists and is executable, or `null`. */
export function findProgram(...candidates: string[]): string | null {
  for (const path of candidates) {
    try {
      const info = Deno.statSync(path);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return path;
    } catch {
      // Not here; try the next.
    }
  }
  return null;
}

/** `true` when running as root. */
export function isRoot(): boolean {
  return Deno.uid() === 0;
}

/**
 * The reason to skip, or `undefined` when every prerequisite is met.
 * Under CI a missing prerequisite throws instead of skipping.
 *
 * @param checks Pairs of [met, what is missing].
 */
export function missing(...checks: [boolean, string][]): string | undefined {
  const absent = checks.filter(([met]) => !met).map(([, what]) => what);
  if (absent.length === 0) return undefined;
  const reason = absent.join(", ");
  if (IN_CI) throw new Error(`CI=true and a prerequisite is missing: ${reason}`);
  console.warn(`skipping: ${reason}`);
  return reason;
}

/** Path of rsync, or `null`. */
export const RSYNC: string | null = findProgram(
  "/usr/bin/rsync",
  "/usr/local/bin/rsync",
  "/opt/homebrew/bin/rsync",
);

/** Whether anything (a file, a directory, a link, even a dangling one) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}
