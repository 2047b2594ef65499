// The one rsync argv builder and runner. Every transport's push/pull goes
// through here; they differ only in the remote shell (`-e`) and the path form.

import type { CapabilitySet } from "../capability/capability_set.ts";
import { assertAllowed } from "../capability/guard.ts";
import { normalizeRoot } from "../capability/path.ts";
import { ConfigError, StepError, TransportError } from "../executor/errors.ts";
import { baseEnvironment } from "../executor/_env.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { LogLine, SyncOpts, SyncProgress, SyncResult } from "../executor/types.ts";

/** How a transport reaches the other side. */
export interface RsyncRoute {
  /** The host named in results and errors. */
  host: string;
  /** `sync.push` (local → remote) or `sync.pull` (remote → local). */
  action: "sync.push" | "sync.pull";
  /** The local path. */
  localPath: string;
  /** The remote path (already checked against the capability set). */
  remotePath: string;
  /** Prefix of the remote operand, e.g. `user@host:`; empty for local rsync. */
  remotePrefix?: string;
  /** The remote shell command (`rsync -e`), if any. */
  remoteShell?: string;
  /** Extra variables for rsync's environment (e.g. SSH_AUTH_SOCK). */
  env?: Record<string, string>;
  /** Extra rsync options placed before the paths. */
  extraArgs?: readonly string[];
}

/** rsync exit codes worth their own words. */
const RSYNC_EXIT: Record<number, string> = {
  1: "syntax or usage error",
  2: "protocol incompatibility",
  3: "errors selecting input/output files or directories",
  5: "error starting client-server protocol",
  10: "error in socket I/O",
  11: "error in file I/O",
  12: "error in rsync protocol data stream",
  20: "received SIGUSR1 or SIGINT",
  23: "partial transfer due to error",
  24: "partial transfer due to vanished source files",
  30: "timeout in data send/receive",
  35: "timeout waiting for daemon connection",
  255: "the remote shell failed",
};

/**
 * Checks a remote path given to push/pull: absolute, no NUL. Returns it
 * normalised (`..` resolved lexically) with a trailing slash kept, since the
 * slash carries rsync's "contents of" meaning.
 *
 * @throws {StepError} When the path is not absolute or holds a NUL byte.
 */
export function checkRemotePath(path: string, field = "remotePath"): string {
  if (typeof path !== "string" || !path.startsWith("/")) {
    throw new StepError(field, `must be an absolute path, got ${JSON.stringify(path)}`);
  }
  if (path.includes("\0")) throw new StepError(field, "contains a NUL byte");
  const normal = normalizeRoot(path);
  return path.endsWith("/") && normal !== "/" ? `${normal}/` : normal;
}

/**
 * The caller-side gate of every push/pull: the remote path checked and
 * normalised, then `action` checked on it against `caps`.
 *
 * @returns The normalised remote path, to hand to rsync.
 * @throws {StepError} When the path is not absolute or holds a NUL byte.
 * @throws {CapabilityDenied} When `caps` does not allow `action` on it.
 */
export function gateSync(
  caps: CapabilitySet,
  action: "sync.push" | "sync.pull",
  remotePath: string,
  host: string,
): string {
  const target = checkRemotePath(remotePath);
  assertAllowed(caps, action, { host, path: target });
  return target;
}

/**
 * The rsync options for `opts`: archive mode without device files and
 * specials, stats for the result, and each SyncOpts flag mapped onto rsync's
 * own option.
 */
export function rsyncOptions(opts: SyncOpts): string[] {
  // -rlptgo is --archive without -D: a sync never creates device nodes or
  // fifos (an agent refuses a vector that asks for them). --mkpath creates
  // missing parents of the destination, as `mkdir -p` would (rsync >= 3.2.3).
  const args = ["-rlptgo", "--mkpath", "--stats"];
  if (opts.onProgress) args.push("--info=progress2");
  if (opts.delete) args.push("--delete");
  for (const pattern of opts.exclude ?? []) {
    if (typeof pattern !== "string" || pattern.includes("\0") || pattern.includes("\n")) {
      throw new StepError("exclude", `bad pattern ${JSON.stringify(pattern)}`);
    }
    args.push(`--exclude=${pattern}`);
  }
  if (opts.checksum) args.push("--checksum");
  if (opts.dryRun) args.push("--dry-run");
  if (opts.compress) args.push("--compress");
  return args;
}

/**
 * The `rsync --rsh` command: a program and its arguments as one string that
 * rsync splits on spaces (honouring single and double quotes, not
 * backslashes).
 *
 * @throws {ConfigError} When a word holds both kinds of quote (named by `key`).
 */
export function rsyncRemoteShell(
  program: string,
  args: readonly string[],
  key = "sshOptions",
): string {
  return [program, ...args].map((word) => {
    if (!/[\s'"]/.test(word)) return word;
    if (!word.includes("'")) return `'${word}'`;
    if (!word.includes('"')) return `"${word}"`;
    throw new ConfigError(key, `rsync cannot pass ${JSON.stringify(word)} to its remote shell`);
  }).join(" ");
}

/** The whole rsync argv for a route. */
export function rsyncArgv(route: RsyncRoute, opts: SyncOpts): string[] {
  const remote = `${route.remotePrefix ?? ""}${route.remotePath}`;
  const [source, destination] = route.action === "sync.push"
    ? [route.localPath, remote]
    : [remote, route.localPath];
  return [
    "rsync",
    ...rsyncOptions(opts),
    ...(route.remoteShell ? ["--rsh", route.remoteShell] : []),
    ...(route.extraArgs ?? []),
    "--",
    source,
    destination,
  ];
}

/**
 * Runs rsync for `route` and returns what it did.
 *
 * @throws {TransportError} `sync_failed` when rsync exits non-zero (its
 *   stderr is in `.detail`), `timeout` when `timeoutMs` ran out.
 * @throws The signal's reason when `opts.signal` aborts the transfer.
 */
export async function runRsync(route: RsyncRoute, opts: SyncOpts): Promise<SyncResult> {
  opts.signal?.throwIfAborted();
  const argv = rsyncArgv(route, opts);
  const stdout: string[] = [];
  const stderr: string[] = [];
  const sink = {
    write(line: LogLine) {
      if (line.stream === "stderr") {
        if (stderr.length < 200) stderr.push(line.text);
        return;
      }
      const progress = opts.onProgress && parseProgress(line.text);
      if (progress) opts.onProgress!(progress);
      else if (line.text.trim() !== "") stdout.push(line.text);
    },
  };
  const result = await runProcess({
    argv,
    env: { ...baseEnvironment(), ...route.env },
    killGraceMs: 2000,
    timeoutMs: opts.timeoutMs,
    signal: opts.signal,
    carriageReturnEndsLine: true,
  }, sink);
  if (result.cancelled) throw opts.signal!.reason;
  if (result.timedOut) {
    throw new TransportError(
      "timeout",
      route.host,
      `${route.action} of ${route.remotePath} timed out after ${opts.timeoutMs} ms`,
    );
  }
  if (result.exitCode !== 0) {
    const why = result.exitCode === null
      ? `killed by ${result.signal}`
      : `exit ${result.exitCode}${
        RSYNC_EXIT[result.exitCode] ? ` (${RSYNC_EXIT[result.exitCode]})` : ""
      }`;
    const detail = stderr.join("\n").trim();
    throw new TransportError(
      "sync_failed",
      route.host,
      `${route.action} ${route.localPath} ${
        route.action === "sync.push" ? "->" : "<-"
      } ${route.remotePath}: rsync ${why}${detail ? `: ${lastLines(detail)}` : ""}`,
      { detail },
    );
  }
  return {
    host: route.host,
    action: route.action,
    ...parseStats(stdout),
    dryRun: opts.dryRun === true,
    durationMs: result.durationMs,
  };
}

type Stats = Pick<
  SyncResult,
  | "filesTransferred"
  | "filesCreated"
  | "filesDeleted"
  | "totalSize"
  | "literalBytes"
  | "bytesSent"
  | "bytesReceived"
>;

const STAT_LINES: [RegExp, keyof Stats][] = [
  [/^Number of regular files transferred: ([\d,.]+)/, "filesTransferred"],
  [/^Number of created files: ([\d,.]+)/, "filesCreated"],
  [/^Number of deleted files: ([\d,.]+)/, "filesDeleted"],
  [/^Total file size: ([\d,.]+)/, "totalSize"],
  [/^Literal data: ([\d,.]+)/, "literalBytes"],
  [/^Total bytes sent: ([\d,.]+)/, "bytesSent"],
  [/^Total bytes received: ([\d,.]+)/, "bytesReceived"],
];

/** Reads the numbers of rsync's `--stats` block. */
export function parseStats(lines: readonly string[]): Stats {
  const stats: Stats = {
    filesTransferred: 0,
    filesCreated: 0,
    filesDeleted: 0,
    totalSize: 0,
    literalBytes: 0,
    bytesSent: 0,
    bytesReceived: 0,
  };
  for (const line of lines) {
    for (const [pattern, key] of STAT_LINES) {
      const match = pattern.exec(line.trim());
      if (match) stats[key] = Number(match[1].replace(/[,.]/g, ""));
    }
  }
  return stats;
}

const PROGRESS = /^\s*([\d,.]+)\s+(\d+)%\s+(\S+\/s)/;

/** Reads one `--info=progress2` update, e.g. `1,234,567  45%  12.34MB/s  0:00:01`. */
export function parseProgress(text: string): SyncProgress | null {
  const match = PROGRESS.exec(text);
  if (!match) return null;
  return {
    bytes: Number(match[1].replace(/[,.]/g, "")),
    percent: Number(match[2]),
    rate: match[3],
  };
}

function lastLines(text: string): string {
  return text.split("\n").slice(-3).join(" / ");
}
