// The body of a /v1/run response: NDJSON events on a byte stream with a
// bounded queue. While the queue is full (the client reads slowly), the line
// sink's promise stays pending, so the spawn core stops reading the step's
// pipes and the step blocks in write(2): agent memory stays flat.

import { encodeJsonLine } from "../executor/_ndjson.ts";
import { type BatchLogSink, WRITE_LINES } from "../executor/_lines.ts";
import type { LogLine } from "../executor/types.ts";
import type { RunEvent } from "../transports/_agent_protocol.ts";

/** Bytes queued in the response stream before writers wait. */
const QUEUE_BYTES = 1024 * 1024;
/** A batch of lines is sent once it holds this many characters... */
const BATCH_CHARS = 64 * 1024;
/** ...or this long after its first line, whichever comes first. */
const FLUSH_TICK_MS = 2;

/** A response body of NDJSON events with backpressure. */
export class EventStream {
  /** The body to answer with. */
  readonly readable: ReadableStream<Uint8Array>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #waiters: (() => void)[] = [];
  #closed = false;
  #cancelled = false;
  #full = false;
  /** `performance.now()` of the last event sent. */
  lastSent = performance.now();
  /** Called once when the client goes away before the end. */
  onCancel?: () => void;

  constructor() {
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => {
        this.#full = false;
        this.#wake();
      },
      cancel: () => {
        this.#cancelled = true;
        this.#wake();
        this.onCancel?.();
      },
    }, { highWaterMark: QUEUE_BYTES, size: (chunk) => chunk.byteLength });
  }

  /** The client went away. */
  get cancelled(): boolean {
    return this.#cancelled;
  }

  /** The queue is full: the next writer should wait for {@linkcode EventStream.ready}. */
  get full(): boolean {
    return this.#full && !this.#cancelled && !this.#closed;
  }

  /** Queues one event (dropped if the client is gone). */
  send(event: RunEvent): void {
    this.sendEncoded(encodeJsonLine(event));
  }

  /** Queues one event already encoded as an NDJSON line. */
  sendEncoded(line: Uint8Array): void {
    if (this.#closed || this.#cancelled) return;
    this.#controller.enqueue(line);
    // Read once per event, not per line: `pull` clears it when there is room.
    this.#full = (this.#controller.desiredSize ?? 0) <= 0;
    this.lastSent = performance.now();
  }

  /** Resolves when the queue has room again, or the client is gone. */
  ready(): Promise<void> {
    if (!this.full) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Resolves the writers waiting for room now, room or not (the run is being stopped). */
  releaseWriters(): void {
    this.#wake();
  }

  /** Ends the body. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#cancelled) this.#controller.close();
    this.#wake();
  }

  #wake(): void {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
  }
}

/**
 * The sink the agent runs a step into: consecutive lines of one stream are
 * batched into one `lines` event, sent when the batch is large, 2 ms after
 * its first line, or when the stream switches. The spawn core hands it whole
 * runs of lines at once ({@linkcode WRITE_LINES}), so a busy step's output
 * is never cut into a string per line only to be joined again here.
 */
export class LineBatcher implements BatchLogSink {
  readonly #out: EventStream;
  #stream: LogLine["stream"] = "stdout";
  #seq = 0;
  #count = 0;
  #parts: string[] = [];
  #chars = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** While `true`, a full queue drops lines instead of waiting (agent shutting down). */
  nonBlocking = false;
  /** Lines dropped while {@linkcode LineBatcher.nonBlocking}. */
  dropped = 0;

  constructor(out: EventStream) {
    this.#out = out;
  }

  /** Takes one line; returns a promise while the response queue is full. */
  write(line: LogLine): Promise<void> | undefined {
    return this[WRITE_LINES](line.stream, line.seq, line.text, 1);
  }

  /** Takes `count` lines joined by `\n`; returns a promise while the response queue is full. */
  [WRITE_LINES](
    stream: LogLine["stream"],
    seq: number,
    text: string,
    count: number,
  ): Promise<void> | undefined {
    const out = this.#out;
    if (out.cancelled) return undefined;
    if (this.nonBlocking && out.full) {
      this.dropped += count;
      return undefined;
    }
    if (this.#count > 0 && (stream !== this.#stream || seq !== this.#seq + this.#count)) {
      this.flush();
    }
    if (this.#count === 0) {
      this.#stream = stream;
      this.#seq = seq;
    }
    this.#parts.push(text);
    this.#count += count;
    this.#chars += text.length;
    if (this.#chars >= BATCH_CHARS) this.flush();
    else if (this.#timer === undefined) {
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.flush();
      }, FLUSH_TICK_MS);
    }
    return out.full && !this.nonBlocking ? out.ready() : undefined;
  }

  /** Sends the pending batch, if any. */
  flush(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.#count === 0) return;
    const text = this.#parts.length === 1 ? this.#parts[0] : this.#parts.join("\n");
    this.#out.send({ type: "lines", stream: this.#stream, seq: this.#seq, text });
    this.#parts = [];
    this.#count = 0;
    this.#chars = 0;
  }
}
