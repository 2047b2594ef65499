// The stated base environment every step starts from. Nothing else of the
// caller's (or the agent's) own environment reaches a step.

/** The PATH a step starts with (Homebrew's prefix first on macOS). */
export const DEFAULT_PATH = (Deno.build.os === "darwin" ? "/opt/homebrew/bin:" : "") +
  "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/** Variables of the account taken over from the running process, when set. */
const ACCOUNT_VARIABLES = ["HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"] as const;

/**
 * The base environment of a step on this machine: `PATH` (fixed), `LANG`
 * (the process's own, else a UTF-8 default), and `HOME`, `USER`, `LOGNAME`,
 * `SHELL`, `TMPDIR` of the account the process runs as.
 */
export function baseEnvironment(): Record<string, string> {
  const env: Record<string, string> = { PATH: DEFAULT_PATH };
  for (const name of ACCOUNT_VARIABLES) {
    const value = readOwn(name);
    if (value) env[name] = value;
  }
  env.LANG = readOwn("LANG") ||
    (Deno.build.os === "darwin" ? "en_US.UTF-8" : "C.UTF-8");
  return env;
}

/**
 * The directory a step without `cwd` starts in: the home directory of the
 * account it runs as (`HOME`), as sshd starts every ssh session there, or
 * `/` when there is none on disk (as sshd does). One rule on every
 * transport, whatever directory the caller or the agent was started from.
 */
export function homeDirectory(): string {
  const home = readOwn("HOME");
  if (!home) return "/";
  try {
    return Deno.statSync(home).isDirectory ? home : "/";
  } catch (error) {
    // Not there; or not ours to look at (a narrower permission set): let the spawn say.
    return error instanceof Deno.errors.NotFound ? "/" : home;
  }
}

function readOwn(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    // Not readable under this permission set: leave it out.
    return undefined;
  }
}
