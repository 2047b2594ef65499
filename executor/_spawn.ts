// The one process-spawning core. LocalExec, the agent and the ssh transport's
// local side all run their processes through `runProcess`: each process in its
// own session (so its group can be killed as a whole), stdout/stderr split into
// lines with backpressure, and TERM -> grace -> KILL on timeout or cancel.

import { LineGate, pumpLines } from "./_lines.ts";
import { shellSignaller } from "./_signaller.ts";
import type { LogSink, RunOutput } from "./types.ts";

/** What to run and how. */
export interface ProcessSpec {
  /** The program and its arguments. */
  argv: readonly string[];
  /** The whole environment of the child (nothing is inherited). */
  env: Record<string, string>;
  /** Working directory. */
  cwd?: string;
  /**
   * Bytes written to stdin, which is then closed (unless `keepStdinOpen`); or
   * a stream piped to stdin as it comes (the agent's rsync tunnel), with
   * backpressure, closed when the stream ends.
   */
  stdin?: Uint8Array | ReadableStream<Uint8Array>;
  /**
   * Keep stdin open after `stdin` is written, until the process exits. The
   * ssh wrapper uses this: it learns of a dropped connection from stdin EOF.
   */
  keepStdinOpen?: boolean;
  /** Kill after this many milliseconds. */
  timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL. */
  killGraceMs: number;
  /** Cancels the run. */
  signal?: AbortSignal;
  /**
   * After the main process exits, how long to keep reading output that
   * processes outside its group (which the sweep cannot reach) may still hold
   * open. Default 2000 ms.
   */
  drainMs?: number;
  /**
   * Take stdout as raw bytes instead of lines (a binary protocol, such as
   * rsync's): each chunk is handed over as read, and a returned promise is
   * awaited before the next read. stderr stays lines for `sink`.
   */
  stdoutBytes?: (chunk: Uint8Array) => void | Promise<void>;
  /** Treat a carriage return as a line end too (rsync's progress output). */
  carriageReturnEndsLine?: boolean;
  /**
   * How to stop the process on timeout or cancel. Default: SIGTERM to its
   * group, `killGraceMs`, then SIGKILL to the group. `stdin` writes to the
   * child's stdin while it is open (the ssh transport sends its remote
   * wrapper a kill request this way).
   */
  terminate?: (child: Deno.ChildProcess, graceMs: number, stdin: StdinHandle) => Promise<void>;
  /**
   * Start the process in a session (and process group) of its own, so that
   * its whole tree can be killed. Default `true`. The ssh transport's local
   * client needs none (the remote wrapper owns the step's group) and is
   * spared the extra exec; without a session, timeout and cancel signal the
   * process alone and nothing is swept after it exits.
   */
  ownSession?: boolean;
  /**
   * Rewrites stderr's bytes before they are split into lines. The ssh
   * transport strips its remote wrapper's status trailer here.
   */
  stderrTransform?: ReadableWritablePair<Uint8Array, Uint8Array>;
  /**
   * Rewrites stdout's bytes before they are split into lines (not with
   * `stdoutBytes`). The ssh transport drops what a remote login shell printed
   * before its wrapper's start marker here.
   */
  stdoutTransform?: ReadableWritablePair<Uint8Array, Uint8Array>;
  /**
   * Called with the child as soon as it is spawned. The ssh transport's
   * long-lived session uses it to learn at once when its ssh client exits
   * (a killed multiplexed client leaves its pipes open) and to `ref()` /
   * `unref()` the process while it is busy or idle.
   */
  onSpawn?: (child: Deno.ChildProcess) => void;
}

/** Writes to a running child's stdin (see {@linkcode ProcessSpec.terminate}). */
export interface StdinHandle {
  /** Writes `bytes` after whatever was written before; a no-op once stdin is closed. */
  write(bytes: Uint8Array): Promise<void>;
}

/** How a process ended. */
export interface ProcessResult {
  /** Exit code, or `null` after death by signal (or when nothing started). */
  exitCode: number | null;
  /** The fatal signal's name, or `null`. */
  signal: string | null;
  /** The timeout fired. */
  timedOut: boolean;
  /** The AbortSignal fired (or had fired before the start). */
  cancelled: boolean;
  /** From spawn to the end of output, in milliseconds. */
  durationMs: number;
  /** Lines delivered per stream. */
  lines: { stdout: number; stderr: number };
  /** `false` when the signal was already aborted and nothing was spawned. */
  started: boolean;
}

/** The default time to wait for output after the main process exits. */
const DEFAULT_DRAIN_MS = 2000;

/**
 * Runs one process to completion, delivering its output lines to `sink`.
 *
 * A spawn failure (program or cwd missing, not executable) is reported the
 * way a shell reports it, as exit 127 or 126 with a line on stderr, so that
 * every transport gives the same result for the same step. Deno's own
 * permission errors (`NotCapable`) propagate.
 *
 * @throws The sink's error, after the process group has been killed.
 */
export async function runProcess(
  spec: ProcessSpec,
  sink: LogSink,
): Promise<ProcessResult> {
  const gate = new LineGate(sink);
  const started = performance.now();
  if (spec.signal?.aborted) return notStarted(gate, true);

  let child: Deno.ChildProcess;
  const ownSession = spec.ownSession !== false;
  const launcher = ownSession && mayLaunch(spec.argv[0]) ? sessionLauncher() : null;
  const argv = launcher ? [launcher, "--wait", "--", ...spec.argv] : spec.argv;
  const marker = ownSession ? crypto.randomUUID() : undefined;
  try {
    child = new Deno.Command(argv[0], {
      args: argv.slice(1),
      env: marker ? { ...spec.env, [STEP_MARKER]: marker } : spec.env,
      clearEnv: true,
      cwd: spec.cwd,
      stdin: spec.stdin || spec.keepStdinOpen ? "piped" : "null",
      stdout: "piped",
      stderr: "piped",
      detached: ownSession && launcher === null,
    }).spawn();
  } catch (error) {
    return await spawnFailure(spec, gate, error, started);
  }

  spec.onSpawn?.(child);
  const pgid = child.pid;
  let timedOut = false;
  let cancelled = false;
  let terminating: Promise<void> | null = null;
  const stdin = openStdin(child, spec);
  const terminate = () => {
    const stop = spec.terminate ?? (ownSession ? terminateGroup : terminateProcess);
    // Who the step is now, before anything is signalled: every descendant of
    // its main process, also one that dropped the marker (`env -u`) and made
    // a session of its own, while its parent still lives.
    const tree = terminating === null && marker ? descendants(child.pid) : [];
    terminating ??= stop(child, spec.killGraceMs, stdin.handle)
      .catch(() => {})
      .then(() => marker && sweepMarked(marker, tree));
    return terminating;
  };
  gate.onFailure = () => void terminate();

  const timer = spec.timeoutMs === undefined ? undefined : setTimeout(() => {
    timedOut = true;
    void terminate();
  }, spec.timeoutMs);
  const onAbort = () => {
    cancelled = true;
    void terminate();
  };
  spec.signal?.addEventListener("abort", onAbort, { once: true });

  const stdinDone = stdin.done;
  const lineOpts = { carriageReturnEndsLine: spec.carriageReturnEndsLine };
  const stdoutDone = spec.stdoutBytes ? pumpBytes(child.stdout, spec.stdoutBytes, gate) : pumpLines(
    spec.stdoutTransform ? child.stdout.pipeThrough(spec.stdoutTransform) : child.stdout,
    "stdout",
    gate,
    lineOpts,
  );
  const stderr = spec.stderrTransform
    ? child.stderr.pipeThrough(spec.stderrTransform)
    : child.stderr;
  const stderrDone = pumpLines(stderr, "stderr", gate, lineOpts);
  const output = Promise.all([stdoutDone, stderrDone]);
  // A reader's own error (not the sink's) must not go unhandled while we wait.
  output.catch(() => {});

  let status: Deno.CommandStatus;
  try {
    status = await child.status;
  } finally {
    if (timer !== undefined) clearTimeout(timer);
    spec.signal?.removeEventListener("abort", onAbort);
  }
  // The main process is gone: sweep whatever it left in its group, so that no
  // process of the step survives it, then read what is left in the pipes.
  if (ownSession) await signalGroup(pgid, "SIGKILL");
  if (terminating) await terminating;
  await drain(output, gate, spec.drainMs ?? DEFAULT_DRAIN_MS);
  await stdinDone;

  if (gate.failure) throw gate.failure.error;
  return {
    exitCode: status.signal ? null : status.code,
    signal: status.signal ?? null,
    timedOut,
    cancelled: cancelled && !timedOut,
    durationMs: performance.now() - started,
    lines: { ...gate.counts },
    started: true,
  };
}

/**
 * The variable that marks every process of a step (its value is unique per
 * run), so that processes which left the step's group by calling setsid
 * themselves can still be found and killed, as CI runners do.
 */
export const STEP_MARKER = "OPS_EXEC_STEP_ID";

/**
 * Kills every process whose environment carries this run's marker, and every
 * process of `tree` (the step's descendants when it was stopped, each with
 * its start time, so a pid reused since is spared). Runs after a timeout,
 * cancel or sink failure, once the group has been killed. It reads /proc
 * (Linux); where /proc is absent or not readable under the permission set
 * (the agent's, whose steps are swept by their PID namespace instead), the
 * group kill is all there is.
 */
export function sweepMarked(marker: string, tree: readonly ProcessRef[] = []): void {
  const needle = `${STEP_MARKER}=${marker}\0`;
  for (const ref of tree) {
    if (procStat(ref.pid)?.start === ref.start) kill(ref.pid);
  }
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync("/proc")];
  } catch {
    return;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      if (Deno.readTextFileSync(`/proc/${entry.name}/environ`).includes(needle)) {
        kill(Number(entry.name));
      }
    } catch {
      // Gone, not ours to read, or not ours to kill.
    }
  }
}

/** A process, as /proc names it: its pid and start time (clock ticks since boot). */
export interface ProcessRef {
  /** The pid. */
  pid: number;
  /** When it started, so that a pid reused later is not taken for it. */
  start: string;
}

function kill(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch {
    // Gone, or not ours to kill.
  }
}

function procStat(pid: number | string): { ppid: number; start: string } | null {
  try {
    const text = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // The command name is in parentheses and may hold anything: read after the last ")".
    const fields = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return { ppid: Number(fields[1]), start: fields[19] };
  } catch {
    return null;
  }
}

/** Every live descendant of `root` (Linux /proc), each with its start time; empty elsewhere. */
function descendants(root: number): ProcessRef[] {
  let entries: Deno.DirEntry[];
  try {
    entries = [...Deno.readDirSync("/proc")];
  } catch {
    return [];
  }
  const parents = new Map<number, { ppid: number; start: string }>();
  for (const entry of entries) {
    if (!/^\d+$/.test(entry.name)) continue;
    const stat = procStat(entry.name);
    if (stat) parents.set(Number(entry.name), stat);
  }
  const found = new Map<number, string>();
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, stat] of parents) {
      if (found.has(pid) || !(stat.ppid === root || found.has(stat.ppid))) continue;
      found.set(pid, stat.start);
      grew = true;
    }
  }
  return [...found].map(([pid, start]) => ({ pid, start }));
}

/** util-linux's setsid, the cheapest way to start a process in a new session. */
const SETSID = "/usr/bin/setsid";
let launcherPath: string | null | undefined;

/**
 * How a process gets its own session. Deno's `detached: true` calls setsid()
 * in a pre-exec hook, which forces fork(2) instead of posix_spawn(3): about
 * 1.4 ms per spawn from a Deno process. util-linux's `setsid` program, spawned
 * the fast way, costs an extra exec (about 0.5 ms). It never forks here (a
 * freshly spawned child is not a group leader) and `--wait` makes sure of it.
 * Other systems (macOS, busybox) use `detached`.
 */
function sessionLauncher(): string | null {
  if (launcherPath !== undefined) return launcherPath;
  launcherPath = null;
  try {
    if (Deno.build.os === "linux" && Deno.statSync(SETSID).isFile) {
      const out = new Deno.Command(SETSID, {
        args: ["--version"],
        stdin: "null",
        stderr: "null",
        clearEnv: true,
      }).outputSync();
      if (new TextDecoder().decode(out.stdout).includes("util-linux")) launcherPath = SETSID;
    }
  } catch {
    // Not readable or not runnable under this permission set: use `detached`.
  }
  return launcherPath;
}

/**
 * Whether `program` may go through the session launcher. Under a scoped
 * `--allow-run` (the agent's permission set) Deno would only check the
 * launcher, so a program outside the scope is spawned directly instead and
 * refused by Deno itself (`NotCapable`), as the permission set intends.
 */
function mayLaunch(program: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "run" }).state === "granted" ||
      Deno.permissions.querySync({ name: "run", command: program }).state === "granted";
  } catch {
    return false;
  }
}

/**
 * SIGTERM to the group, then SIGKILL after `graceMs` unless the main process
 * has exited by then. Either way the group gets its SIGKILL once the main
 * process exits (see `runProcess`).
 */
export async function terminateGroup(
  child: Deno.ChildProcess,
  graceMs: number,
): Promise<void> {
  await signalGroup(child.pid, "SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const grace = new Promise<"grace">((resolve) => {
    timer = setTimeout(() => resolve("grace"), graceMs);
  });
  const outcome = await Promise.race([child.status.then(() => "exited"), grace]);
  clearTimeout(timer);
  if (outcome === "grace") await signalGroup(child.pid, "SIGKILL");
}

/** SIGTERM to the process alone, then SIGKILL after `graceMs` unless it has exited. */
async function terminateProcess(child: Deno.ChildProcess, graceMs: number): Promise<void> {
  const send = (signal: Deno.Signal) => {
    try {
      child.kill(signal);
    } catch {
      // Already gone.
    }
  };
  send("SIGTERM");
  let timer: ReturnType<typeof setTimeout> | undefined;
  const grace = new Promise<"grace">((resolve) => {
    timer = setTimeout(() => resolve("grace"), graceMs);
  });
  const outcome = await Promise.race([child.status.then(() => "exited"), grace]);
  clearTimeout(timer);
  if (outcome === "grace") send("SIGKILL");
}

let canSignalGroups: boolean | undefined;

/**
 * Sends `signal` to the process group `pgid`. `Deno.kill(-pgid)` needs
 * unscoped `--allow-run`; under a scoped permission set (the agent's) the
 * group is signalled through the `kill` program instead. A group that no
 * longer exists is not an error.
 */
export async function signalGroup(pgid: number, signal: Deno.Signal): Promise<void> {
  canSignalGroups ??= Deno.permissions.querySync({ name: "run" }).state === "granted";
  if (canSignalGroups) {
    try {
      Deno.kill(-pgid, signal);
    } catch {
      // ESRCH: the group is already gone.
    }
    return;
  }
  // A long-lived shell's builtin kill: no spawn per signal.
  if (await shellSignaller.signal(pgid, signal)) return;
  try {
    await new Deno.Command("kill", {
      args: ["-s", signal.replace(/^SIG/, ""), "--", `-${pgid}`],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
  } catch {
    // The group is gone, or kill is missing; nothing more can be done here.
  }
}

/**
 * Writes `spec.stdin` and closes stdin (after the child exits when
 * `keepStdinOpen`); meanwhile `handle` may write more.
 */
function openStdin(
  child: Deno.ChildProcess,
  spec: ProcessSpec,
): { done: Promise<void>; handle: StdinHandle } {
  if (!spec.stdin && !spec.keepStdinOpen) {
    return { done: Promise.resolve(), handle: { write: () => Promise.resolve() } };
  }
  const writer = child.stdin.getWriter();
  let open = true;
  const handle: StdinHandle = {
    write: (bytes) => open ? writer.write(bytes).catch(() => {}) : Promise.resolve(),
  };
  const done = (async () => {
    try {
      if (spec.stdin instanceof ReadableStream) {
        await pipeUntilExit(spec.stdin, writer, child.status);
      } else if (spec.stdin && spec.stdin.length > 0) await writer.write(spec.stdin);
      if (spec.keepStdinOpen) await child.status;
      open = false;
      await writer.close();
    } catch {
      // The child closed its stdin (EPIPE) or exited: nothing to deliver to.
    } finally {
      open = false;
      writer.releaseLock();
    }
  })();
  return { done, handle };
}

/**
 * Copies `stream` into the child's stdin until it ends or the child exits (a
 * stream that never ends, such as a tunnel the client keeps open, must not
 * keep a finished run waiting).
 */
async function pipeUntilExit(
  stream: ReadableStream<Uint8Array>,
  writer: WritableStreamDefaultWriter<Uint8Array>,
  exited: Promise<unknown>,
): Promise<void> {
  const reader = stream.getReader();
  const gone = exited.then(() => null);
  try {
    for (;;) {
      const next = await Promise.race([reader.read(), gone]);
      if (next === null || next.done) return;
      await writer.write(next.value);
    }
  } finally {
    reader.cancel().catch(() => {});
    reader.releaseLock();
  }
}

/** Hands `stream`'s chunks to `consume` as they are read, awaiting it (backpressure). */
async function pumpBytes(
  stream: ReadableStream<Uint8Array>,
  consume: (chunk: Uint8Array) => void | Promise<void>,
  gate: LineGate,
): Promise<void> {
  const reader = stream.getReader();
  gate.readers.add(reader);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      gate.reads++;
      await consume(value);
    }
  } finally {
    gate.readers.delete(reader);
    reader.releaseLock();
  }
}

/**
 * Waits for both readers to reach the end of their pipes. Stops reading only
 * when the pipes have been idle (no chunk read, no sink write pending) for
 * `ms`: a slow sink never loses output, an escaped process holding the pipes
 * never hangs the run.
 */
async function drain(
  output: Promise<unknown>,
  gate: LineGate,
  ms: number,
): Promise<void> {
  let finished = false;
  const done = output.then(() => (finished = true), () => (finished = true));
  await Promise.resolve();
  if (finished) return;
  let reads = gate.reads;
  while (!finished) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      done,
      new Promise((resolve) => (timer = setTimeout(resolve, ms))),
    ]);
    clearTimeout(timer);
    if (finished) return;
    if (gate.reads === reads && !gate.busy) break;
    reads = gate.reads;
  }
  // Something outside the group still holds the pipes open: stop reading.
  await Promise.allSettled([...gate.readers].map((reader) => reader.cancel()));
  await done;
}

function notStarted(gate: LineGate, cancelled: boolean): ProcessResult {
  return {
    exitCode: null,
    signal: null,
    timedOut: false,
    cancelled,
    durationMs: 0,
    lines: { ...gate.counts },
    started: false,
  };
}

async function spawnFailure(
  spec: ProcessSpec,
  gate: LineGate,
  error: unknown,
  started: number,
): Promise<ProcessResult> {
  if (
    !(error instanceof Deno.errors.NotFound) && !(error instanceof Deno.errors.PermissionDenied)
  ) {
    throw error;
  }
  const notFound = error instanceof Deno.errors.NotFound;
  const what = notFound && spec.cwd && !(await isDirectory(spec.cwd))
    ? `cwd ${spec.cwd}: no such directory`
    : `${spec.argv[0]}: ${notFound ? "command not found" : "permission denied"}`;
  await gate.deliver("stderr", `ops-exec: ${what}`);
  if (gate.failure) throw gate.failure.error;
  return {
    exitCode: notFound ? 127 : 126,
    signal: null,
    timedOut: false,
    cancelled: false,
    durationMs: performance.now() - started,
    lines: { ...gate.counts },
    started: false,
  };
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Shapes a process result into the public {@linkcode RunOutput}. */
export function toRunOutput(host: string, action: string, result: ProcessResult): RunOutput {
  return {
    host,
    action,
    exitCode: result.exitCode,
    signal: result.signal,
    success: result.exitCode === 0 && !result.timedOut && !result.cancelled,
    timedOut: result.timedOut,
    cancelled: result.cancelled,
    durationMs: result.durationMs,
    lines: result.lines,
  };
}
