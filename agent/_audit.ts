// The audit log: one JSON line per decision, appended with one write(2) per
// line to a file opened O_APPEND, so a line is in the kernel's hands before
// the response that it records completes, and nothing is held in a buffer
// that a signal could lose.

import { dirname } from "node:path";
import { encodeJsonLine } from "../executor/_ndjson.ts";
import type { CallerSummary } from "../transports/_agent_protocol.ts";

/** One audit line. Never holds env values or stdin. */
export interface AuditRecord {
  /** When the decision was recorded (ISO 8601). */
  time: string;
  /** The run's id (also in the `start` event), for runs. */
  id?: string;
  /** The endpoint, e.g. `POST /v1/run`. */
  endpoint: string;
  /** The peer address the request came from (`IP:PORT`). */
  from: string;
  /** Who the provider said the caller is; `null` when not identified. */
  who: CallerSummary | null;
  /** The action decided on, when there is one. */
  action?: string;
  /** `allowed` or `denied`. */
  decision: "allowed" | "denied";
  /** Why it was denied, or why an allowed run ended early. */
  reason?: string;
  /** The HTTP status answered. */
  status: number;
  /** The step's label, if it has one. */
  label?: string;
  /** `sha256:` digest of the step without env values and stdin (see docs/protocol.md). */
  digest?: string;
  /** How the run ended. */
  exitCode?: number | null;
  /** The signal that ended the step, if any. */
  signal?: string | null;
  /** The step's timeout fired. */
  timedOut?: boolean;
  /** The run was cancelled (client gone, or agent shutting down). */
  cancelled?: boolean;
  /** Wall time of the request, in milliseconds. */
  durationMs?: number;
  /** For sync: the target path as asked (normalised). */
  path?: string;
  /** For sync: where the path led after symlinks, the path rsync was given. */
  resolvedPath?: string;
  /** For sync: the granted root the transfer was confined to, resolved (`/` for an unlimited grant). */
  root?: string;
  /** For sync: how rsync was confined (`namespace` or `none`). */
  confinement?: "namespace" | "none";
  /** For sync: bytes from the client into rsync. */
  bytesIn?: number;
  /** For sync: bytes from rsync to the client. */
  bytesOut?: number;
}

/** An append-only JSONL file. */
export class AuditLog {
  readonly path: string;
  readonly #file: Deno.FsFile;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(path: string, file: Deno.FsFile) {
    this.path = path;
    this.#file = file;
  }

  /** Opens (creating it and its directory if needed) the log at `path`. */
  static async open(path: string): Promise<AuditLog> {
    await Deno.mkdir(dirname(path), { recursive: true, mode: 0o750 });
    const file = await Deno.open(path, { append: true, create: true, mode: 0o640 });
    return new AuditLog(path, file);
  }

  /**
   * Appends one line. Resolves once the line has been written; lines are
   * written in the order `write` was called.
   */
  write(record: AuditRecord): Promise<void> {
    if (this.#closed) {
      console.error(`ops-agent: audit line after close: ${JSON.stringify(record)}`);
      return Promise.resolve();
    }
    const bytes = encodeJsonLine(record);
    const done = this.#tail.then(() => writeAll(this.#file, bytes)).catch((error) => {
      // The decision stands; the failure to record it must be seen.
      console.error(`ops-agent: cannot write the audit log ${this.path}: ${error}`);
    });
    this.#tail = done;
    return done;
  }

  /** Waits for pending lines, then closes the file. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    this.#file.close();
  }
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) offset += await file.write(bytes.subarray(offset));
}

/**
 * The digest of a step for the audit log: SHA-256 over its wire form with
 * env values replaced by their names and stdin by its length, so that the
 * log can tell steps apart without holding secrets.
 */
export async function stepDigest(json: Record<string, unknown>): Promise<string> {
  const redacted: Record<string, unknown> = { ...json };
  if (json.env && typeof json.env === "object") {
    redacted.env = Object.keys(json.env).sort();
  }
  if (typeof json.stdinBase64 === "string") {
    delete redacted.stdinBase64;
    redacted.stdinBytes = Math.floor(json.stdinBase64.length * 3 / 4) -
      (json.stdinBase64.match(/=+$/)?.[0].length ?? 0);
  }
  const canonical = JSON.stringify(redacted, Object.keys(redacted).sort());
  const hash = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(canonical));
  return `sha256:${
    Array.from(new Uint8Array(hash), (b) => b.toString(16).padStart(2, "0")).join("")
  }`;
}
