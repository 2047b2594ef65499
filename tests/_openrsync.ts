// openrsync for compatibility tests: the build of ../shared/peers/openrsync
// (macOS 15+ ships openrsync as /usr/bin/rsync), found next to the checkout
// or at $OPENRSYNC; and hosts whose rsync is openrsync: a mount namespace in
// which /usr/bin/rsync is that build (so the first rsync on every PATH, the
// remote account's and the agent's, is openrsync), nothing else changed.
// Needs root (CI runs as root); skips with a reason elsewhere, fails in CI.

import type { SyncOpts } from "../executor/types.ts";
import { rsyncArgv } from "../transports/_rsync.ts";
import type { RsyncFlavour } from "../transports/_rsync_flavour.ts";
import { findProgram, isRoot, missing, RSYNC } from "./_prereq.ts";

const REPO = new URL("../", import.meta.url).pathname;

function envPath(): string[] {
  try {
    const path = Deno.env.get("OPENRSYNC");
    return path ? [path] : [];
  } catch {
    return [];
  }
}

/** The openrsync program, or `null`. */
export const OPENRSYNC: string | null = findProgram(
  ...envPath(),
  `${REPO}../shared/peers/openrsync`,
  "/work/shared/peers/openrsync",
  "/usr/bin/openrsync",
  "/usr/local/bin/openrsync",
);

const UNSHARE = findProgram("/usr/bin/unshare", "/bin/unshare");

/** Whether `OPENRSYNC --version` runs and says openrsync (it needs zlib1g). */
function openrsyncRuns(): boolean {
  if (OPENRSYNC === null) return false;
  try {
    const out = new Deno.Command(OPENRSYNC, { args: ["--version"], stdin: "null" }).outputSync();
    return out.success &&
      /openrsync/.test(new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout));
  } catch {
    return false;
  }
}

/**
 * The reason to skip the openrsync matrix, or `undefined`. Under CI=true a
 * missing part throws instead.
 */
export function openrsyncMissing(): string | undefined {
  return missing(
    [RSYNC === "/usr/bin/rsync", "rsync 3.x at /usr/bin/rsync (Debian package rsync)"],
    [openrsyncRuns(), "openrsync (../shared/peers/openrsync or $OPENRSYNC; it needs zlib1g)"],
    [isRoot() && UNSHARE !== null, "root and unshare(1), for hosts whose rsync is openrsync"],
  );
}

/**
 * A command prefix that runs a program (which it execs, keeping its pid) in
 * a private mount namespace whose /usr/bin/rsync is openrsync.
 */
export function openrsyncHost(): string[] {
  return [
    UNSHARE!,
    "--mount",
    "--propagation",
    "private",
    "--",
    "/bin/sh",
    "-c",
    'mount --bind "$0" /usr/bin/rsync && exec "$@"',
    OPENRSYNC!,
  ];
}

/**
 * The `rsync --server` vector the local rsync `program` (of flavour
 * `local`) sends for `action` with `opts` and the remote path `dest`, as
 * AgentRpc runs it (rsyncArgv, --rsync-path and extra options alike): its
 * remote shell records its arguments and fails.
 */
export async function captureServerVector(
  program: string,
  local: RsyncFlavour,
  action: "sync.push" | "sync.pull",
  opts: SyncOpts,
  dest: string,
): Promise<string[]> {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-vector-" });
  try {
    await Deno.mkdir(`${dir}/src`);
    const record = `${dir}/record.sh`;
    await Deno.writeTextFile(
      record,
      `shift; for word; do printf '%s\\0' "$word"; done > ${dir}/argv; exit 1\n`,
    );
    const argv = rsyncArgv({
      host: "agent",
      action,
      localPath: `${dir}/src/`,
      remotePath: dest,
      remotePrefix: "ops-agent:",
      program,
      local,
      remote: local,
      remoteShell: `/bin/sh ${record}`,
      rsyncPath: local.kind === "openrsync" ? "rsync" : undefined,
      extraArgs: local.kind === "rsync" ? ["--blocking-io", "--old-args"] : [],
    }, opts);
    await new Deno.Command(argv[0], { args: argv.slice(1), stdout: "null", stderr: "null" })
      .output();
    const words = (await Deno.readTextFile(`${dir}/argv`)).split("\0");
    return words.slice(0, -1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
