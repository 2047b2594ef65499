// The local half of SshExec's per-step supervisors (_remote/step.pl and
// _remote/step.sh, one ssh session per step): the frame we write to the
// supervisor's stdin, and what it writes back around the step's output.
//
//   OPSX3 <nonce> <waiter> <graceMs> <graceSeconds> <setupBytes> <setupLines> <stdinBytes>\n
//   <setup: shell-quoted words, <setupLines> lines>   cwd, env count, NAME=value..., argv...
//   <stdin bytes>
//
// The supervisor then keeps reading stdin: any byte (our kill request) or
// EOF (the connection dropped, or the local ssh was killed) sends SIGTERM to
// the step's process group, then SIGKILL after the grace. Before it starts
// the step it writes `\0OPSX3:<nonce>:start\0` on stdout and on stderr:
// whatever came before (a login shell's rc file may print) is not the
// step's. When the step's main process ends, what is left of its group gets
// SIGKILL, and the supervisor writes `\0OPSX3:<nonce>:x:<code>\0` or
// `\0OPSX3:<nonce>:s:<SIGNAME>\0` to stderr. The nonce travels only inside
// the frame (never in an argv or an environment a step could read), so a
// step cannot forge the trailer, and a missing trailer means the supervisor
// never finished: an ssh failure, never the step's own exit 255.

import { TransportError } from "../executor/errors.ts";
import { concat, indexOfBytes } from "../executor/_bytes.ts";
import { EXIT_CODES, shellQuote, STEP_MAGIC as MAGIC, type Waiter } from "./_ssh_remote.ts";

/** Which supervisor the remote command uses. */
export type RemoteSupervisor = "auto" | "perl" | "sh";

/** What the wrapper reported about the step. */
export type StepStatus = { exitCode: number; signal: null } | { exitCode: null; signal: string };

/** What one run sends to the wrapper. */
export interface Frame {
  /** The per-run secret that authenticates the start marker and the trailer. */
  nonce: string;
  /** How the sh supervisor reads the step's wait status (the perl one ignores it). */
  waiter: Waiter;
  /** Grace between SIGTERM and SIGKILL. */
  killGraceMs: number;
  /** The step's argv. */
  argv: readonly string[];
  /** The step's own variables (added to the remote base environment). */
  env: Readonly<Record<string, string>>;
  /** Absolute working directory, or none for the account's home. */
  cwd?: string;
  /** The step's stdin. */
  stdin?: Uint8Array;
}

const encoder = new TextEncoder();

/** A fresh 128-bit nonce, as hex. */
export function newNonce(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Encodes the frame the wrapper reads from stdin. */
export function encodeFrame(frame: Frame): Uint8Array {
  const env = Object.entries(frame.env);
  // env(1), which the sh supervisor execs through, would take a program
  // named `a=b` for a variable: let a shell exec such a program instead.
  const argv = frame.argv[0].includes("=")
    ? ["/bin/sh", "-c", 'exec "$@"', "sh", ...frame.argv]
    : frame.argv;
  const words = [
    frame.cwd ?? "",
    String(env.length),
    ...env.map(([name, value]) => `${name}=${value}`),
    ...argv,
  ];
  const setup = encoder.encode(`${words.map(shellQuote).join(" ")}\n`);
  let lines = 0;
  for (const byte of setup) if (byte === 0x0a) lines++;
  const stdin = frame.stdin ?? new Uint8Array(0);
  const grace = Math.max(0, Math.round(frame.killGraceMs));
  const header = encoder.encode(
    `${MAGIC} ${frame.nonce} ${frame.waiter} ${grace} ${
      (grace / 1000).toFixed(3)
    } ${setup.length} ${lines} ${stdin.length}\n`,
  );
  const out = new Uint8Array(header.length + setup.length + stdin.length);
  out.set(header, 0);
  out.set(setup, header.length);
  out.set(stdin, header.length + setup.length);
  return out;
}

/** The byte written to the wrapper's stdin to ask it to kill the step (a line, for sh's `read`). */
export const KILL_REQUEST: Uint8Array = encoder.encode("\n");

/** The most of what came before the start marker that is kept, per stream. */
const MAX_JUNK = 4000;

/**
 * Drops everything a stream carries before the supervisor's start marker
 * (what the login shell's rc files printed, or the supervisor's own words
 * when it cannot start the step), and keeps its beginning in `junk`.
 */
export class StartGate {
  /** Whether the start marker has been seen. */
  started = false;
  /** The start of what came before the marker, as text. */
  junk = "";
  /** The transform to put on the stream. */
  readonly transform: TransformStream<Uint8Array, Uint8Array>;
  readonly #marker: Uint8Array;
  #held: Uint8Array = new Uint8Array(0);

  /** @param nonce The run's nonce. */
  constructor(nonce: string) {
    this.#marker = encoder.encode(`\0${MAGIC}:${nonce}:start\0`);
    this.transform = new TransformStream({
      transform: (chunk, controller) => this.#take(chunk, controller),
      flush: () => this.#keep(this.#held),
    });
  }

  #take(chunk: Uint8Array, controller: TransformStreamDefaultController<Uint8Array>): void {
    if (this.started) {
      controller.enqueue(chunk);
      return;
    }
    const data = this.#held.length === 0 ? chunk : concat(this.#held, chunk);
    const at = indexOfBytes(data, this.#marker);
    if (at < 0) {
      const keep = partialMatchLength(data, this.#marker);
      this.#keep(data.subarray(0, data.length - keep));
      this.#held = data.slice(data.length - keep);
      return;
    }
    this.#keep(data.subarray(0, at));
    this.#held = new Uint8Array(0);
    this.started = true;
    const rest = data.subarray(at + this.#marker.length);
    if (rest.length > 0) controller.enqueue(rest);
  }

  #keep(bytes: Uint8Array): void {
    if (this.junk.length >= MAX_JUNK || bytes.length === 0) return;
    const text = new TextDecoder().decode(bytes.subarray(0, MAX_JUNK));
    this.junk = (this.junk + text).slice(0, MAX_JUNK);
  }
}

/**
 * Removes the wrapper's trailer from stderr and remembers the status it
 * carries. Bytes that might begin the trailer are held back until the next
 * chunk tells; everything else passes straight through.
 */
export class TrailerStripper {
  /** The status, once the trailer has been seen. */
  status: StepStatus | null = null;
  /** The transform to put on stderr. */
  readonly transform: TransformStream<Uint8Array, Uint8Array>;
  readonly #marker: Uint8Array;
  #held: Uint8Array = new Uint8Array(0);

  /** @param nonce The run's nonce. */
  constructor(nonce: string) {
    this.#marker = encoder.encode(`\0${MAGIC}:${nonce}:`);
    this.transform = new TransformStream({
      transform: (chunk, controller) => this.#take(chunk, controller),
      flush: (controller) => {
        if (this.#held.length > 0) controller.enqueue(this.#held);
      },
    });
  }

  #take(chunk: Uint8Array, controller: TransformStreamDefaultController<Uint8Array>): void {
    let data = this.#held.length === 0 ? chunk : concat(this.#held, chunk);
    this.#held = new Uint8Array(0);
    for (;;) {
      const at = this.status ? -1 : indexOfBytes(data, this.#marker);
      if (at < 0) break;
      const end = data.indexOf(0, at + this.#marker.length);
      if (end < 0) {
        // The trailer has begun but not ended: wait for the rest (it is short).
        if (data.length - at > 256) break;
        if (at > 0) controller.enqueue(data.subarray(0, at));
        this.#held = data.slice(at);
        return;
      }
      const status = parseStatus(
        new TextDecoder().decode(data.subarray(at + this.#marker.length, end)),
      );
      if (!status) break;
      this.status = status;
      if (at > 0) controller.enqueue(data.subarray(0, at));
      data = data.subarray(end + 1);
    }
    if (this.status) {
      if (data.length > 0) controller.enqueue(data);
      return;
    }
    // Keep back a tail that could be the start of the marker.
    const keep = partialMatchLength(data, this.#marker);
    if (data.length > keep) controller.enqueue(data.subarray(0, data.length - keep));
    if (keep > 0) this.#held = data.slice(data.length - keep);
  }
}

/** Reads a status (`x:<code>` or `s:<SIGNAME>`) as the supervisors write it; `null` when it is not one. */
export function parseStatus(text: string): StepStatus | null {
  const exit = /^x:(\d{1,3})$/.exec(text);
  if (exit) return { exitCode: Number(exit[1]), signal: null };
  const signal = /^s:(SIG[A-Z0-9+-]+|SIG\d+)$/.exec(text);
  if (signal) return { exitCode: null, signal: signal[1] };
  return null;
}

/** The length of the longest suffix of `data` that is a proper prefix of `needle`. */
function partialMatchLength(data: Uint8Array, needle: Uint8Array): number {
  const max = Math.min(needle.length - 1, data.length);
  for (let len = max; len > 0; len--) {
    let i = 0;
    while (i < len && data[data.length - len + i] === needle[i]) i++;
    if (i === len) return len;
  }
  return 0;
}

/**
 * Turns a wrapper exit without a trailer into an error: the frame was cut,
 * garbled, or the host lacks what the wrapper needs (see `EXIT_CODES`).
 */
export function wrapperFailure(
  host: string,
  exitCode: number | null,
  detail: string,
): TransportError {
  const why = exitCode === EXIT_CODES.cut
    ? "the connection closed before the step was sent"
    : exitCode === EXIT_CODES.garbled
    ? "the remote wrapper did not understand the frame"
    : exitCode === EXIT_CODES.start
    ? "the remote wrapper could not start the step"
    : `the remote wrapper ended without reporting the step's status (exit ${exitCode})`;
  return new TransportError("protocol", host, `${why}${detail ? `: ${detail}` : ""}`, { detail });
}
