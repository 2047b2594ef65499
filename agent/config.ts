// The agent's config.toml, read strictly: every unknown key, every value of
// the wrong type or out of range is a ConfigError naming its key path
// (`agent.max_concurrent`, `grant[1].allow[0]`).

import { parse as parseToml } from "npm:smol-toml@^1.3.4";
import { CapabilitySet } from "../capability/capability_set.ts";
import { ConfigError } from "../executor/errors.ts";
import { printable, typeName } from "../executor/_describe.ts";
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
   * The rsync that `/v1/sync` runs (`rsync`): an absolute path inside the
   * run scope of the agent's permission set, or by default `rsync` found on
   * the agent's PATH. rsync 3.x or openrsync (the agent tells clients which,
   * in `/v1/health`).
   */
  readonly rsync: string;
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
  /** `user:LOGIN`, `group:NAME`, `tag:NAME`, `node:NAME` or `*`. */
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
/** tailscaled's socket on Linux. */
export const LINUX_TAILSCALED_SOCKET = "/var/run/tailscale/tailscaled.sock";

const SELECTOR = /^(?:(user|group|tag|node):(\S+)|\*)$/;

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
  let value: unknown;
  try {
    // Integers as bigint, so that a TOML float (`16.0`) is not taken for one.
    value = parseToml(text, { integersAsBigInt: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new ConfigError("", `${source} is not valid TOML: ${message}`, { cause: error });
  }
  return configFromObject(fromToml(value, ""));
}

/** A TOML float where the config expects something else; kept so the error can say "a float". */
class TomlFloat {
  constructor(readonly value: number) {}
}

/** TOML integers (bigint) become numbers; floats become TomlFloat. */
function fromToml(value: unknown, key: string): unknown {
  if (typeof value === "bigint") {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new ConfigError(key, `${value} is out of range`);
    }
    return Number(value);
  }
  if (typeof value === "number") return new TomlFloat(value);
  if (Array.isArray(value)) return value.map((item, i) => fromToml(item, `${key}[${i}]`));
  if (isTable(value)) {
    const table: Record<string, unknown> = {};
    for (const [name, item] of Object.entries(value)) {
      table[name] = fromToml(item, key ? `${key}.${name}` : name);
    }
    return table;
  }
  return value;
}

/** A type description for messages, that knows TOML floats. */
function describe(value: unknown): string {
  return value instanceof TomlFloat ? `a float (${value.value})` : typeName(value);
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
    "rsync",
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
    rsync: t.rsync === undefined ? DEFAULT_RSYNC : absolutePath(t.rsync, "agent.rsync"),
  });
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
        `"${printable(identity)}" must be "user:LOGIN", "tag:NAME" or "node:NAME"`,
      );
    }
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
          } is not a selector: use "user:LOGIN", "group:NAME", "tag:NAME", "node:NAME" or "*"`,
        );
      }
    });
    const allow = CapabilitySet.fromJSON(required(t, "allow", key), `${key}.allow`);
    return Object.freeze({ to: Object.freeze([...to as string[]]), allow });
  });
}

function table(value: unknown, key: string, known: readonly string[]): Record<string, unknown> {
  if (!isTable(value)) {
    throw new ConfigError(key || "(root)", `must be a table, got ${describe(value)}`);
  }
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) {
      const path = key ? `${key}.${printable(name)}` : printable(name);
      const hint = closest(name, known);
      throw new ConfigError(
        path,
        `unknown key${hint ? ` (did you mean "${hint}"?)` : ""}; known keys here: ${
          known.join(", ")
        }`,
      );
    }
  }
  return value;
}

function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function required(t: Record<string, unknown>, name: string, parent: string): unknown {
  const value = t[name];
  if (value === undefined) {
    throw new ConfigError(parent ? `${parent}.${name}` : name, "is required");
  }
  return value;
}

function string(value: unknown, key: string): string {
  if (typeof value !== "string") {
    throw new ConfigError(key, `must be a string, got ${describe(value)}`);
  }
  if (value.includes("\0")) throw new ConfigError(key, "contains a NUL byte");
  return value;
}

function nonEmpty(value: unknown, key: string): string {
  const text = string(value, key);
  if (text.trim() === "") throw new ConfigError(key, "must not be empty");
  return text;
}

function absolutePath(value: unknown, key: string): string {
  const text = string(value, key);
  if (!text.startsWith("/")) {
    throw new ConfigError(key, `must be an absolute path, got "${printable(text)}"`);
  }
  return text;
}

function integer(value: unknown, key: string, min: number, max: number): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ConfigError(key, `must be an integer, got ${describe(value)}`);
  }
  if (value < min || value > max) {
    throw new ConfigError(key, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** The known key closest to a misspelt one, if it is close enough to be a typo. */
function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = distance(name, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const saved = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = saved;
    }
  }
  return row[b.length];
}
