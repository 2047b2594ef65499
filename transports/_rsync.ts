// The one rsync argv builder and runner. Every transport's push/pull goes
// through here; they differ in the remote shell (`-e`), the path form, and
// which rsync each end runs (rsync 3.x or openrsync: see _rsync_flavour.ts).

import type { CapabilitySet } from "../capability/capability_set.ts";
import { assertAllowed } from "../capability/guard.ts";
import { normalizeRoot } from "../capability/path.ts";
import { ConfigError, StepError, TransportError } from "../executor/errors.ts";
import { baseEnvironment } from "../executor/_env.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { LogLine, SyncOpts, SyncProgress, SyncResult } from "../executor/types.ts";
import {
  askRsyncVersion,
  BASELINE_RSYNC,
  describeFlavour,
  hasMkpath,
  hasProgress2,
  protectsRemoteArgs,
  type RsyncFlavour,
  splitsRshOnWhiteSpace,
} from "./_rsync_flavour.ts";
import { shellQuote } from "./_ssh_remote.ts";

/** The local rsync program when a caller names none: `rsync`, found on the base PATH. */
export const DEFAULT_RSYNC_PROGRAM = "rsync";

/**
 * Checks a caller's `rsyncProgram` option: a program name or path, one line.
 *
 * @returns The program, or {@linkcode DEFAULT_RSYNC_PROGRAM} when none is given.
 * @throws {ConfigError} When it is not a non-empty one-line string.
 */
export function checkRsyncProgram(value: unknown): string {
  if (value === undefined) return DEFAULT_RSYNC_PROGRAM;
  // deno-lint-ignore no-control-regex
  if (typeof value !== "string" || value.trim() === "" || /[\x00-\x1f\x7f]/.test(value)) {
    throw new ConfigError(
      "rsyncProgram",
      `must be a program name or path on one line, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

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
  /** The local rsync program. Default {@linkcode DEFAULT_RSYNC_PROGRAM}. */
  program?: string;
  /** What the local rsync is. Default: {@linkcode BASELINE_RSYNC}. */
  local?: RsyncFlavour;
  /** What the other end runs. Default: {@linkcode BASELINE_RSYNC}. */
  remote?: RsyncFlavour;
  /** The remote shell command (`rsync --rsh`), built by {@linkcode remoteShellCommand}. */
  remoteShell?: string;
  /** The other end's rsync command (`--rsync-path`), when it is not plain `rsync`. */
  rsyncPath?: string;
  /**
   * Send `--mkpath` (the local rsync creates missing parents of the
   * destination; for a push, the receiver must know it too). Default: what
   * {@linkcode mkpathPlan} says is `option`.
   */
  mkpath?: boolean;
  /**
   * The remote operand goes through the remote login shell (ssh): quote the
   * path for it where the local rsync does not escape it itself.
   */
  remoteShellParsesPath?: boolean;
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
  127: "a program was not found",
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
 * The directory a push into `target` needs to exist when nothing creates
 * missing parents (no `--mkpath`): the target itself when it ends with a
 * slash ("into this directory"), else its parent, but only while `caps`
 * grants `sync.push` there too. Creating it never widens the gate: it is
 * the gated path, or a directory the same grant covers. `null` when there
 * is nothing to create within the grant (the parent of a granted root).
 */
export function pushDirectory(caps: CapabilitySet, target: string): string | null {
  if (target.endsWith("/")) return normalizeRoot(target);
  const parent = normalizeRoot(`${target}/..`);
  return caps.allows("sync.push", parent) ? parent : null;
}

/**
 * How a missing destination directory gets created:
 *
 * - `option`: the local rsync sends `--mkpath` and the receiver knows it;
 * - `inject`: the receiver knows `--mkpath` but the local rsync cannot send
 *   it (openrsync, rsync before 3.2.3): the transport adds it to the
 *   receiver's command itself;
 * - `none`: the receiver does not know it (openrsync creates a directory
 *   destination with its parents by itself; older rsync does not).
 */
export function mkpathPlan(
  action: "sync.push" | "sync.pull",
  local: RsyncFlavour,
  remote: RsyncFlavour,
): "option" | "inject" | "none" {
  if (action === "sync.pull") return hasMkpath(local) ? "option" : "none";
  if (!hasMkpath(remote)) return "none";
  return hasMkpath(local) ? "option" : "inject";
}

/**
 * The rsync options for `opts`: archive mode without device files and
 * specials, stats for the result, and each SyncOpts flag mapped onto rsync's
 * own option, in the words the local rsync (`local`) knows.
 */
export function rsyncOptions(
  opts: SyncOpts,
  local: RsyncFlavour = BASELINE_RSYNC,
  ends: { remote?: RsyncFlavour; mkpath?: boolean } = {},
): string[] {
  const mkpath = ends.mkpath ?? hasMkpath(local);
  const remote = ends.remote ?? local;
  // -rlptgo is --archive without -D: a sync never creates device nodes or
  // fifos (an agent refuses a vector that asks for them).
  const args = ["-rlptgo", "--stats"];
  // --mkpath creates missing parents of the destination, as `mkdir -p`
  // would (rsync >= 3.2.3; openrsync rejects it).
  if (mkpath) args.push("--mkpath");
  // rsync 3.1+ reports the whole transfer; openrsync and older rsync only
  // each file (see ProgressReader).
  if (opts.onProgress) args.push(hasProgress2(local) ? "--info=progress2" : "--progress");
  if (opts.delete) {
    args.push("--delete");
    // Only rsync 3.x at both ends counts deletions in --stats; with
    // openrsync at either end they are counted from the `deleting` lines
    // of -v.
    if (local.kind === "openrsync" || remote.kind === "openrsync") args.push("--verbose");
  }
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
 * The `rsync --rsh` command for a program and its arguments, as one string
 * that `local` (the local rsync) splits back into exactly these words:
 * words without white space or quotes are joined with spaces (every rsync
 * splits those alike); otherwise rsync and Apple's openrsync get the words
 * quoted (they honour single and double quotes, not backslashes).
 *
 * @throws {ConfigError} When a word holds both kinds of quote, or when the
 *   local rsync splits on white space only (the open-source openrsync) and a
 *   word holds white space or a quote: use {@linkcode remoteShellCommand},
 *   which writes a script then.
 */
export function rsyncRemoteShell(
  program: string,
  args: readonly string[],
  key = "sshOptions",
  local: RsyncFlavour = BASELINE_RSYNC,
): string {
  const words = [program, ...args];
  if (!words.some(needsQuoting)) return words.join(" ");
  if (splitsRshOnWhiteSpace(local)) {
    const word = words.find(needsQuoting)!;
    throw new ConfigError(
      key,
      `${describeFlavour(local)} splits its remote shell on white space and cannot pass ${
        JSON.stringify(word)
      }`,
    );
  }
  return words.map((word) => {
    if (!needsQuoting(word)) return word;
    if (!word.includes("'")) return `'${word}'`;
    if (!word.includes('"')) return `"${word}"`;
    throw new ConfigError(key, `rsync cannot pass ${JSON.stringify(word)} to its remote shell`);
  }).join(" ");
}

function needsQuoting(word: string): boolean {
  return /[\s'"]/.test(word);
}

/** Options of {@linkcode remoteShellCommand}. */
export interface RemoteShellOptions {
  /** The local rsync. */
  local: RsyncFlavour;
  /**
   * A private directory (no white space in its path) where a remote-shell
   * script may be written. Needed when the words cannot be passed directly,
   * and for `swapStdio`.
   */
  scriptDir?: string;
  /** The script's file name in `scriptDir`. Default `rsh`. */
  name?: string;
  /**
   * Hand the program rsync's connection as its stderr, and rsync's stderr as
   * its stdout (the sync tunnel under openrsync: see sync_tunnel.ts).
   */
  swapStdio?: boolean;
  /** The option named in errors. */
  key?: string;
}

/**
 * The `rsync --rsh` command that runs exactly `words` under the local
 * rsync's splitting rules. When a word cannot pass (white space under the
 * open-source openrsync) or the stdio must be swapped, the words go into a
 * small sh script in `scriptDir`, run as `/bin/sh <script>` (two words
 * without white space, and no need for an executable /tmp).
 *
 * @throws {ConfigError} When a script is needed and `scriptDir` is missing or holds white space.
 */
export async function remoteShellCommand(
  words: readonly string[],
  opts: RemoteShellOptions,
): Promise<string> {
  const key = opts.key ?? "sshOptions";
  const direct = !opts.swapStdio &&
    (!words.some(needsQuoting) || !splitsRshOnWhiteSpace(opts.local));
  if (direct) return rsyncRemoteShell(words[0], words.slice(1), key, opts.local);
  const dir = opts.scriptDir;
  if (dir === undefined || /\s/.test(dir)) {
    throw new ConfigError(
      key,
      `${describeFlavour(opts.local)} needs a remote-shell script, and there is no ` +
        `directory without white space for it (${JSON.stringify(dir)})`,
    );
  }
  const script = remoteShellScript(words, opts.swapStdio === true);
  // Named by its content and written once, atomically: transfers running at
  // once (a push with --mkpath, a pull without) never see each other's
  // script half written.
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", new TextEncoder().encode(script)),
  );
  const hash = [...digest.slice(0, 6)].map((b) => b.toString(16).padStart(2, "0")).join("");
  const path = `${dir}/${opts.name ?? "rsh"}-${hash}`;
  const exists = await Deno.lstat(path).then(() => true, () => false);
  if (!exists) {
    const partial = `${path}.${crypto.randomUUID().slice(0, 8)}`;
    await Deno.writeTextFile(partial, script, { mode: 0o600 });
    await Deno.rename(partial, path);
  }
  return `/bin/sh ${path}`;
}

/** The script behind {@linkcode remoteShellCommand}: one exec of the quoted words. */
export function remoteShellScript(words: readonly string[], swapStdio: boolean): string {
  // 3>&1 1>&2 2>&3 3>&-: the connection (stdout) becomes fd 2, the
  // diagnostics (stderr) fd 1.
  const swap = swapStdio ? "3>&1 1>&2 2>&3 3>&- " : "";
  return `# rsync's remote shell, written by ops-exec for this transfer.\n` +
    `exec ${swap}${words.map(shellQuote).join(" ")} "$@"\n`;
}

/** The whole rsync argv for a route. */
export function rsyncArgv(route: RsyncRoute, opts: SyncOpts): string[] {
  const local = route.local ?? BASELINE_RSYNC;
  const remote = route.remote ?? BASELINE_RSYNC;
  const mkpath = route.mkpath ?? mkpathPlan(route.action, local, remote) === "option";
  const quote = route.remoteShellParsesPath && !protectsRemoteArgs(local) &&
    /[^\w/.,:@%+=-]/.test(route.remotePath);
  const target = `${route.remotePrefix ?? ""}${
    quote ? shellQuote(route.remotePath) : route.remotePath
  }`;
  const [source, destination] = route.action === "sync.push"
    ? [route.localPath, target]
    : [target, route.localPath];
  return [
    route.program ?? DEFAULT_RSYNC_PROGRAM,
    ...rsyncOptions(opts, local, { remote, mkpath }),
    ...(route.remoteShell ? ["--rsh", route.remoteShell] : []),
    ...(route.rsyncPath ? [`--rsync-path=${route.rsyncPath}`] : []),
    ...(route.extraArgs ?? []),
    "--",
    source,
    destination,
  ];
}

/**
 * What the local rsync `program` is, from its `--version`.
 *
 * @throws {TransportError} `spawn_failed` when it cannot run, or is neither rsync nor openrsync.
 */
export async function probeLocalRsync(program: string, host: string): Promise<RsyncFlavour> {
  const answer = await askRsyncVersion(program);
  if (answer.flavour) return answer.flavour;
  throw new TransportError(
    "spawn_failed",
    host,
    `cannot use the local rsync ${JSON.stringify(program)}: ${
      answer.exitCode === 127 || answer.exitCode === 126
        ? "it is not installed or not executable (install rsync, or set rsyncProgram)"
        : `\`${program} --version\` exited ${answer.exitCode} and did not say rsync or openrsync`
    }${answer.text ? ` (${firstLines(answer.text)})` : ""}`,
    { detail: answer.text },
  );
}

/**
 * Runs rsync for `route` and returns what it did.
 *
 * @throws {TransportError} `sync_failed` when rsync exits non-zero (the line
 *   of its stderr that says why is in the message, all of it in `.detail`),
 *   `timeout` when `timeoutMs` ran out.
 * @throws The signal's reason when `opts.signal` aborts the transfer.
 */
export async function runRsync(route: RsyncRoute, opts: SyncOpts): Promise<SyncResult> {
  opts.signal?.throwIfAborted();
  const local = route.local ?? BASELINE_RSYNC;
  const argv = rsyncArgv(route, opts);
  const progress = opts.onProgress
    ? new ProgressReader(progressMode(local), opts.onProgress)
    : null;
  const output = new RsyncOutput(progress);
  const stderr: string[] = [];
  const sink = {
    write(line: LogLine) {
      if (line.stream === "stderr") {
        if (stderr.length < 200) stderr.push(line.text);
        return;
      }
      output.line(line.text);
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
    const code = result.exitCode;
    const why = code === null
      ? `killed by ${result.signal}`
      : `exit ${code}${RSYNC_EXIT[code] ? ` (${RSYNC_EXIT[code]})` : ""}`;
    const detail = stderr.join("\n").trim();
    const cause = rsyncCause(stderr);
    const hint = rsyncHint(route, cause ?? "");
    throw new TransportError(
      "sync_failed",
      route.host,
      `${route.action} ${route.localPath} ${
        route.action === "sync.push" ? "->" : "<-"
      } ${route.remotePath}: rsync ${why}${cause ? `: ${cause}` : ""}${hint ? ` (${hint})` : ""}`,
      { detail },
    );
  }
  progress?.finish();
  return {
    host: route.host,
    action: route.action,
    ...output.stats(),
    dryRun: opts.dryRun === true,
    durationMs: result.durationMs,
  };
}

function firstLines(text: string): string {
  return text.split("\n").filter((l) => l.trim()).slice(0, 2).join(" / ").slice(0, 300);
}

// ---- what rsync said ---------------------------------------------------------

/**
 * Lines that say why rsync failed, most telling first. rsync and openrsync
 * both follow the cause with summaries ("rsync error: ... (code 12)",
 * "connection unexpectedly closed") and openrsync with its whole usage text.
 */
const CAUSES: RegExp[] = [
  /unrecognized option|unknown option|invalid option|illegal option|requires an argument|option .*(?:not supported|unsupported)/i,
  /is your shell clean|protocol version mismatch|remote protocol \d+ is older|protocol incompatib/i,
  /Assertion .* failed|Segmentation fault|Abort trap/i,
  /command not found|: not found|No such file or directory|Permission denied|Operation not permitted|Read-only file system|No space left|Disk quota/i,
  /ops-agent:|refused|denied/i,
];
/** Lines that only summarise or follow on from the cause. */
const CONSEQUENCES =
  /^rsync error: |connection unexpectedly closed|unexpected end of file|child \d+ exited with status|^\(see the rsync man ?page|error in rsync protocol data stream|^rsync: \[\w+\] write error: Broken pipe/i;

/**
 * The line of rsync's stderr that says why it failed (an unrecognised
 * option, an unclean shell, a missing directory), leaving out openrsync's
 * usage text and the summaries that follow the cause. `null` when stderr is
 * empty.
 */
export function rsyncCause(stderr: readonly string[]): string | null {
  const lines = stderr.map((l) => l.trim()).filter((l) => l !== "" && !isUsageLine(l));
  if (lines.length === 0) return null;
  for (const pattern of CAUSES) {
    const found = lines.find((l) => pattern.test(l));
    if (found) return clip(found);
  }
  const informative = lines.filter((l) => !CONSEQUENCES.test(l));
  return clip(informative[0] ?? lines[lines.length - 1]);
}

function isUsageLine(line: string): boolean {
  return /^usage: /.test(line) || /^\[[^\]]*\]$/.test(line) ||
    /^source \.\.\. directory$/.test(line);
}

function clip(line: string): string {
  return line.length > 500 ? `${line.slice(0, 500)}...` : line;
}

/** A known cause's fix, in a few words; empty when there is none to give. */
function rsyncHint(route: RsyncRoute, cause: string): string {
  const local = route.local ?? BASELINE_RSYNC;
  if (/Assertion .*iotag == IT_DATA/.test(cause) && route.action === "sync.pull") {
    return `${describeFlavour(local)} crashes as a pulling client (it acknowledges files on a ` +
      `connection that is not multiplexed); use rsync 3.x for pulls: rsyncProgram`;
  }
  if (/hash_file_by_path/.test(cause) && local.kind === "openrsync") {
    return `${describeFlavour(local)} fails to checksum the files it sends; ` +
      `drop checksum, or use rsync 3.x: rsyncProgram`;
  }
  if (/is your shell clean|protocol version mismatch/i.test(cause)) {
    return "the remote login shell prints something for non-interactive sessions " +
      "(an echo in .bashrc, .zshenv or the like): make it print nothing unless interactive";
  }
  return "";
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

// rsync 3.x labels first, then openrsync's (and rsync 2.6.9's).
const STAT_LINES: [RegExp, keyof Stats][] = [
  [/^Number of (?:regular )?files transferred: (\S+)/, "filesTransferred"],
  [/^Number of created files: (\S+)/, "filesCreated"],
  [/^Number of deleted files: (\S+)/, "filesDeleted"],
  [/^Total file size: (\S+(?: ?[KMGTP]?i?B)?)/, "totalSize"],
  [/^(?:Literal|Unmatched) data: (\S+(?: ?[KMGTP]?i?B)?)/, "literalBytes"],
  [/^Total (?:bytes )?sent: (\S+(?: ?[KMGTP]?i?B)?)/, "bytesSent"],
  [/^Total (?:bytes )?received: (\S+(?: ?[KMGTP]?i?B)?)/, "bytesReceived"],
];

/**
 * An amount as rsync's `--stats` prints it: `200,012` (rsync 3.x, digit
 * groups by locale), `200012 B` (openrsync), or scaled (`1.5M`, `2.0 KiB`)
 * when a humanised format slips in.
 */
export function parseAmount(text: string): number {
  const scaled = /^([\d.,]+) ?([KMGTP])i?B?$/.exec(text.trim());
  if (scaled) {
    const power = "KMGTP".indexOf(scaled[2]) + 1;
    return Math.round(Number(scaled[1].replace(",", ".")) * 1024 ** power);
  }
  const plain = /^([\d.,]+)/.exec(text.trim());
  return plain ? Number(plain[1].replace(/[,.]/g, "")) : 0;
}

/** Reads the numbers of rsync's `--stats` block (either flavour's labels). */
export function parseStats(lines: readonly string[]): Stats {
  const output = new RsyncOutput(null);
  for (const line of lines) output.line(line);
  return output.stats();
}

/**
 * rsync's stdout, read as it comes: the `--stats` numbers, the `deleting`
 * lines of `-v` (openrsync's stats count no deletions), and progress. Keeps
 * nothing else, whatever the number of files.
 */
class RsyncOutput {
  readonly #progress: ProgressReader | null;
  readonly #stats: Partial<Stats> = {};
  #deleting = 0;

  constructor(progress: ProgressReader | null) {
    this.#progress = progress;
  }

  line(text: string): void {
    if (this.#progress?.line(text)) return;
    const line = text.trim();
    if (/^\*?deleting /.test(line)) {
      this.#deleting++;
      return;
    }
    for (const [pattern, key] of STAT_LINES) {
      const match = pattern.exec(line);
      if (match) this.#stats[key] = parseAmount(match[1]);
    }
  }

  stats(): Stats {
    const s = this.#stats;
    return {
      filesTransferred: s.filesTransferred ?? 0,
      filesCreated: s.filesCreated ?? 0,
      filesDeleted: s.filesDeleted ?? this.#deleting,
      totalSize: s.totalSize ?? 0,
      literalBytes: s.literalBytes ?? 0,
      bytesSent: s.bytesSent ?? 0,
      bytesReceived: s.bytesReceived ?? 0,
    };
  }
}

const PROGRESS = /^\s*([\d,.]+)\s+(\d+)%(?:\s+(\S+\/s))?/;
const FILE_DONE = /\(xfe?r#\d+, to-che?ck=(\d+)\/(\d+)\)/;

/** Reads one `--info=progress2` update, e.g. `1,234,567  45%  12.34MB/s  0:00:01`. */
export function parseProgress(text: string): SyncProgress | null {
  const match = PROGRESS.exec(text);
  if (!match) return null;
  return {
    bytes: Number(match[1].replace(/[,.]/g, "")),
    percent: Number(match[2]),
    rate: match[3] ?? "",
  };
}

/**
 * What rsync's progress lines are: the whole transfer's (`--info=progress2`,
 * rsync 3.1+), or one file's (`--progress`) ending with `to-check=I/T`
 * where I counts the files left (rsync before 3.1) or is the file's index
 * (openrsync).
 */
export type ProgressMode = "whole" | "files-left" | "file-index";

/** The progress mode of a local rsync (see {@linkcode ProgressMode}). */
export function progressMode(local: RsyncFlavour): ProgressMode {
  if (hasProgress2(local)) return "whole";
  return local.kind === "openrsync" ? "file-index" : "files-left";
}

/**
 * Turns rsync's progress lines into {@linkcode SyncProgress}. With
 * `--info=progress2` each line is the whole transfer's. With `--progress`
 * each line is one file's: the bytes of finished files are added up, and
 * the percent is the share of the file list done as each file finishes
 * (from `to-check`), 100 at the end.
 */
export class ProgressReader {
  readonly #mode: ProgressMode;
  readonly #emit: (progress: SyncProgress) => void;
  #done = 0;
  #percent = 0;
  #reported = false;

  /**
   * @param mode What the lines are.
   * @param emit Receives each update.
   */
  constructor(mode: ProgressMode, emit: (progress: SyncProgress) => void) {
    this.#mode = mode;
    this.#emit = emit;
  }

  /** Reads one line; `true` when it was a progress line. */
  line(text: string): boolean {
    const progress = parseProgress(text);
    if (!progress) return false;
    if (this.#mode === "whole") {
      this.#emit(progress);
      return true;
    }
    const bytes = this.#done + progress.bytes;
    const finished = FILE_DONE.exec(text);
    if (finished) {
      this.#done = bytes;
      const [count, total] = [Number(finished[1]), Number(finished[2])];
      const share = this.#mode === "file-index" ? (count + 1) / total : (total - count) / total;
      if (total > 0) this.#percent = Math.max(this.#percent, Math.floor(share * 100));
    }
    this.#emit({ bytes, percent: this.#percent, rate: progress.rate });
    this.#reported = true;
    return true;
  }

  /** After a successful transfer, per-file progress ends with 100 % (directories print no line). */
  finish(): void {
    if (this.#mode === "whole" || !this.#reported || this.#percent === 100) return;
    this.#percent = 100;
    this.#emit({ bytes: this.#done, percent: 100, rate: "" });
  }
}
