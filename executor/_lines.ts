// Turns a process's stdout and stderr byte streams into ordered, numbered
// lines delivered to one sink, one line at a time, with backpressure.

import type { LogLine, LogSink } from "./types.ts";

/** Lines longer than this many UTF-16 code units (1 MiB of ASCII) are split. */
export const MAX_LINE_LENGTH = 1024 * 1024;

/**
 * The key of an optional method a sink may have to take many consecutive
 * lines of one stream at once: `(stream, seq, text, count)`, where `text`
 * holds `count` lines joined by `\n` and the first has `seq`. The agent's
 * batcher has one, so a busy step's output is not cut into a string per line
 * only to be joined again. A symbol, so no user sink gets it by accident.
 */
export const WRITE_LINES: unique symbol = Symbol("ops-exec.writeLines");

/** A sink with the {@linkcode WRITE_LINES} method. */
export interface BatchLogSink extends LogSink {
  /** Takes `count` consecutive lines of `stream`, joined by `\n`, the first with `seq`. */
  [WRITE_LINES](
    stream: LogLine["stream"],
    seq: number,
    text: string,
    count: number,
  ): void | Promise<void>;
}

/**
 * Serialises the sink across both streams: one `seq` counter, one write in
 * flight. While the sink's promise is pending, neither stream is read, so the
 * child blocks on its pipe and memory stays flat.
 */
export class LineGate {
  #sink: LogSink;
  #busy: Promise<unknown> | null = null;
  #seq = 0;
  /** Lines delivered per stream. */
  readonly counts = { stdout: 0, stderr: 0 };
  /** Set once the sink has thrown; later lines are dropped. */
  failure: { error: unknown } | null = null;
  /** While `true`, lines are read and dropped (the run is being torn down). */
  discarding = false;
  /** Chunks read so far, across both streams: lets the drain tell idle from slow. */
  reads = 0;
  /** The readers in use, so that a drain can stop them. */
  readonly readers: Set<ReadableStreamDefaultReader<Uint8Array>> = new Set();

  /** The sink takes batches ({@linkcode WRITE_LINES}). */
  readonly batching: boolean;

  constructor(sink: LogSink) {
    this.#sink = sink;
    this.batching = typeof (sink as Partial<BatchLogSink>)[WRITE_LINES] === "function";
  }

  /**
   * Delivers one line. Returns `undefined` when the sink took it synchronously
   * (the hot path: no promise is created), or a promise to await otherwise.
   */
  deliver(stream: LogLine["stream"], text: string): Promise<void> | undefined {
    if (this.#busy) return this.#afterBusy(stream, text);
    if (this.discarding) return undefined;
    let result: void | Promise<void>;
    try {
      result = this.#sink.write({ stream, text, seq: this.#seq++ });
    } catch (error) {
      this.#fail(error);
      return undefined;
    }
    this.counts[stream]++;
    return this.#hold(result);
  }

  async #afterBusy(stream: LogLine["stream"], text: string): Promise<void> {
    while (this.#busy) await this.#busy;
    await this.deliver(stream, text);
  }

  /**
   * Delivers `count` lines joined by `\n` in one call, to a batching sink
   * (see {@linkcode LineGate.batching}); otherwise as in `deliver`.
   */
  deliverMany(
    stream: LogLine["stream"],
    text: string,
    count: number,
  ): Promise<void> | undefined {
    if (this.#busy) return this.#manyAfterBusy(stream, text, count);
    if (this.discarding) return undefined;
    let result: void | Promise<void>;
    try {
      result = (this.#sink as BatchLogSink)[WRITE_LINES](stream, this.#seq, text, count);
    } catch (error) {
      this.#fail(error);
      return undefined;
    } finally {
      this.#seq += count;
    }
    this.counts[stream] += count;
    return this.#hold(result);
  }

  /** A sink's returned promise holds the gate until it settles; nothing to hold otherwise. */
  #hold(result: void | Promise<void>): Promise<void> | undefined {
    if (result === undefined || result === null) return undefined;
    const pending = Promise.resolve(result).then(
      () => {
        this.#busy = null;
      },
      (error) => {
        this.#busy = null;
        this.#fail(error);
      },
    );
    this.#busy = pending;
    return pending;
  }

  async #manyAfterBusy(stream: LogLine["stream"], text: string, count: number): Promise<void> {
    while (this.#busy) await this.#busy;
    await this.deliverMany(stream, text, count);
  }

  /** Whether a sink write is in flight. */
  get busy(): boolean {
    return this.#busy !== null;
  }

  #fail(error: unknown): void {
    if (!this.failure) this.failure = { error };
    this.discarding = true;
    this.onFailure?.();
  }

  /** Called once, when the sink first throws or rejects. */
  onFailure?: () => void;
}

/**
 * Reads `stream` to its end (or until `cancel` resolves), splitting it into
 * lines for `gate`. A final line without a newline is delivered; bad UTF-8 is
 * replaced, never fatal; an over-long line is split.
 */
export async function pumpLines(
  stream: ReadableStream<Uint8Array>,
  name: LogLine["stream"],
  gate: LineGate,
  opts: { carriageReturnEndsLine?: boolean } = {},
): Promise<void> {
  const crlf = opts.carriageReturnEndsLine === true;
  const reader = stream.getReader();
  gate.readers.add(reader);
  const decoder = new TextDecoder();
  let partial = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      gate.reads++;
      const decoded = decoder.decode(value, { stream: true });
      const text = crlf ? decoded.replaceAll("\r", "\n") : decoded;
      let start = 0;
      if (gate.batching) {
        const batch = completeLines(partial, text);
        if (batch) {
          partial = "";
          start = batch.next;
          const wait = gate.deliverMany(name, batch.text, batch.count);
          if (wait) await wait;
        }
      }
      for (;;) {
        const end = text.indexOf("\n", start);
        if (end < 0) break;
        const line = partial.length === 0
          ? text.slice(start, end)
          : partial + text.slice(start, end);
        partial = "";
        start = end + 1;
        const wait = line.length > MAX_LINE_LENGTH
          ? deliverLong(gate, name, line)
          : gate.deliver(name, line);
        if (wait) await wait;
      }
      if (start < text.length) {
        partial = partial.length === 0 ? text.slice(start) : partial + text.slice(start);
        if (partial.length > MAX_LINE_LENGTH) {
          partial = await deliverPieces(gate, name, partial);
        }
      }
    }
    partial += decoder.decode();
    if (partial.length > 0) {
      const wait = deliverLong(gate, name, partial);
      if (wait) await wait;
    }
  } finally {
    gate.readers.delete(reader);
    reader.releaseLock();
  }
}

/**
 * The complete lines of a chunk (`partial` carried over from the previous
 * one, then `text` up to its last newline) as one string with their count,
 * and where the rest of `text` starts. `null` when there is no complete line,
 * or one is too long (the line-by-line path splits those).
 */
function completeLines(
  partial: string,
  text: string,
): { text: string; count: number; next: number } | null {
  const last = text.lastIndexOf("\n");
  if (last < 0) return null;
  let count = 0;
  let start = 0;
  let length = partial.length;
  for (;;) {
    const end = text.indexOf("\n", start);
    if (end < 0 || end > last) break;
    if (length + end - start > MAX_LINE_LENGTH) return null;
    count++;
    start = end + 1;
    length = 0;
  }
  const body = text.slice(0, last);
  return { text: partial.length === 0 ? body : partial + body, count, next: last + 1 };
}

/** Delivers a line of any length, in pieces of at most MAX_LINE_LENGTH. */
async function deliverLong(
  gate: LineGate,
  name: LogLine["stream"],
  line: string,
): Promise<void> {
  const rest = await deliverPieces(gate, name, line);
  if (rest.length > 0) await gate.deliver(name, rest);
}

/**
 * Delivers whole MAX_LINE_LENGTH pieces from the front of `text` and returns
 * what is left (shorter than one piece). Never cuts a surrogate pair.
 */
async function deliverPieces(
  gate: LineGate,
  name: LogLine["stream"],
  text: string,
): Promise<string> {
  let rest = text;
  while (rest.length > MAX_LINE_LENGTH) {
    let cut = MAX_LINE_LENGTH;
    const unit = rest.charCodeAt(cut - 1);
    if (unit >= 0xd800 && unit <= 0xdbff) cut--;
    const wait = gate.deliver(name, rest.slice(0, cut));
    rest = rest.slice(cut);
    if (wait) await wait;
  }
  return rest;
}
