// The local half of SshExec's persistent session: one ssh process (spawned
// by the shared spawn core, over the executor's master) runs the remote
// supervisor of _ssh_supervisor.ts, and every step of the executor is a
// request frame on its stdin; the step's output and status come back as
// frames on its stdout. Each step's output goes through the same LineGate
// and pumpLines as a local process's, so lines, seq, the 1 MiB split and
// UTF-8 replacement are the same; the per-step streams are fed by the frame
// reader and give credit back to the supervisor as the sink takes them, so
// a slow sink slows its own step only, and memory stays bounded.

import { LineGate, pumpLines } from "../executor/_lines.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { LogLine, LogSink } from "../executor/types.ts";
import { SESSION_MAGIC } from "./_ssh_remote.ts";
import { parseStatus, type StepStatus } from "./_ssh_wrapper.ts";
import { concat, indexOfBytes } from "../executor/_bytes.ts";

/** Bytes the supervisor may send of one step's stream before the local side takes them. */
export const DEFAULT_STEP_WINDOW = 2 * 1024 * 1024;
/** How long the supervisor may take to say hello. */
const HELLO_TIMEOUT_MS = 60_000;
/** How long the supervisor may take beyond a step's grace to acknowledge a kill request. */
const KILL_MARGIN_MS = 2000;
/** After the ssh client exits, how long frames already in its pipe may still be read. */
const EXIT_SETTLE_MS = 200;
/** How long `close()` waits for the supervisor to finish before it kills the ssh client. */
const CLOSE_WAIT_MS = 2000;
/** The largest control frame (hello, status, kill acknowledgement) we accept. */
const MAX_CONTROL_FRAME = 4096;
const HEADER = 9;

type Timer = ReturnType<typeof setTimeout>;

const encoder = new TextEncoder();

/** What the session needs to start. */
export interface SessionSpec {
  /** The ssh command line (ending in the host and `sessionCommand()`). */
  argv: readonly string[];
  /** ssh's whole environment. */
  env: Record<string, string>;
  /** Close the session after this long without a step. Default: never. */
  idleMs?: number;
  /** Per step and stream, the bytes in flight before the sink takes them. */
  window?: number;
  /**
   * Turns the end of the session, with steps still running, into the error
   * those steps fail with (the transport reads ssh's words and checks the
   * master).
   */
  lost(end: SessionEnd): Promise<Error>;
}

/** How a session ended, for {@linkcode SessionSpec.lost}. */
export interface SessionEnd {
  /** The ssh client's exit code, or `null`. */
  exitCode: number | null;
  /** The signal that ended the ssh client, or `null`. */
  signal: string | null;
  /** The supervisor had said hello. */
  started: boolean;
  /** The last lines of the session's stderr (ssh's and the supervisor's words). */
  stderr: string;
  /** Why we ended it ourselves (closed, a kill request unanswered, ...), else `null`. */
  reason: string | null;
  /** The supervisor broke the framing (the reason says how). */
  protocolError: boolean;
  /** `close()` ended it. */
  closed: boolean;
}

/** One step, as the supervisor runs it. */
export interface SessionRun {
  /** The argv (no NUL in any of it). */
  argv: readonly string[];
  /** Variables added to the remote base environment. */
  env: Readonly<Record<string, string>>;
  /** Absolute working directory; default the account's home. */
  cwd?: string;
  /** The step's stdin. */
  stdin?: Uint8Array;
  /** Kill after this many milliseconds. */
  timeoutMs?: number;
  /** Grace between SIGTERM and SIGKILL. */
  killGraceMs: number;
}

/** How a step ended. */
export interface SessionRunResult {
  /** The exact wait status, or `null` when the end could not be learnt (timed out or cancelled, connection gone). */
  status: StepStatus | null;
  /** The timeout fired. */
  timedOut: boolean;
  /** The AbortSignal fired. */
  cancelled: boolean;
  /** From the request to the last line delivered. */
  durationMs: number;
  /** Lines delivered per stream. */
  lines: { stdout: number; stderr: number };
}

// ---- frames -------------------------------------------------------------------

function header(type: string, id: number, length: number): Uint8Array {
  const bytes = new Uint8Array(HEADER + length);
  const view = new DataView(bytes.buffer);
  bytes[0] = type.charCodeAt(0);
  view.setUint32(1, id);
  view.setUint32(5, length);
  return bytes;
}

/** The R frame: run `run` as step `id`, with `window` bytes of credit per stream. */
export function encodeRun(id: number, run: SessionRun, window: number): Uint8Array {
  const env = Object.entries(run.env);
  const words = [run.cwd ?? "", ...env.map(([name, value]) => `${name}=${value}`), ...run.argv];
  if (words.some((word) => word.includes("\0"))) {
    throw new TypeError("a step's argv, env and cwd cannot hold a NUL byte");
  }
  const strings = encoder.encode(words.join("\0"));
  const stdin = run.stdin ?? new Uint8Array(0);
  const length = 16 + strings.length + stdin.length;
  if (length > 0xffff_ffff) throw new RangeError("a step's request is over 4 GiB");
  const frame = header("R", id, length);
  const view = new DataView(frame.buffer);
  view.setUint32(HEADER, Math.max(0, Math.round(run.killGraceMs)));
  view.setUint32(HEADER + 4, env.length);
  view.setUint32(HEADER + 8, stdin.length);
  view.setUint32(HEADER + 12, window);
  frame.set(strings, HEADER + 16);
  frame.set(stdin, HEADER + 16 + strings.length);
  return frame;
}

/** The K frame: SIGTERM to step `id`'s group, its grace, SIGKILL. */
export function encodeKill(id: number): Uint8Array {
  return header("K", id, 0);
}

/** The A frame: the sink took `stdout` and `stderr` more bytes of step `id`. */
export function encodeAck(id: number, stdout: number, stderr: number): Uint8Array {
  const frame = header("A", id, 8);
  const view = new DataView(frame.buffer);
  view.setUint32(HEADER, stdout);
  view.setUint32(HEADER + 4, stderr);
  return frame;
}

/** What a {@linkcode FrameReader} hands on. */
export interface FrameHandler {
  /** Bytes of an O (stdout) or E (stderr) frame; one frame may come in several pieces. */
  data(stream: "stdout" | "stderr", id: number, bytes: Uint8Array): void;
  /** A whole control frame (H, X, k, ...). */
  control(type: string, id: number, payload: Uint8Array): void;
}

const HELLO = (() => {
  const magic = encoder.encode(SESSION_MAGIC);
  const frame = header("H", 0, magic.length);
  frame.set(magic, HEADER);
  return frame;
})();

/**
 * Cuts the supervisor's stdout into frames, wherever the reads split them.
 * Bytes before the hello frame (a login shell's rc file may print) are not
 * frames: they are skipped, and their start is kept in `junk`.
 */
export class FrameReader {
  /** The start of what came before the hello frame. */
  junk = "";
  readonly #handler: FrameHandler;
  #synced = false;
  #pre: Uint8Array = new Uint8Array(0);
  readonly #head = new Uint8Array(HEADER);
  #headLength = 0;
  #type = "";
  #id = 0;
  #left = 0;
  #control: Uint8Array | null = null;
  #controlAt = 0;

  constructor(handler: FrameHandler) {
    this.#handler = handler;
  }

  /**
   * Takes the next bytes of the stream.
   *
   * @throws {Error} On a frame no supervisor sends (the stream is not ours).
   */
  push(chunk: Uint8Array): void {
    let at = 0;
    if (!this.#synced) {
      at = this.#sync(chunk);
      if (at < 0) return;
    }
    while (at < chunk.length) {
      if (this.#left > 0 || this.#control !== null) {
        at = this.#body(chunk, at);
        continue;
      }
      const take = Math.min(HEADER - this.#headLength, chunk.length - at);
      this.#head.set(chunk.subarray(at, at + take), this.#headLength);
      this.#headLength += take;
      at += take;
      if (this.#headLength === HEADER) this.#begin();
    }
  }

  /** Finds the hello frame; returns where the frames after it start, or -1. */
  #sync(chunk: Uint8Array): number {
    const data = this.#pre.length === 0 ? chunk : concat(this.#pre, chunk);
    const at = indexOfBytes(data, HELLO);
    const skipped = at < 0 ? data.length - Math.min(data.length, HELLO.length - 1) : at;
    if (this.junk.length < 2000 && skipped > 0) {
      this.junk += new TextDecoder().decode(data.subarray(0, Math.min(skipped, 2000)));
    }
    if (at < 0) {
      this.#pre = data.slice(skipped);
      return -1;
    }
    this.#synced = true;
    this.#pre = new Uint8Array(0);
    this.#handler.control("H", 0, HELLO.subarray(HEADER));
    // Where the frames start in `chunk` (the hello may have begun in `pre`).
    return at + HELLO.length - (data.length - chunk.length);
  }

  #begin(): void {
    const view = new DataView(this.#head.buffer);
    this.#type = String.fromCharCode(this.#head[0]);
    this.#id = view.getUint32(1);
    const length = view.getUint32(5);
    this.#headLength = 0;
    if (this.#type === "O" || this.#type === "E") {
      this.#left = length;
      return;
    }
    if (length > MAX_CONTROL_FRAME || !/^[A-Za-z]$/.test(this.#type)) {
      throw new Error(`the remote supervisor sent a frame SshExec does not know (${this.#head})`);
    }
    this.#control = new Uint8Array(length);
    this.#controlAt = 0;
    if (length === 0) this.#endControl();
  }

  #body(chunk: Uint8Array, at: number): number {
    if (this.#control !== null) {
      const take = Math.min(this.#control.length - this.#controlAt, chunk.length - at);
      this.#control.set(chunk.subarray(at, at + take), this.#controlAt);
      this.#controlAt += take;
      if (this.#controlAt === this.#control.length) this.#endControl();
      return at + take;
    }
    const take = Math.min(this.#left, chunk.length - at);
    this.#left -= take;
    this.#handler.data(
      this.#type === "O" ? "stdout" : "stderr",
      this.#id,
      chunk.subarray(at, at + take),
    );
    return at + take;
  }

  #endControl(): void {
    const payload = this.#control!;
    this.#control = null;
    this.#handler.control(this.#type, this.#id, payload);
  }
}

// ---- one step's stream ---------------------------------------------------------

/**
 * A step's stdout or stderr as a stream for `pumpLines`: the frame reader
 * pushes (never waiting), the pump pulls, and each chunk handed to the pump
 * is reported to `taken`, which gives the supervisor its credit back.
 */
class StepPipe {
  readonly stream: ReadableStream<Uint8Array>;
  #queue: Uint8Array[] = [];
  #ended = false;
  #wake: (() => void) | null = null;

  constructor(taken: (bytes: number) => void) {
    this.stream = new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        while (this.#queue.length === 0 && !this.#ended) {
          await new Promise<void>((resolve) => (this.#wake = resolve));
        }
        const chunk = this.#queue.shift();
        if (chunk === undefined) {
          controller.close();
          return;
        }
        taken(chunk.length);
        controller.enqueue(chunk);
      },
    }, { highWaterMark: 0 });
  }

  push(bytes: Uint8Array): void {
    if (this.#ended) return;
    // A small piece of a large read would keep the whole read's buffer alive
    // while it waits for a slow sink: keep a copy instead.
    this.#queue.push(bytes.byteLength * 8 < bytes.buffer.byteLength ? bytes.slice() : bytes);
    this.#wakeUp();
  }

  end(): void {
    this.#ended = true;
    this.#wakeUp();
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}

type StepEnd = { status: StepStatus } | { lost: Promise<Error> };

interface StepState {
  pipes: [StepPipe, StepPipe];
  /** Bytes taken by the pump and not yet acknowledged, per stream. */
  taken: [number, number];
  /** Bytes received and not yet acknowledged, per stream: never more than the window. */
  unacked: [number, number];
  killAcked: boolean;
  settle(end: StepEnd): void;
}

// ---- the session -----------------------------------------------------------------

/**
 * One ssh session running the remote supervisor; runs any number of steps
 * at once. It is spawned at construction. Once it ends (closed, idle, the
 * ssh client gone), it is not `usable` and a new one must be made.
 */
export class SshSession {
  /** Settles when the ssh process has exited and its pipes are drained. */
  readonly done: Promise<void>;
  readonly #spec: SessionSpec;
  readonly #window: number;
  readonly #ackBytes: number;
  readonly #steps = new Map<number, StepState>();
  readonly #abort = new AbortController();
  readonly #reader: FrameReader;
  readonly #stderr: string[] = [];
  #input!: ReadableStreamDefaultController<Uint8Array>;
  #inputOpen = true;
  #child: Deno.ChildProcess | null = null;
  #nextId = 1;
  #started = false;
  #usable = true;
  #closed = false;
  #reason: string | null = null;
  #protocolError = false;
  #lost: Promise<Error> | null = null;
  #idleTimer: Timer | undefined;
  #helloTimer: Timer | undefined;

  constructor(spec: SessionSpec) {
    this.#spec = spec;
    this.#window = spec.window ?? DEFAULT_STEP_WINDOW;
    this.#ackBytes = Math.max(1, Math.floor(this.#window / 4));
    this.#reader = new FrameReader({
      data: (stream, id, bytes) => this.#data(stream, id, bytes),
      control: (type, id, payload) => this.#control(type, id, payload),
    });
    const input = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#input = controller;
      },
    });
    const hello = setTimeout(
      () =>
        this.#abandon(`the remote supervisor did not start within ${HELLO_TIMEOUT_MS / 1000} s`),
      HELLO_TIMEOUT_MS,
    );
    Deno.unrefTimer(hello);
    this.#helloTimer = hello;
    let exit: { exitCode: number | null; signal: string | null } | null = null;
    this.done = runProcess({
      argv: spec.argv,
      env: spec.env,
      stdin: input,
      ownSession: false,
      killGraceMs: 1000,
      signal: this.#abort.signal,
      stdoutBytes: (chunk) => this.#frames(chunk),
      onSpawn: (child) => {
        this.#child = child;
        this.#updateRef();
        // Fail the running steps soon after ssh exits: a killed multiplexed
        // client does not close its pipes by itself (the master holds them).
        child.status.then((status) => {
          this.#usable = false;
          exit = { exitCode: status.signal ? null : status.code, signal: status.signal ?? null };
          setTimeout(() => this.#ended(exit!), EXIT_SETTLE_MS);
        });
      },
    }, { write: (line) => this.#keepStderr(line) }).then(
      (result) => this.#ended(exit ?? { exitCode: result.exitCode, signal: result.signal }),
      (error) => this.#ended({ exitCode: null, signal: null }, error),
    );
  }

  /** Whether new steps may be sent (the session has not begun to end). */
  get usable(): boolean {
    return this.#usable;
  }

  /**
   * Runs one step; resolves when its status frame has come and its lines
   * are delivered.
   *
   * @throws The sink's error (after the step's group was killed), or the
   *   session's `lost` error when the session ended before the step's status
   *   came (unless the step was being stopped: then `status` is `null`).
   */
  async run(run: SessionRun, sink: LogSink, signal?: AbortSignal): Promise<SessionRunResult> {
    const started = performance.now();
    const id = this.#nextId++;
    const gate = new LineGate(sink);
    let settle!: (end: StepEnd) => void;
    const ended = new Promise<StepEnd>((resolve) => (settle = resolve));
    const state: StepState = {
      pipes: [
        new StepPipe((n) => this.#taken(id, 0, n)),
        new StepPipe((n) => this.#taken(id, 1, n)),
      ],
      taken: [0, 0],
      unacked: [0, 0],
      killAcked: false,
      settle: (end) => {
        if (this.#steps.get(id) !== state) return;
        this.#steps.delete(id);
        for (const pipe of state.pipes) pipe.end();
        settle(end);
        this.#updateRef();
      },
    };
    this.#steps.set(id, state);
    this.#updateRef();
    if (this.#lost) state.settle({ lost: this.#lost });
    else this.#send(encodeRun(id, run, this.#window));

    let timedOut = false;
    let cancelled = false;
    let killing = false;
    let watchdog: Timer | undefined;
    const kill = () => {
      if (killing || this.#steps.get(id) !== state) return;
      killing = true;
      this.#send(encodeKill(id));
      // The supervisor acknowledges at once; silence means the connection is gone.
      watchdog = setTimeout(() => {
        if (this.#steps.get(id) === state && !state.killAcked) {
          this.#abandon(
            `the remote supervisor did not answer a kill request within ${
              run.killGraceMs + KILL_MARGIN_MS
            } ms`,
          );
        }
      }, run.killGraceMs + KILL_MARGIN_MS);
    };
    gate.onFailure = kill;
    const timer = run.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      kill();
    }, run.timeoutMs);
    const onAbort = () => {
      cancelled = true;
      kill();
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    if (signal?.aborted) onAbort();

    const output = Promise.all([
      pumpLines(state.pipes[0].stream, "stdout", gate),
      pumpLines(state.pipes[1].stream, "stderr", gate),
    ]);
    output.catch(() => {});
    let end: StepEnd;
    try {
      end = await ended;
    } finally {
      clearTimeout(timer);
      clearTimeout(watchdog);
      signal?.removeEventListener("abort", onAbort);
    }
    await output;
    if (gate.failure) throw gate.failure.error;
    if ("lost" in end && !timedOut && !cancelled) throw await end.lost;
    return {
      status: "status" in end ? end.status : null,
      timedOut,
      cancelled: cancelled && !timedOut,
      durationMs: performance.now() - started,
      lines: { ...gate.counts },
    };
  }

  /**
   * Ends the session: the supervisor sees EOF, kills what still runs and
   * exits; the ssh client is killed if it has not exited within 2 s.
   */
  async close(): Promise<void> {
    this.#usable = false;
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    this.#closeInput();
    // The caller awaits this: the ssh process must keep Deno running meanwhile.
    this.#child?.ref();
    const timer = setTimeout(() => this.#abort.abort(), CLOSE_WAIT_MS);
    await this.done;
    clearTimeout(timer);
  }

  // ---- frames in ------------------------------------------------------------------

  #frames(chunk: Uint8Array): void {
    try {
      this.#reader.push(chunk);
    } catch (error) {
      if (this.#reason === null) this.#protocolError = true;
      this.#abandon(error instanceof Error ? error.message : String(error));
    }
  }

  #data(stream: "stdout" | "stderr", id: number, bytes: Uint8Array): void {
    const state = this.#steps.get(id);
    if (!state) return;
    const index = stream === "stdout" ? 0 : 1;
    state.unacked[index] += bytes.length;
    // The supervisor never sends beyond its credit: memory stays bounded whatever the host does.
    if (state.unacked[index] > this.#window) {
      throw new Error(`the remote supervisor sent more of a step's ${stream} than its window`);
    }
    state.pipes[index].push(bytes);
  }

  #control(type: string, id: number, payload: Uint8Array): void {
    if (type === "H") {
      this.#started = true;
      clearTimeout(this.#helloTimer);
    } else if (type === "X") {
      const status = parseStatus(new TextDecoder().decode(payload));
      if (status === null) throw new Error("the remote supervisor sent an unreadable status");
      this.#steps.get(id)?.settle({ status });
    } else if (type === "k") {
      const state = this.#steps.get(id);
      if (state) state.killAcked = true;
    } else {
      throw new Error(`the remote supervisor sent a frame SshExec does not know (${type})`);
    }
  }

  /** The pump took `bytes` of a step's stream: give the credit back in batches. */
  #taken(id: number, stream: 0 | 1, bytes: number): void {
    const state = this.#steps.get(id);
    if (!state) return;
    state.taken[stream] += bytes;
    if (state.taken[stream] < this.#ackBytes) return;
    this.#send(encodeAck(id, state.taken[0], state.taken[1]));
    state.unacked[0] -= state.taken[0];
    state.unacked[1] -= state.taken[1];
    state.taken = [0, 0];
  }

  // ---- the session's life -----------------------------------------------------------

  #send(frame: Uint8Array): void {
    if (!this.#inputOpen) return;
    this.#input.enqueue(frame);
  }

  #closeInput(): void {
    if (!this.#inputOpen) return;
    this.#inputOpen = false;
    try {
      this.#input.close();
    } catch {
      // Already closed.
    }
  }

  /** Gives the session up: kills the ssh client; the supervisor sees EOF and kills the steps. */
  #abandon(reason: string): void {
    this.#reason ??= reason;
    this.#usable = false;
    this.#abort.abort();
  }

  /** While steps run, the ssh process keeps Deno running; idle, it does not. */
  #updateRef(): void {
    clearTimeout(this.#idleTimer);
    if (this.#steps.size > 0) {
      this.#child?.ref();
      return;
    }
    if (this.#closed) return;
    this.#child?.unref();
    if (this.#spec.idleMs !== undefined && this.#usable) {
      const timer = setTimeout(() => void this.close(), this.#spec.idleMs);
      Deno.unrefTimer(timer);
      this.#idleTimer = timer;
    }
  }

  #keepStderr(line: LogLine): void {
    this.#stderr.push(line.text.slice(0, 2000));
    if (this.#stderr.length > 20) this.#stderr.shift();
  }

  /** The ssh process is gone: the steps still running fail with the session's `lost` error. */
  #ended(exit: { exitCode: number | null; signal: string | null }, error?: unknown): void {
    this.#usable = false;
    this.#closeInput();
    clearTimeout(this.#helloTimer);
    clearTimeout(this.#idleTimer);
    if (this.#lost === null) {
      const junk = this.#reader.junk.trim();
      this.#lost = error !== undefined ? Promise.resolve(asError(error)) : this.#spec.lost({
        ...exit,
        started: this.#started,
        stderr: [...this.#stderr, ...(junk ? [junk] : [])].join("\n").trim(),
        reason: this.#reason,
        protocolError: this.#protocolError,
        closed: this.#closed,
      });
      this.#lost.catch(() => {});
    }
    for (const state of [...this.#steps.values()]) state.settle({ lost: this.#lost });
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new Error(String(error));
}
