// Turns a process's stdout and stderr byte streams into ordered, numbered
// lines delivered to one sink, one line at a time, with backpressure.

import type { LogLine, LogSink } from "./types.ts";

/** Lines longer than this many UTF-16 code units (1 MiB of ASCII) are split. */
export const MAX_LINE_LENGTH = 1024 * 1024;

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

  constructor(sink: LogSink) {
    this.#sink = sink;
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

  async #afterBusy(stream: LogLine["stream"], text: string): Promise<void> {
    while (this.#busy) await this.#busy;
    await this.deliver(stream, text);
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
