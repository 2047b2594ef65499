import type { CapabilitySet } from "../capability/capability_set.ts";
import type { Step } from "../step/step.ts";

/** One line of a step's output. */
export interface LogLine {
  /** The stream the line was read from. */
  stream: "stdout" | "stderr";
  /** The line, without its trailing newline; bad UTF-8 replaced by U+FFFD. */
  text: string;
  /** One counter per run across both streams, in the order lines were read. */
  seq: number;
}

/**
 * Where a step's lines go. `write` is awaited before the next line is read:
 * a slow sink slows the step through its pipe. A sink that throws ends the
 * run (the step's process group is killed) and the error propagates.
 */
export interface LogSink {
  /** Receives one line; may return a promise to apply backpressure. */
  write(line: LogLine): void | Promise<void>;
}

/** Options of {@linkcode Executor.runStreaming}. */
export interface RunOptions {
  /** Cancels the step: SIGTERM to its group, grace, SIGKILL. */
  signal?: AbortSignal;
}

/** How a step ended. A non-zero exit is a result, not an exception. */
export interface RunOutput {
  /** The host the step ran on. */
  host: string;
  /** The step's action. */
  action: string;
  /** The exit code, or `null` when the process died by a signal or never started. */
  exitCode: number | null;
  /** The signal that ended the process (e.g. `SIGTERM`), or `null`. */
  signal: string | null;
  /** `true` when the step exited 0 and was neither timed out nor cancelled. */
  success: boolean;
  /** `true` when the step's `timeoutMs` ran out and its group was killed. */
  timedOut: boolean;
  /** `true` when the run's `AbortSignal` fired (or had already fired). */
  cancelled: boolean;
  /** Wall time from start to the end of its output, in milliseconds. */
  durationMs: number;
  /** How many lines each stream delivered. */
  lines: { stdout: number; stderr: number };
}

/** Progress of a running transfer, from rsync's own progress output. */
export interface SyncProgress {
  /** Bytes transferred so far. */
  bytes: number;
  /** Percent of the whole transfer, as rsync estimates it. */
  percent: number;
  /** The current rate as rsync prints it, e.g. `12.34MB/s`. */
  rate: string;
}

/** Options of `push` and `pull`, mapped onto rsync's own options. */
export interface SyncOpts {
  /** Delete files on the receiving side that the sending side lacks (`--delete`). */
  delete?: boolean;
  /** rsync exclude patterns (`--exclude=PATTERN`). */
  exclude?: string[];
  /** Compare by checksum rather than size and mtime (`--checksum`). */
  checksum?: boolean;
  /** Report what would change, change nothing (`--dry-run`). */
  dryRun?: boolean;
  /** Compress in transit (`--compress`). */
  compress?: boolean;
  /** Kill the transfer after this many milliseconds. */
  timeoutMs?: number;
  /** Cancels the transfer. */
  signal?: AbortSignal;
  /**
   * Called with rsync's progress as it runs. What it reports depends on the
   * local rsync: rsync 3.1+ (`--info=progress2`) reports the whole transfer,
   * `percent` by bytes. openrsync (macOS's `/usr/bin/rsync`) and older rsync
   * only report each file (`--progress`): `bytes` then adds up the files so
   * far, `percent` is the share of the file list done (it moves as each file
   * finishes, and ends at 100), and `rate` is the current file's (empty when
   * openrsync prints none, under 1 KB/s).
   */
  onProgress?: (progress: SyncProgress) => void;
}

/** What a transfer did, from rsync's `--stats`. */
export interface SyncResult {
  /** The host on the other side. */
  host: string;
  /** `sync.push` or `sync.pull`. */
  action: "sync.push" | "sync.pull";
  /** Files (regular) that were transferred. */
  filesTransferred: number;
  /**
   * Files rsync created (including directories). Reported by rsync 3.x at
   * both ends; 0 when openrsync is at either end (it does not count them).
   */
  filesCreated: number;
  /**
   * Files rsync deleted (`delete`). rsync 3.x at both ends counts them in
   * `--stats`; with openrsync at either end they are counted from rsync's
   * `deleting` lines.
   */
  filesDeleted: number;
  /** Total size of the source tree's files, in bytes. */
  totalSize: number;
  /** Bytes of file data actually sent (after rsync's delta algorithm). */
  literalBytes: number;
  /** Bytes sent over the wire. */
  bytesSent: number;
  /** Bytes received over the wire. */
  bytesReceived: number;
  /** `true` when nothing was changed because of `dryRun`. */
  dryRun: boolean;
  /** Wall time, in milliseconds. */
  durationMs: number;
}

/** Disk use of one granted root. */
export interface DiskUsage {
  /** The root that was measured. */
  path: string;
  /** The file system's size, in bytes. */
  totalBytes: number;
  /** Bytes in use. */
  usedBytes: number;
  /** Bytes available to an unprivileged user. */
  availableBytes: number;
}

/** Facts about a host, as {@linkcode Executor.observe} returns them. */
export interface HostObservation {
  /** The executor's name for the host. */
  host: string;
  /** The host's own hostname. */
  hostname: string;
  /** The operating system, e.g. `linux` or `darwin`. */
  os: string;
  /** The CPU architecture, e.g. `x86_64` or `aarch64`/`arm64`. */
  arch: string;
  /** The kernel release, e.g. `6.1.0-18-amd64` or `23.4.0`. */
  kernel: string;
  /** Seconds since boot. */
  uptimeSeconds: number;
  /** Load averages over 1, 5 and 15 minutes. */
  loadAverage: [number, number, number];
  /** Memory in bytes. */
  memory: { totalBytes: number; availableBytes: number };
  /** Disk use of the granted sync roots (or `/` when no root is named). */
  disks: DiskUsage[];
  /** When the facts were read, ISO 8601. */
  observedAt: string;
  /** Present when observed through an agent. */
  agent?: {
    /** The agent's version. */
    version: string;
    /** The agent host's own tailnet identity, when it knows it. */
    tailnetSelf?: { name: string; addresses: string[] };
  };
}

/**
 * The executor: runs steps on one host under one {@linkcode CapabilitySet}.
 * Every method checks the set before anything is dispatched and throws
 * `CapabilityDenied` (scope `caller`) when it does not allow the action.
 */
export interface Executor extends AsyncDisposable {
  /** The host this executor targets. */
  readonly host: string;
  /** The caller-side grant this executor is scoped to. */
  capabilities(): CapabilitySet;
  /** Runs a step, delivering its lines to `sink` as they are read. */
  runStreaming(step: Step, sink: LogSink, opts?: RunOptions): Promise<RunOutput>;
  /** Copies `remotePath` on the host to `localPath` (gated as `sync.pull` on `remotePath`). */
  pull(remotePath: string, localPath: string, opts?: SyncOpts): Promise<SyncResult>;
  /** Copies `localPath` to `remotePath` on the host (gated as `sync.push` on `remotePath`). */
  push(localPath: string, remotePath: string, opts?: SyncOpts): Promise<SyncResult>;
  /** Reads host facts (gated as `observe`). */
  observe(): Promise<HostObservation | null>;
  /** Releases connections and masters. Idempotent. */
  close(): Promise<void>;
}
