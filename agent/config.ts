// The agent's config.toml, read strictly: every unknown key, every value of
// the wrong type or out of range is a ConfigError naming its key path
// (`agent.max_concurrent`, `grant[1].allow[0]`).

import { CapabilitySet } from "../capability/capability_set.ts";
import { ConfigError } from "../executor/errors.ts";
import { printable } from "../executor/_describe.ts";
import {
  absolutePath,
  describe,
  integer,
  nonEmpty,
  parseStrictToml,
  required,
  string,
  table,
} from "../executor/_strict_toml.ts";
import { isLoopback, type ListenAddress, parseListen } from "./_net.ts";

/** The `[agent]` table. */
export interface AgentSection {
  /** Where to listen (`listen = "IP:PORT"`). */
  readonly listen: ListenAddress;
  /** The audit log, one JSON line per decision (`audit_log`). */
  readonly auditLog: string;
  /** Steps (and transfers) running at once before `/v1/run` answers 429 (`max_concurrent`, default 16). */
  readonly maxConcurrent: number;
  /** The largest request body accepted before answering 413 (`max_request_bytes`, default 4 MiB). */
  readonly maxRequestBytes: number;
  /**
   * Seconds a `/v1/sync` tunnel may stay silent before it is ended and its
   * slot freed: rsync's own `--timeout` and the WebSocket's ping
   * (`sync_idle_timeout`, default 300).
   */
  readonly syncIdleTimeoutS: number;
  /**
   * How a transfer's rsync is kept inside its root (`sync_confinement`):
   * `"namespace"` (Linux, the default there: a private mount namespace whose
   * only tree is the root; the agent refuses to start when it cannot make
   * one) or `"none"` (elsewhere, and the only choice there: the agent's own
   * checks and rsync's safeguards). See docs/protocol.md.
   */
  readonly syncConfinement: "namespace" | "none";
  /**
   * The rsync that `/v1/sync` runs (`rsync`): an absolute path inside the
   * run scope of the agent's permission set, or by default `rsync` found on
   * the agent's PATH. rsync 3.x or openrsync (the agent tells clients which,
   * in `/v1/health`).
   */
  readonly rsync: string;
  /**
   * The longest grace between SIGTERM and SIGKILL any step gets, whatever its
   * `killGraceMs` asks (`max_kill_grace`, seconds, default 30).
   */
  readonly maxKillGraceMs: number;
  /**
   * When the agent shuts down, the grace every running step gets at most
   * before SIGKILL (`shutdown_grace`, seconds, default 10): with the flush of
   * the last events, a shutdown ends within this plus 5 s, inside a service
   * manager's stop timeout (systemd's and launchd's 30 s).
   */
  readonly shutdownGraceMs: number;
  /**
   * How steps are kept apart (`step_isolation`): `"namespace"` (Linux: each
   * step in PID and mount namespaces of its own with a private /proc, so it
   * cannot see, signal or read another caller's step, the agent, or the
   * audit log's directory; the agent refuses to start when it cannot make
   * them) or `"none"` (the default, and the only choice on macOS: every step
   * a process of the agent's account among the others). See docs/agent.md.
   */
  readonly stepIsolation: "namespace" | "none";
  /**
   * Copy every audit line to the system log (`audit_syslog`): `true` (journald
   * or syslog on Linux, the unified log on macOS, through `logger`; the
   * agent refuses to start when it cannot), `false`, or unset: copy when the
   * system log is there, else say so at start.
   */
  readonly auditSyslog: boolean | "auto";
  /** The syslog socket `logger` writes to on Linux (`audit_syslog_socket`), if not the default `/dev/log`. */
  readonly auditSyslogSocket?: string;
  /** Connections open at once before new ones are refused (`max_connections`, default 512). */
  readonly maxConnections: number;
  /**
   * Connections one peer address may hold open (`max_connections_per_peer`,
   * default 64, or twice `max_concurrent` when that is more).
   */
  readonly maxConnectionsPerPeer: number;
  /**
   * How long a request's head may take to arrive, from the connection's first
   * byte or the first byte after a response (`header_timeout`, seconds, default 10).
   */
  readonly headerTimeoutMs: number;
  /** How long a whole request (head and body) may take to arrive (`request_timeout`, seconds, default 60). */
  readonly requestTimeoutMs: number;
  /** How long a connection may sit idle between requests (`idle_timeout`, seconds, default 30). */
  readonly idleTimeoutMs: number;
}

/** `[identity]` with `provider = "tailscale"`. */
export interface TailscaleIdentityConfig {
  /** The provider. */
  readonly provider: "tailscale";
  /** tailscaled's LocalAPI socket, when whois goes through the LocalAPI. */
  readonly socket?: string;
  /** The `tailscale` CLI, when whois goes through `tailscale whois --json`. */
  readonly cli?: string;
  /** The CapMap key whose `{"allow": [...]}` values grant capabilities, if any. */
  readonly capmap?: string;
}

/** `[identity]` with `provider = "loopback"` (development only). */
export interface LoopbackIdentityConfig {
  /** The provider. */
  readonly provider: "loopback";
  /** The one identity every loopback peer gets, e.g. `user:dev@localhost`. */
  readonly identity: string;
}

/** Who a caller is, and how the agent finds out. */
export type IdentityConfig = TailscaleIdentityConfig | LoopbackIdentityConfig;

/** One `[[grant]]` table: selectors and what they are granted. */
export interface GrantRule {
  /** `user:LOGIN`, `group:NAME`, `tag:NAME`, `node:NAME`, `node-id:ID` or `*`. */
  readonly to: readonly string[];
  /** What the selected callers may do (before the ceiling). */
  readonly allow: CapabilitySet;
}

/** A validated agent configuration. */
export interface AgentConfig {
  /** `[agent]`. */
  readonly agent: AgentSection;
  /** `[identity]`. */
  readonly identity: IdentityConfig;
  /** `[ceiling] allow`: the most anyone may do on this host. */
  readonly ceiling: CapabilitySet;
  /** `[[grant]]` tables, in order. */
  readonly grants: readonly GrantRule[];
}

/** The default `max_concurrent`. */
export const DEFAULT_MAX_CONCURRENT = 16;
/** The default `rsync`: found on the agent's PATH. */
export const DEFAULT_RSYNC = "rsync";
/** The default `max_request_bytes` (4 MiB). */
export const DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024;
/** The default `sync_idle_timeout`, in seconds. */
export const DEFAULT_SYNC_IDLE_TIMEOUT_S = 300;
/** The default `max_kill_grace`, in seconds. */
export const DEFAULT_MAX_KILL_GRACE_S = 30;
/** The default `shutdown_grace`, in seconds. */
export const DEFAULT_SHUTDOWN_GRACE_S = 10;
/** The default `max_connections`. */
export const DEFAULT_MAX_CONNECTIONS = 512;
/** The default `max_connections_per_peer`. */
export const DEFAULT_MAX_CONNECTIONS_PER_PEER = 64;
/** The default `header_timeout`, in seconds. */
export const DEFAULT_HEADER_TIMEOUT_S = 10;
/** The default `request_timeout`, in seconds. */
export const DEFAULT_REQUEST_TIMEOUT_S = 60;
/** The default `idle_timeout`, in seconds. */
export const DEFAULT_IDLE_TIMEOUT_S = 30;
/** tailscaled's socket on Linux. */
export const LINUX_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock";

const SELECTOR = /^(?:(user|group|tag|node|node-id):(\S+)|\*)$/;

/**
 * A `node:` value that reads as a StableID: a Tailscale one (`n…CNTRL`) or a
 * Headscale one (a number). `node:` once matched StableIDs too; now it names
 * nodes only, and such a value is refused rather than silently meaning a
 * name that a Headscale user may choose.
 */
const LOOKS_LIKE_STABLE_ID = /^(?:\d+|n[0-9A-Za-z]+CNTRL)$/;

/**
 * Parses and validates the text of a config.toml.
 *
 * @example
 * ```ts
 * import { parseConfig } from "@makenot/ops-exec/agent";
 *
 * const config = parseConfig(`
 * [agent]
 * listen = "127.0.0.1:7070"
 * audit_log = "/tmp/ops-agent/audit.jsonl"
 *
 * [identity]
 * provider = "loopback"
 * loopback_identity = "user:dev@localhost"
 *
 * [ceiling]
 * allow = ["demo.*", "observe"]
 *
 * [[grant]]
 * to = ["user:dev@localhost"]
 * allow = ["demo.*"]
 * `);
 * console.log(config.agent.maxConcurrent); // 16
 * ```
 *
 * @param text The TOML text.
 * @param source The file name used in messages.
 * @returns The validated configuration.
 * @throws {ConfigError} When the TOML does not parse, or a key is unknown or bad.
 */
export function parseConfig(text: string, source = "config.toml"): AgentConfig {
  return configFromObject(parseStrictToml(text, source));
}

/**
 * Reads and validates a config.toml file.
 *
 * @param path The file.
 * @returns The validated configuration.
 * @throws {ConfigError} When the file cannot be read or is invalid.
 */
export async function loadConfig(path: string | URL): Promise<AgentConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    const why = error instanceof Error ? error.message : String(error);
    throw new ConfigError("", `cannot read ${path}: ${why}`, { cause: error });
  }
  return parseConfig(text, String(path));
}

/**
 * Validates a configuration given as an object in the shape of config.toml
 * (snake_case keys, grant strings), e.g. to start an agent from code.
 *
 * @example
 * ```ts
 * import { configFromObject } from "@makenot/ops-exec/agent";
 *
 * const config = configFromObject({
 *   agent: { listen: "127.0.0.1:0", audit_log: "/tmp/ops-agent/audit.jsonl" },
 *   identity: { provider: "loopback", loopback_identity: "user:dev@localhost" },
 *   ceiling: { allow: ["demo.*"] },
 *   grant: [{ to: ["user:dev@localhost"], allow: ["demo.*"] }],
 * });
 * ```
 *
 * @param value The parsed document.
 * @returns The validated configuration.
 * @throws {ConfigError} Naming the key path of the first problem found.
 */
export function configFromObject(value: unknown): AgentConfig {
  const root = table(value, "", ["agent", "identity", "ceiling", "grant"]);
  const agent = readAgent(table(required(root, "agent", ""), "agent", [
    "listen",
    "audit_log",
    "max_concurrent",
    "max_request_bytes",
    "sync_idle_timeout",
    "sync_confinement",
    "rsync",
    "max_kill_grace",
    "shutdown_grace",
    "step_isolation",
    "audit_syslog",
    "audit_syslog_socket",
    "max_connections",
    "max_connections_per_peer",
    "header_timeout",
    "request_timeout",
    "idle_timeout",
  ]));
  const identity = readIdentity(table(required(root, "identity", ""), "identity", [
    "provider",
    "socket",
    "cli",
    "capmap",
    "loopback_identity",
  ]));
  if (identity.provider === "loopback" && !isLoopback(agent.listen.hostname)) {
    throw new ConfigError(
      "agent.listen",
      `the loopback provider is for local development only: listen on 127.0.0.1 or [::1], not ${agent.listen.hostname}`,
    );
  }
  const ceilingTable = table(required(root, "ceiling", ""), "ceiling", ["allow"]);
  const ceiling = CapabilitySet.fromJSON(
    required(ceilingTable, "allow", "ceiling"),
    "ceiling.allow",
  );
  const grants = readGrants(root.grant);
  return Object.freeze({ agent, identity, ceiling, grants });
}

function readAgent(t: Record<string, unknown>): AgentSection {
  const listenText = string(required(t, "listen", "agent"), "agent.listen");
  const listen = parseListen(listenText);
  if (typeof listen === "string") throw new ConfigError("agent.listen", listen);
  return Object.freeze({
    listen,
    auditLog: absolutePath(required(t, "audit_log", "agent"), "agent.audit_log"),
    maxConcurrent: integer(t.max_concurrent, "agent.max_concurrent", 1, 4096) ??
      DEFAULT_MAX_CONCURRENT,
    maxRequestBytes: integer(t.max_request_bytes, "agent.max_request_bytes", 1024, 2 ** 28) ??
      DEFAULT_MAX_REQUEST_BYTES,
    syncIdleTimeoutS: integer(t.sync_idle_timeout, "agent.sync_idle_timeout", 1, 86_400) ??
      DEFAULT_SYNC_IDLE_TIMEOUT_S,
    syncConfinement: readNamespaceChoice(t.sync_confinement, "agent.sync_confinement"),
    rsync: t.rsync === undefined ? DEFAULT_RSYNC : absolutePath(t.rsync, "agent.rsync"),
    maxKillGraceMs: seconds(t.max_kill_grace, "agent.max_kill_grace", 0, 3600) ??
      DEFAULT_MAX_KILL_GRACE_S * 1000,
    shutdownGraceMs: seconds(t.shutdown_grace, "agent.shutdown_grace", 0, 600) ??
      DEFAULT_SHUTDOWN_GRACE_S * 1000,
    // Off unless asked for: it costs several milliseconds a step and changes
    // what a step sees (its own pids only; no setuid programs as an
    // unprivileged agent). See docs/agent.md, "Steps apart".
    stepIsolation: t.step_isolation === undefined
      ? "none"
      : readNamespaceChoice(t.step_isolation, "agent.step_isolation"),
    ...readSyslog(t),
    maxConnections: integer(t.max_connections, "agent.max_connections", 8, 65536) ??
      DEFAULT_MAX_CONNECTIONS,
    // A caller may run max_concurrent steps at once, each on its own connection.
    maxConnectionsPerPeer:
      integer(t.max_connections_per_peer, "agent.max_connections_per_peer", 1, 65536) ??
        Math.max(
          DEFAULT_MAX_CONNECTIONS_PER_PEER,
          2 *
            (integer(t.max_concurrent, "agent.max_concurrent", 1, 4096) ?? DEFAULT_MAX_CONCURRENT),
        ),
    headerTimeoutMs: seconds(t.header_timeout, "agent.header_timeout", 1, 3600) ??
      DEFAULT_HEADER_TIMEOUT_S * 1000,
    requestTimeoutMs: seconds(t.request_timeout, "agent.request_timeout", 1, 86_400) ??
      DEFAULT_REQUEST_TIMEOUT_S * 1000,
    idleTimeoutMs: seconds(t.idle_timeout, "agent.idle_timeout", 1, 86_400) ??
      DEFAULT_IDLE_TIMEOUT_S * 1000,
  });
}

/** A number of seconds from `min` to `max`, in milliseconds; `undefined` when absent. */
function seconds(value: unknown, key: string, min: number, max: number): number | undefined {
  const s = integer(value, key, min, max);
  return s === undefined ? undefined : s * 1000;
}

function readSyslog(
  t: Record<string, unknown>,
): { auditSyslog: boolean | "auto"; auditSyslogSocket?: string } {
  const value = t.audit_syslog;
  if (value !== undefined && typeof value !== "boolean") {
    throw new ConfigError("agent.audit_syslog", `must be true or false, got ${describe(value)}`);
  }
  const auditSyslog = value ?? "auto";
  if (t.audit_syslog_socket === undefined) return { auditSyslog };
  const socket = absolutePath(t.audit_syslog_socket, "agent.audit_syslog_socket");
  if (Deno.build.os !== "linux") {
    throw new ConfigError(
      "agent.audit_syslog_socket",
      `only applies on Linux: on ${Deno.build.os} the copy goes to the system's own log through logger`,
    );
  }
  if (auditSyslog === false) {
    throw new ConfigError("agent.audit_syslog_socket", "only applies with audit_syslog = true");
  }
  return { auditSyslog, auditSyslogSocket: socket };
}

function readNamespaceChoice(value: unknown, key: string): "namespace" | "none" {
  const linux = Deno.build.os === "linux";
  if (value === undefined) return linux ? "namespace" : "none";
  const text = string(value, key);
  if (text !== "namespace" && text !== "none") {
    throw new ConfigError(key, `must be "namespace" or "none", got "${printable(text)}"`);
  }
  if (text === "namespace" && !linux) {
    throw new ConfigError(
      key,
      `"namespace" needs Linux's namespaces; on ${Deno.build.os} use "none" (see docs/agent.md for what it gives)`,
    );
  }
  return text;
}

function readIdentity(t: Record<string, unknown>): IdentityConfig {
  const provider = string(required(t, "provider", "identity"), "identity.provider");
  if (provider === "loopback") {
    for (const key of ["socket", "cli", "capmap"]) {
      if (t[key] !== undefined) {
        throw new ConfigError(`identity.${key}`, 'only applies to provider "tailscale"');
      }
    }
    const identity = string(
      required(t, "loopback_identity", "identity"),
      "identity.loopback_identity",
    );
    const match = SELECTOR.exec(identity);
    if (!match || identity === "*" || match[1] === "group") {
      throw new ConfigError(
        "identity.loopback_identity",
        `"${printable(identity)}" must be "user:LOGIN", "tag:NAME", "node:NAME" or "node-id:ID"`,
      );
    }
    checkNodeName(identity, "identity.loopback_identity");
    return Object.freeze({ provider, identity });
  }
  if (provider !== "tailscale") {
    throw new ConfigError(
      "identity.provider",
      `must be "tailscale" or "loopback", got "${printable(provider)}"`,
    );
  }
  if (t.loopback_identity !== undefined) {
    throw new ConfigError("identity.loopback_identity", 'only applies to provider "loopback"');
  }
  const config: { provider: "tailscale"; socket?: string; cli?: string; capmap?: string } = {
    provider,
  };
  if (t.socket !== undefined && t.cli !== undefined) {
    throw new ConfigError("identity.cli", "set identity.socket or identity.cli, not both");
  }
  if (t.socket !== undefined) config.socket = absolutePath(t.socket, "identity.socket");
  if (t.cli !== undefined) config.cli = nonEmpty(t.cli, "identity.cli");
  if (config.socket === undefined && config.cli === undefined) {
    // The macOS GUI apps have no socket the agent may use: their CLI finds its way.
    if (Deno.build.os === "darwin") config.cli = "tailscale";
    else config.socket = LINUX_TAILSCALED_SOCKET;
  }
  if (t.capmap !== undefined) config.capmap = nonEmpty(t.capmap, "identity.capmap");
  return Object.freeze(config);
}

/** Refuses a `node:` selector whose value reads as a StableID (see LOOKS_LIKE_STABLE_ID). */
function checkNodeName(selector: string, key: string): void {
  if (!selector.startsWith("node:")) return;
  const value = selector.slice("node:".length);
  if (!LOOKS_LIKE_STABLE_ID.test(value)) return;
  throw new ConfigError(
    key,
    `"${printable(selector)}" is ambiguous: "node:" selects a node by its name only, and "${
      printable(value)
    }" reads as a StableID. Write "node-id:${
      printable(value)
    }" for the node with that StableID, or the node's full MagicDNS name for a node named so`,
  );
}

function readGrants(value: unknown): GrantRule[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) {
    throw new ConfigError(
      "grant",
      `must be an array of tables ([[grant]]), got ${describe(value)}`,
    );
  }
  return value.map((item, i) => {
    const key = `grant[${i}]`;
    const t = table(item, key, ["to", "allow"]);
    const to = required(t, "to", key);
    if (!Array.isArray(to) || to.length === 0) {
      throw new ConfigError(`${key}.to`, "must be a non-empty array of selectors");
    }
    to.forEach((selector, j) => {
      if (typeof selector !== "string" || !SELECTOR.test(selector)) {
        throw new ConfigError(
          `${key}.to[${j}]`,
          `${
            typeof selector === "string" ? `"${printable(selector)}"` : describe(selector)
          } is not a selector: use "user:LOGIN", "group:NAME", "tag:NAME", "node:NAME", "node-id:ID" or "*"`,
        );
      }
      checkNodeName(selector, `${key}.to[${j}]`);
    });
    const allow = CapabilitySet.fromJSON(required(t, "allow", key), `${key}.allow`);
    return Object.freeze({ to: Object.freeze([...to as string[]]), allow });
  });
}
