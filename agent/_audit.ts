// The audit log: one JSON line per decision, appended with one write(2) per
// line to a file opened O_APPEND, so a line is in the kernel's hands before
// the response that it records completes, and nothing is held in a buffer
// that a signal could lose; each line also copied to the system log.

import { dirname } from "node:path";
import { encodeJsonLine } from "../executor/_ndjson.ts";
import type { CallerSummary } from "../transports/_agent_protocol.ts";
import type { SystemLog } from "./_system_log.ts";

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
  /**
   * For allowed runs and transfers, which of their two lines this is:
   * `start` (written before the step starts) or `end` (how it ended).
   */
  event?: "start" | "end";
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
  /** The grace the step got when the agent cut down the one it asked for (`agent.max_kill_grace`). */
  killGraceMs?: number;
  /** How the step was kept apart from the others (`namespace` or `none`). */
  isolation?: "namespace" | "none";
  /** For refused connections: how many more from that address were refused before this line. */
  repeated?: number;
}

/**
 * A line about the log itself, or the agent, rather than a request: the file
 * was replaced or shrank under the agent (`audit_log_replaced`,
 * `audit_log_shrank`), the system log copy restarted, unknown peers refused.
 */
export interface AuditNote {
  /** When (ISO 8601). */
  time: string;
  /** What happened. */
  event: string;
  /** In words. */
  reason: string;
  /** Anything else worth keeping. */
  [key: string]: unknown;
}

/** Where the audit lines go. */
export interface AuditLogOptions {
  /** A copy of every line, somewhere the steps' account cannot change it. */
  systemLog?: SystemLog;
}

/**
 * An append-only JSONL file, and its copy in the system log. The file is
 * opened for each line (O_APPEND, one write(2)) and closed again, so that a
 * step that replaces it (`sed -i`) or removes it does not send every later
 * line to a deleted inode: the next line goes to the file at the path, after
 * a note saying that the file was replaced, removed or cut short since the
 * agent's last line. The file is the account's own and a step of that
 * account can still change it; the system log copy is what it cannot.
 */
export class AuditLog {
  readonly path: string;
  readonly #systemLog?: SystemLog;
  /** The file's inode and size after the agent's last line. */
  #last: { ino: number | null; size: number } | null = null;
  #tail: Promise<void> = Promise.resolve();
  #closed = false;

  private constructor(path: string, opts: AuditLogOptions) {
    this.path = path;
    this.#systemLog = opts.systemLog;
  }

  /** Opens (creating it and its directory if needed) the log at `path`. */
  static async open(path: string, opts: AuditLogOptions = {}): Promise<AuditLog> {
    await Deno.mkdir(dirname(path), { recursive: true, mode: 0o750 });
    const log = new AuditLog(path, opts);
    // Fails here, at start, when the file cannot be written at all.
    const file = await Deno.open(path, { append: true, create: true, mode: 0o640 });
    try {
      const info = await file.stat();
      log.#last = { ino: info.ino, size: info.size };
    } finally {
      file.close();
    }
    return log;
  }

  /** The system log copy, if any. */
  get systemLog(): SystemLog | undefined {
    return this.#systemLog;
  }

  /**
   * Appends one line to the file and hands its copy to the system log.
   * Resolves once both are in the kernel's hands (the system log's after a
   * bounded wait); lines are written in the order `write` was called.
   */
  write(record: AuditRecord | AuditNote): Promise<void> {
    if (this.#closed) {
      console.error(`ops-agent: audit line after close: ${JSON.stringify(record)}`);
      return Promise.resolve();
    }
    const bytes = encodeJsonLine(record);
    const done = this.#tail.then(async () => {
      try {
        for (const note of this.#append(bytes)) await this.#systemLog?.write(note);
      } catch (error) {
        // The decision stands; the failure to record it must be seen.
        console.error(`ops-agent: cannot write the audit log ${this.path}: ${error}`);
      }
      await this.#systemLog?.write(bytes);
    });
    this.#tail = done;
    return done;
  }

  /** Waits for pending lines, then closes the system log copy. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#tail;
    await this.#systemLog?.close();
  }

  /**
   * Writes `bytes` at the end of the file at the path, first noting there
   * what happened to the file since the last line. Returns the notes.
   */
  #append(bytes: Uint8Array): Uint8Array[] {
    const file = Deno.openSync(this.path, { append: true, create: true, mode: 0o640 });
    try {
      const before = file.statSync();
      const notes = this.#tampering(before).map((note) => encodeJsonLine(note));
      for (const note of notes) writeAllSync(file, note);
      writeAllSync(file, bytes);
      this.#last = { ino: before.ino, size: file.statSync().size };
      return notes;
    } finally {
      file.close();
    }
  }

  #tampering(now: Deno.FileInfo): AuditNote[] {
    const last = this.#last;
    if (last === null) return [];
    const time = new Date().toISOString();
    if (last.ino !== null && now.ino !== null && now.ino !== last.ino) {
      return [{
        time,
        event: "audit_log_replaced",
        reason: now.size === 0
          ? "the audit log was removed or replaced since the agent's last line (a new, empty file is at its path): the system log copy has the lines before this one"
          : "the audit log was replaced by another file since the agent's last line: the system log copy has the lines before this one",
        previousSize: last.size,
        size: now.size,
      }];
    }
    if (now.size < last.size) {
      return [{
        time,
        event: "audit_log_shrank",
        reason:
          `the audit log was cut from ${last.size} to ${now.size} bytes since the agent's last line: the system log copy has the lines before this one`,
        previousSize: last.size,
        size: now.size,
      }];
    }
    return [];
  }
}

function writeAllSync(file: Deno.FsFile, bytes: Uint8Array): void {
  let offset = 0;
  while (offset < bytes.length) offset += file.writeSync(bytes.subarray(offset));
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
