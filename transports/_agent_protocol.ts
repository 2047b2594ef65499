// The wire protocol between AgentRpc and ops-agent: paths, event shapes and
// error bodies. Both sides import it (neither loads the other's code); the
// bytes go through the one NDJSON codec (executor/_ndjson.ts). Documented for
// people in docs/protocol.md: keep the two in step.

import type { LogLine, RunOutput } from "../executor/types.ts";

/** The protocol's version, sent in the `start` event and `/v1/health`. */
export const PROTOCOL_VERSION = 1;

/** The endpoints of SPEC §5. */
export const PATHS = {
  health: "/v1/health",
  capabilities: "/v1/capabilities",
  run: "/v1/run",
  observe: "/v1/observe",
  sync: "/v1/sync",
} as const;

/**
 * The upload window of a `/v1/sync` tunnel: bytes the client may have sent
 * beyond the agent's last `{"ack": N}`. A WebSocket server cannot push back
 * on what it receives, so the client keeps to it and the agent ends a
 * transfer whose client does not.
 */
export const SYNC_WINDOW_BYTES = 8 * 1024 * 1024;

/** The largest binary message a tunnel sends (and the agent takes) at once. */
export const SYNC_MESSAGE_BYTES = 1024 * 1024;

/** The media type of a `/v1/run` response. */
export const NDJSON_TYPE = "application/x-ndjson";

/** How often the agent sends a `ping` event while a step is silent, unless asked otherwise. */
export const HEARTBEAT_MS = 10_000;

/**
 * The request header in which a client asks for another heartbeat interval
 * (milliseconds, clamped to 500..60 000), to match its own idle timeout.
 */
export const HEARTBEAT_HEADER = "x-ops-heartbeat-ms";

/** The heartbeat interval a request asks for (its header), clamped; the default otherwise. */
export function heartbeatInterval(header: string | null | undefined): number {
  const asked = Number(header);
  if (!header || !Number.isFinite(asked)) return HEARTBEAT_MS;
  return Math.min(60_000, Math.max(500, Math.round(asked)));
}

/** The first event of every run: the step passed every check and is starting. */
export interface StartEvent {
  type: "start";
  /** The run's id, also written to the audit log. */
  id: string;
  /** The protocol version the agent speaks. */
  protocol: number;
}

/**
 * Consecutive lines of one stream. `text` holds them joined by `\n` (a line
 * never contains one): line `i` of `text.split("\n")` has `seq + i`. The
 * agent batches lines (up to 64 Ki characters, or 2 ms after the first) so
 * that a busy step costs one JSON string per batch, not per line; the client
 * delivers them to its sink one by one.
 */
export interface LinesEvent {
  type: "lines";
  stream: LogLine["stream"];
  /** The `seq` of the first line. Greater than expected only after lines were `dropped`. */
  seq: number;
  /** The lines, in order, joined by `\n`. */
  text: string;
}

/** Sent while a step is silent, so that a client can tell a dead agent from a quiet step. */
export interface PingEvent {
  type: "ping";
}

/** The last event of a run that ended: how the step ended. */
export interface ExitEvent
  extends
    Pick<RunOutput, "exitCode" | "signal" | "timedOut" | "cancelled" | "durationMs" | "lines"> {
  type: "exit";
  /** Lines the agent had to drop (only while shutting down, to a reader that stalled). */
  dropped?: number;
  /** Why the step was cancelled by the agent itself, e.g. `agent shutting down`. */
  reason?: string;
}

/** The last event of a run that failed on the agent's side (e.g. a spawn refused). */
export interface ErrorEvent {
  type: "error";
  code: string;
  message: string;
}

/** Every event of a `/v1/run` response. */
export type RunEvent = StartEvent | LinesEvent | PingEvent | ExitEvent | ErrorEvent;

/** The JSON body of every 4xx/5xx answer. */
export interface ErrorBody {
  error: {
    /** A stable code: `malformed_request`, `invalid_step`, `unknown_peer`, `capability_denied`, ... */
    code: string;
    /** A sentence a person can act on. */
    message: string;
    /** For `invalid_step`: the field at fault. */
    field?: string;
    /** For `capability_denied`: the refused action. */
    action?: string;
    /** For `capability_denied`: the sync path checked, if any. */
    path?: string;
    /** For `capability_denied`: why. */
    reason?: string;
  };
}

/** What `/v1/capabilities` answers. */
export interface CapabilitiesBody {
  /** The effective grant strings: (config ∪ CapMap) ∩ ceiling. */
  capabilities: string[];
  /** Who the agent takes the caller to be. */
  caller: CallerSummary;
}

/** How the agent names a caller in answers and in its audit log. */
export interface CallerSummary {
  /** The login of a person's device; absent for tagged nodes. */
  user?: string;
  /** The node's tags (tagged nodes only). */
  tags?: string[];
  /** The node's name (MagicDNS name without the trailing dot). */
  node?: string;
  /** The node's stable id. */
  nodeId?: string;
  /** The identity provider that answered. */
  provider: string;
}

/** What `/v1/health` answers. */
export interface HealthBody {
  ok: true;
  version: string;
  protocol: number;
  /**
   * The rsync the agent runs for `/v1/sync`, from its `rsync --version`
   * (`null` when it has none it may run). Absent from agents before it was
   * added: those run rsync 3.x.
   */
  rsync?: RsyncFlavour | null;
}

/** Which rsync a side runs, as `rsync --version` tells. */
export interface RsyncFlavour {
  /** `rsync` (samba's, 2.x and 3.x) or `openrsync` (the open-source one, and Apple's fork). */
  kind: "rsync" | "openrsync";
  /** rsync's version (`3.2.7`); for Apple's openrsync the version it is compatible with; else empty. */
  version: string;
  /** The protocol version it speaks. */
  protocol: number;
  /** Apple's fork of openrsync (macOS 15+ `/usr/bin/rsync`). */
  apple: boolean;
}

// --- the sync tunnel (/v1/sync) -------------------------------------------

/** The stderr prefix of a refusal report. */
export const REFUSED_PREFIX = "ops-exec-sync-refused: ";

/** What the agent said when it refused the tunnel. */
export interface SyncRefusal {
  /** The HTTP status (0 when the agent could not be reached). */
  status: number;
  /** The agent's JSON error body, when it sent one. */
  body: unknown;
  /** A sentence describing the refusal. */
  message: string;
}

/** Parses a refusal line written by this program, if `line` is one. */
export function parseRefusal(line: string): SyncRefusal | null {
  const at = line.indexOf(REFUSED_PREFIX);
  if (at < 0) return null;
  try {
    return JSON.parse(line.slice(at + REFUSED_PREFIX.length)) as SyncRefusal;
  } catch {
    return null;
  }
}
