// The body of a /v1/run response: NDJSON events on a byte stream with a
// bounded queue. While the queue is full (the client reads slowly), the line
// sink's promise stays pending, so the spawn core stops reading the step's
// pipes and the step blocks in write(2): agent memory stays flat.

import { encodeJsonLine } from "../executor/_ndjson.ts";
import type { LogLine, LogSink } from "../executor/types.ts";
import type { RunEvent } from "../transports/_agent_protocol.ts";

/** Bytes queued in the response stream before writers wait. */
const QUEUE_BYTES = 256 * 1024;
/** A batch of lines is sent once it holds this many characters. */
const BATCH_CHARS = 64 * 1024;

/** A response body of NDJSON events with backpressure. */
export class EventStream {
  /** The body to answer with. */
  readonly readable: ReadableStream<Uint8Array>;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #waiters: (() => void)[] = [];
  #closed = false;
  #cancelled = false;
  /** `performance.now()` of the last event sent. */
  lastSent = performance.now();
  /** Called once when the client goes away before the end. */
  onCancel?: () => void;

  constructor() {
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => this.#wake(),
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
    return !this.#cancelled && !this.#closed && (this.#controller.desiredSize ?? 0) <= 0;
  }

  /** Queues one event (dropped if the client is gone). */
  send(event: RunEvent): void {
    if (this.#closed || this.#cancelled) return;
    this.#controller.enqueue(encodeJsonLine(event));
    this.lastSent = performance.now();
  }

  /** Resolves when the queue has room again, or the client is gone. */
  ready(): Promise<void> {
    if (!this.full) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push(resolve));
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
 * batched into one `lines` event, sent when the spawn core pauses between
 * pipe reads (a microtask after the last line of a read), when the batch is
 * large, or when the stream switches.
 */
export class LineBatcher implements LogSink {
  readonly #out: EventStream;
  #stream: LogLine["stream"] = "stdout";
  #seq = 0;
  #text: string[] = [];
  #chars = 0;
  #scheduled = false;
  /** While `true`, a full queue drops lines instead of waiting (agent shutting down). */
  nonBlocking = false;
  /** Lines dropped while {@linkcode LineBatcher.nonBlocking}. */
  dropped = 0;

  constructor(out: EventStream) {
    this.#out = out;
  }

  /** Takes one line; returns a promise while the response queue is full. */
  write(line: LogLine): Promise<void> | undefined {
    if (this.#out.cancelled) return undefined;
    if (this.nonBlocking && this.#out.full) {
      this.dropped++;
      return undefined;
    }
    if (
      this.#text.length > 0 &&
      (line.stream !== this.#stream || line.seq !== this.#seq + this.#text.length)
    ) {
      this.flush();
    }
    if (this.#text.length === 0) {
      this.#stream = line.stream;
      this.#seq = line.seq;
    }
    this.#text.push(line.text);
    this.#chars += line.text.length;
    if (this.#chars >= BATCH_CHARS) this.flush();
    else if (!this.#scheduled) {
      this.#scheduled = true;
      queueMicrotask(() => {
        this.#scheduled = false;
        this.flush();
      });
    }
    return this.#out.full && !this.nonBlocking ? this.#out.ready() : undefined;
  }

  /** Sends the pending batch, if any. */
  flush(): void {
    if (this.#text.length === 0) return;
    this.#out.send({ type: "lines", stream: this.#stream, seq: this.#seq, text: this.#text });
    this.#text = [];
    this.#chars = 0;
  }
}
