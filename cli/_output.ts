// Where the CLI's output goes. People get each host's lines live, prefixed
// with the host and the stream (stdout lines on stdout, stderr lines on
// stderr), the host coloured on a terminal, and a summary per host after a
// fan-out; `--json` gets one NDJSON event per line on stdout instead (the
// shapes are in docs/cli.md).
//
// Not ConsoleSink: the CLI names the stream in words, pads the host column to
// the fleet's longest name, and gives the fleet's hosts their colours by
// position, so that the first ten are always distinct.

import type { LogLine, LogSink } from "../mod.ts";
import type { Status } from "./_outcome.ts";

const encoder = new TextEncoder();
// Red is kept for the "err" tag.
const PALETTE = [36, 35, 33, 32, 34, 96, 95, 93, 92, 94];
const RED = 31;
const DIM = 2;

/** Options of {@linkcode Output}. */
export interface OutputOptions {
  /** NDJSON events on stdout instead of text. */
  json: boolean;
  /** The hosts of this invocation, in order (for colours and the column width). */
  hosts: readonly string[];
}

/** One row of the summary after a fan-out. */
export interface SummaryRow {
  /** The host. */
  host: string;
  /** How it ended. */
  status: Status;
  /** Its exit code (the step's, or the code its status stands for), `null` when none. */
  exitCode: number | null;
  /** How long it took, in milliseconds. */
  durationMs: number;
  /** Why it did not succeed. */
  reason: string;
}

/** A byte stream written whole line by whole line, in order. */
class LineWriter {
  #queue: Promise<void> = Promise.resolve();
  #broken = false;

  constructor(readonly file: typeof Deno.stdout | typeof Deno.stderr) {}

  write(text: string): Promise<void> {
    const bytes = encoder.encode(text);
    const next = this.#queue.then(async () => {
      if (this.#broken) return;
      try {
        let offset = 0;
        while (offset < bytes.length) offset += await this.file.write(bytes.subarray(offset));
      } catch (error) {
        // A reader that went away (`| head`): stop writing, keep running.
        if (error instanceof Deno.errors.BrokenPipe) this.#broken = true;
        else throw error;
      }
    });
    this.#queue = next.catch(() => {});
    return next;
  }
}

/** The CLI's output: text for people, or NDJSON events. */
export class Output {
  /** Whether events go out as NDJSON. */
  readonly json: boolean;
  readonly #stdout = new LineWriter(Deno.stdout);
  readonly #stderr = new LineWriter(Deno.stderr);
  readonly #color: { stdout: boolean; stderr: boolean };
  readonly #hosts: readonly string[];
  readonly #width: number;

  /** @param opts JSON or text, and the hosts of this invocation. */
  constructor(opts: OutputOptions) {
    this.json = opts.json;
    this.#hosts = opts.hosts;
    this.#width = Math.max(0, ...opts.hosts.map((h) => h.length));
    this.#color = {
      stdout: colorAllowed() && Deno.stdout.isTerminal(),
      stderr: colorAllowed() && Deno.stderr.isTerminal(),
    };
  }

  /** Whether stderr is a terminal a progress bar may be drawn on. */
  get interactive(): boolean {
    return !this.json && Deno.stderr.isTerminal();
  }

  /** The sink for one host's lines. */
  sinkFor(host: string): LogSink {
    if (this.json) {
      return { write: (line: LogLine) => this.event({ type: "line", host, ...line }) };
    }
    const prefix = {
      stdout: `${this.#paint("stdout", this.#colorOf(host), host.padEnd(this.#width))}  ${
        this.#paint("stdout", DIM, "out")
      }  `,
      stderr: `${this.#paint("stderr", this.#colorOf(host), host.padEnd(this.#width))}  ${
        this.#paint("stderr", RED, "err")
      }  `,
    };
    return {
      write: (line: LogLine) =>
        (line.stream === "stdout" ? this.#stdout : this.#stderr).write(
          `${prefix[line.stream]}${line.text}\n`,
        ),
    };
  }

  /** Writes one NDJSON event (in JSON mode; nothing otherwise). */
  event(value: Record<string, unknown>): Promise<void> {
    if (!this.json) return Promise.resolve();
    return this.#stdout.write(`${JSON.stringify(value)}\n`);
  }

  /** Writes text for people to stdout (in text mode; nothing in JSON mode). */
  print(text: string): Promise<void> {
    if (this.json) return Promise.resolve();
    return this.#stdout.write(text.endsWith("\n") ? text : `${text}\n`);
  }

  /** Writes a message to stderr, in both modes. */
  note(text: string): Promise<void> {
    return this.#stderr.write(`ops-exec: ${text}\n`);
  }

  /** The host's name in its colour, for text on stdout. */
  hostLabel(host: string): string {
    return this.#paint("stdout", this.#colorOf(host), host);
  }

  /** Writes the per-host summary table to stderr (text mode). */
  async summary(rows: readonly SummaryRow[]): Promise<void> {
    if (this.json || rows.length === 0) return;
    const table = [
      ["HOST", "STATUS", "EXIT", "TIME", ""],
      ...rows.map((r) => [
        r.host,
        r.status,
        r.exitCode === null ? "-" : String(r.exitCode),
        formatDuration(r.durationMs),
        r.reason,
      ]),
    ];
    const widths = [0, 1, 2, 3].map((i) => Math.max(...table.map((row) => row[i].length)));
    const lines = table.map((row, n) => {
      const cells = row.slice(0, 4).map((cell, i) => cell.padEnd(widths[i]));
      if (n > 0) {
        cells[0] = this.#paint("stderr", this.#colorOf(row[0]), cells[0]);
        if (row[1] !== "ok") cells[1] = this.#paint("stderr", RED, cells[1]);
      }
      return `${cells.join("  ")}${row[4] ? `  ${row[4]}` : ""}`.trimEnd();
    });
    await this.#stderr.write(`${lines.join("\n")}\n`);
  }

  #colorOf(host: string): number {
    const i = this.#hosts.indexOf(host);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }

  #paint(stream: "stdout" | "stderr", code: number, text: string): string {
    return this.#color[stream] ? `\x1b[${code}m${text}\x1b[0m` : text;
  }
}

/** Milliseconds as a person reads them: `0.21s`, `12.3s`, `2m05s`. */
export function formatDuration(ms: number): string {
  if (ms < 10_000) return `${(ms / 1000).toFixed(2)}s`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
}

/** Bytes as a person reads them: `512 B`, `1.5 KiB`, `3.2 GiB`. */
export function formatBytes(bytes: number): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** Colour unless NO_COLOR is set to something (no-color.org) or the terminal is dumb. */
function colorAllowed(): boolean {
  try {
    return !Deno.env.get("NO_COLOR") && Deno.env.get("TERM") !== "dumb";
  } catch {
    return false;
  }
}
