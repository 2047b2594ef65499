import { encodeJsonLine } from "./_ndjson.ts";
import type { LogLine, LogSink } from "./types.ts";

/** Options of {@linkcode ConsoleSink}. */
export interface ConsoleSinkOptions {
  /** The host name prefixed to each line. */
  host?: string;
  /**
   * Colour the prefix: `true`, `false`, or `"auto"` (the default: only when
   * stdout is a terminal and `NO_COLOR` is unset).
   */
  color?: boolean | "auto";
  /** Where lines go. Default: the process's stdout. */
  writable?: WritableStream<Uint8Array>;
}

const encoder = new TextEncoder();
/** Host colours (ANSI SGR codes): red is left to errors, black and white to the text. */
const PALETTE = [36, 35, 33, 32, 34, 96, 95, 93, 92, 94];
/** How many hosts keep their colour; past this many the assignment starts over. */
const MAX_REMEMBERED_HOSTS = 10_000;
/** The colour index of every host a ConsoleSink has been made for, in order of first use. */
const hostColours = new Map<string, number>();

/**
 * A host's colour: hosts get the palette's colours in the order their first
 * sink is made, so the first ten hosts of a process
 * (a fleet given to fanOut, in its order) all differ.
 */
function colourOf(host: string): number {
  let index = hostColours.get(host);
  if (index === undefined) {
    if (hostColours.size >= MAX_REMEMBERED_HOSTS) hostColours.clear();
    index = hostColours.size % PALETTE.length;
    hostColours.set(host, index);
  }
  return PALETTE[index];
}

/**
 * Prints lines as `[host] text`, and stderr lines as `[host stderr] text`.
 * On a terminal the prefix is coloured, one colour per host: the first ten
 * hosts a program prints (a fleet of up to ten, in the order their sinks are
 * made) all get different colours.
 *
 * @example
 * ```ts
 * import { CapabilitySet, ConsoleSink, LocalExec, Step } from "@makenot/ops-exec";
 *
 * const exec = new LocalExec(CapabilitySet.of("demo.*"), { host: "local" });
 * await exec.runStreaming(Step.shell("demo.hello", "echo hello"), new ConsoleSink({ host: "local" }));
 * // [local] hello
 * ```
 */
export class ConsoleSink implements LogSink {
  readonly #out: WritableStreamDefaultWriter<Uint8Array> | null;
  readonly #prefix: { stdout: string; stderr: string };

  /**
   * A sink that prints to the console (or to `opts.writable`).
   *
   * @param opts Host prefix, colour and destination.
   */
  constructor(opts: ConsoleSinkOptions = {}) {
    const host = opts.host ?? "local";
    this.#out = opts.writable ? opts.writable.getWriter() : null;
    const color = opts.color === undefined || opts.color === "auto"
      ? !opts.writable && Deno.stdout.isTerminal() && !noColor()
      : opts.color;
    const paint = (text: string) => color ? `\x1b[${colourOf(host)}m${text}\x1b[0m` : text;
    this.#prefix = {
      stdout: paint(`[${host}]`) + " ",
      stderr: paint(`[${host} stderr]`) + " ",
    };
  }

  /** Writes one line; resolves when the destination has taken it. */
  async write(line: LogLine): Promise<void> {
    const bytes = encoder.encode(`${this.#prefix[line.stream]}${line.text}\n`);
    if (this.#out) await this.#out.write(bytes);
    else await writeAll(Deno.stdout, bytes);
  }
}

/**
 * Keeps every line in memory. Meant for tests and short steps; use a
 * streaming sink for output of unbounded size.
 *
 * @example
 * ```ts
 * import { CapabilitySet, CollectingSink, LocalExec, Step } from "@makenot/ops-exec";
 *
 * const sink = new CollectingSink();
 * await new LocalExec(CapabilitySet.of("demo.*"))
 *   .runStreaming(Step.shell("demo.hello", "echo a; echo b >&2"), sink);
 * sink.text("stdout"); // "a"
 * sink.lines.length; // 2
 * ```
 */
export class CollectingSink implements LogSink {
  /** Every line received, in order. */
  readonly lines: LogLine[] = [];

  /** Keeps the line. */
  write(line: LogLine): void {
    this.lines.push(line);
  }

  /**
   * The lines of one stream (or both), joined with newlines.
   *
   * @param stream `stdout`, `stderr`, or omitted for both in `seq` order.
   * @returns The joined text.
   */
  text(stream?: LogLine["stream"]): string {
    return this.lines
      .filter((line) => stream === undefined || line.stream === stream)
      .map((line) => line.text)
      .join("\n");
  }
}

/**
 * Writes each line as one NDJSON object `{"stream","text","seq"}` (plus the
 * host, when given) to a byte stream, awaiting the stream: backpressure
 * reaches the step.
 *
 * @example
 * ```ts
 * import { CapabilitySet, LocalExec, NdjsonSink, Step } from "@makenot/ops-exec";
 *
 * const file = await Deno.open(await Deno.makeTempFile(), { write: true });
 * const sink = new NdjsonSink(file.writable, { host: "local" });
 * await new LocalExec(CapabilitySet.of("demo.*")).runStreaming(Step.shell("demo.hello", "echo hi"), sink);
 * await sink.close();
 * ```
 */
export class NdjsonSink implements LogSink {
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #host?: string;

  /**
   * A sink that writes NDJSON to `writable`.
   *
   * @param writable Where the NDJSON goes.
   * @param opts A host name to add to each object.
   */
  constructor(writable: WritableStream<Uint8Array>, opts: { host?: string } = {}) {
    this.#writer = writable.getWriter();
    if (opts.host !== undefined) this.#host = opts.host;
  }

  /** Writes one line as one JSON object. */
  async write(line: LogLine): Promise<void> {
    const value = this.#host === undefined ? line : { host: this.#host, ...line };
    await this.#writer.write(encodeJsonLine(value));
  }

  /** Closes the underlying stream. */
  async close(): Promise<void> {
    await this.#writer.close();
  }
}

/** Options of {@linkcode RedactingSink}. */
export interface RedactingSinkOptions {
  /** What replaces a secret. Default `***`. */
  mask?: string;
}

/**
 * Replaces secrets in every line before passing it on, as CI runners mask
 * secrets in logs. Strings are matched literally; regular expressions must
 * carry the `g` flag.
 *
 * @example
 * ```ts
 * import { CollectingSink, RedactingSink } from "@makenot/ops-exec";
 *
 * const inner = new CollectingSink();
 * const sink = new RedactingSink(inner, ["hunter2", /token=\w+/g]);
 * await sink.write({ stream: "stdout", text: "pw hunter2 token=abc", seq: 0 });
 * inner.text(); // "pw *** ***"
 * ```
 */
export class RedactingSink implements LogSink {
  readonly #inner: LogSink;
  readonly #secrets: (string | RegExp)[];
  readonly #mask: string;

  /**
   * A sink that masks `secrets` before `inner` sees a line.
   *
   * @param inner The sink that receives the redacted lines.
   * @param secrets Literal secrets and global regular expressions.
   * @param opts The mask.
   */
  constructor(
    inner: LogSink,
    secrets: readonly (string | RegExp)[],
    opts: RedactingSinkOptions = {},
  ) {
    this.#inner = inner;
    // Longest first, so that a secret containing another is masked whole.
    this.#secrets = secrets
      .filter((s) => typeof s !== "string" || s.length > 0)
      .map((s) => {
        if (typeof s === "string") return s;
        if (!s.global) throw new TypeError(`RedactingSink: ${s} needs the g flag`);
        return s;
      })
      .sort((a, b) =>
        (typeof b === "string" ? b.length : 0) - (typeof a === "string" ? a.length : 0)
      );
    this.#mask = opts.mask ?? "***";
  }

  /** Passes the line on with every secret masked. */
  write(line: LogLine): void | Promise<void> {
    let text = line.text;
    for (const secret of this.#secrets) text = text.replaceAll(secret, this.#mask);
    return this.#inner.write(text === line.text ? line : { ...line, text });
  }
}

function noColor(): boolean {
  try {
    return Deno.env.get("NO_COLOR") !== undefined;
  } catch {
    return false;
  }
}

async function writeAll(out: { write(p: Uint8Array): Promise<number> }, bytes: Uint8Array) {
  let offset = 0;
  while (offset < bytes.length) offset += await out.write(bytes.subarray(offset));
}
