// The CLI's inventory, hosts.toml: hosts with their transport, address and
// options, and groups of hosts. Read as strictly as the agent's config.toml:
// an unknown key, a value of the wrong type or out of range, an unknown group
// member is a ConfigError naming its key path (`hosts.web-1.port`,
// `groups.prod.hosts[2]`).

import { join } from "node:path";
import { CapabilitySet, ConfigError } from "../mod.ts";
import { printable } from "../executor/_describe.ts";
import {
  closest,
  integer,
  isTable,
  nonEmpty,
  parseStrictToml,
  required,
  string,
  table,
} from "../executor/_strict_toml.ts";
import {
  agentUrl,
  type HostTarget,
  isIpAddress,
  isUrlTarget,
  openExecutor,
  parseUrlTarget,
  TargetError,
  type TransportName,
} from "./_target.ts";

/** A group of the inventory. */
export interface InventoryGroup {
  /** Its name. */
  name: string;
  /** Its members as written (host and group names). */
  members: string[];
  /** The hosts it resolves to, nested groups expanded, in order, each once. */
  hosts: string[];
  /** Its own `allow`. */
  allow: CapabilitySet;
}

/** A validated inventory. */
export interface Inventory {
  /** The file it was read from. */
  source: string;
  /** Its hosts by name, in the file's order; each host's `allow` already includes its groups'. */
  hosts: Map<string, HostTarget>;
  /** Its groups by name, in the file's order. */
  groups: Map<string, InventoryGroup>;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const TRANSPORTS: readonly TransportName[] = ["local", "ssh", "agent"];
const KEYS: Record<TransportName, readonly string[]> = {
  local: ["transport", "allow"],
  ssh: [
    "transport",
    "address",
    "user",
    "port",
    "identity_file",
    "known_hosts_file",
    "ssh_options",
    "remote_supervisor",
    "allow",
  ],
  agent: ["transport", "address", "port", "local_address", "allow"],
};

/**
 * Where the inventory is looked for when `--inventory` is not given:
 * `$XDG_CONFIG_HOME/ops-exec/hosts.toml`, else `~/.config/ops-exec/hosts.toml`.
 */
export function defaultInventoryPath(): string | null {
  const config = env("XDG_CONFIG_HOME");
  if (config && config.startsWith("/")) return join(config, "ops-exec", "hosts.toml");
  const home = env("HOME");
  return home ? join(home, ".config", "ops-exec", "hosts.toml") : null;
}

/**
 * Reads the inventory at `path`. With `optional`, a missing file is no
 * inventory (`null`) rather than an error.
 *
 * @throws {ConfigError} When the file cannot be read or is invalid.
 */
export async function loadInventory(path: string, optional = false): Promise<Inventory | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (optional && error instanceof Deno.errors.NotFound) return null;
    const why = error instanceof Error ? error.message : String(error);
    throw new ConfigError("", `cannot read the inventory ${path}: ${why}`, { cause: error });
  }
  try {
    return parseInventory(text, path);
  } catch (error) {
    // Name the file: a person may have several inventories.
    if (error instanceof ConfigError && !error.message.includes(path)) {
      error.message = `${path}: ${error.message}`;
    }
    throw error;
  }
}

/**
 * Parses and validates the text of a hosts.toml.
 *
 * @throws {ConfigError} Naming the key path of the first problem found.
 */
export function parseInventory(text: string, source = "hosts.toml"): Inventory {
  const root = table(parseStrictToml(text, source), "", ["hosts", "groups"]);
  return build(source, sections(root.hosts, "hosts"), sections(root.groups, "groups"));
}

/** The `[hosts.NAME]` (or `[groups.NAME]`) tables, by name. */
function sections(value: unknown, key: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (!isTable(value)) {
    throw new ConfigError(key, `must be a table of [${key}.NAME] tables, got a value`);
  }
  return value;
}

function build(
  source: string,
  hostTables: Record<string, unknown>,
  groupTables: Record<string, unknown>,
): Inventory {
  const hosts = new Map<string, HostTarget>();
  for (const [name, value] of Object.entries(hostTables)) {
    hosts.set(name, readHost(name, value));
  }
  const groups = new Map<string, InventoryGroup>();
  for (const [name, value] of Object.entries(groupTables)) {
    const key = `groups.${printable(name)}`;
    checkName(name, key);
    if (hosts.has(name)) {
      throw new ConfigError(key, `"${name}" is already a host: a group needs a name of its own`);
    }
    const t = table(value, key, ["hosts", "allow"]);
    const members = required(t, "hosts", key);
    if (!Array.isArray(members) || members.length === 0) {
      throw new ConfigError(`${key}.hosts`, "must be a non-empty array of host or group names");
    }
    groups.set(name, {
      name,
      members: members.map((m, i) => string(m, `${key}.hosts[${i}]`)),
      hosts: [],
      allow: readAllow(t.allow, `${key}.allow`),
    });
  }
  for (const group of groups.values()) {
    group.hosts = expand(group.name, hosts, groups, [group.name]);
  }
  for (const group of groups.values()) {
    for (const member of group.hosts) {
      const host = hosts.get(member)!;
      host.groups.push(group.name);
      host.allow = host.allow!.union(group.allow);
    }
  }
  return { source, hosts, groups };
}

function readHost(name: string, value: unknown): HostTarget {
  const key = `hosts.${printable(name)}`;
  checkName(name, key);
  if (!isTable(value)) throw new ConfigError(key, "must be a table ([hosts.NAME])");
  const transport = string(required(value, "transport", key), `${key}.transport`);
  if (!(TRANSPORTS as readonly string[]).includes(transport)) {
    throw new ConfigError(
      `${key}.transport`,
      `must be "local", "ssh" or "agent", got "${printable(transport)}"`,
    );
  }
  const kind = transport as TransportName;
  const t = table(value, key, KEYS[kind]);
  if (name === "local" && kind !== "local") {
    throw new ConfigError(
      key,
      'the target "local" is always this machine: give this host another name',
    );
  }
  const host: HostTarget = {
    name,
    transport: kind,
    allow: readAllow(t.allow, `${key}.allow`),
    groups: [],
  };
  if (kind === "ssh") {
    host.ssh = {
      address: nonEmpty(required(t, "address", key), `${key}.address`),
      ...optional("user", maybe(t.user, `${key}.user`)),
      ...optional("port", integer(t.port, `${key}.port`, 1, 65535)),
      ...optional("identityFile", maybe(t.identity_file, `${key}.identity_file`)),
      ...optional("knownHostsFile", maybe(t.known_hosts_file, `${key}.known_hosts_file`)),
      ...optional("sshOptions", stringArray(t.ssh_options, `${key}.ssh_options`)),
      ...optional(
        "remoteSupervisor",
        oneOf(t.remote_supervisor, `${key}.remote_supervisor`, ["auto", "perl", "sh"] as const),
      ),
    };
  } else if (kind === "agent") {
    const address = nonEmpty(required(t, "address", key), `${key}.address`);
    const port = integer(t.port, `${key}.port`, 1, 65535);
    const url = agentUrl(address, port);
    if (url === null) {
      throw new ConfigError(
        `${key}.address`,
        `"${printable(address)}" is not a host name or IP address (the port goes in port = N)`,
      );
    }
    const localAddress = t.local_address === undefined
      ? undefined
      : string(t.local_address, `${key}.local_address`);
    if (localAddress !== undefined && !isIpAddress(localAddress)) {
      throw new ConfigError(
        `${key}.local_address`,
        `"${printable(localAddress)}" must be an IP address of this machine`,
      );
    }
    host.agent = { url, ...optional("localAddress", localAddress) };
  }
  // The transports' own checks, with their errors named by this file's keys.
  openExecutor(host, CapabilitySet.none(), key);
  return host;
}

/** `{ [name]: value }` when the value is set. */
function optional<K extends string, V>(name: K, value: V | undefined): { [P in K]?: V } {
  return value === undefined ? {} : { [name]: value } as { [P in K]?: V };
}

/** A non-empty string, or `undefined` when absent. */
function maybe(value: unknown, key: string): string | undefined {
  return value === undefined ? undefined : nonEmpty(value, key);
}

function readAllow(value: unknown, key: string): CapabilitySet {
  if (value === undefined) return CapabilitySet.none();
  return CapabilitySet.fromJSON(value, key);
}

function stringArray(value: unknown, key: string): string[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value)) throw new ConfigError(key, "must be an array of strings");
  return value.map((item, i) => string(item, `${key}[${i}]`));
}

function oneOf<T extends string>(
  value: unknown,
  key: string,
  allowed: readonly T[],
): T | undefined {
  if (value === undefined) return undefined;
  const text = string(value, key);
  if (!(allowed as readonly string[]).includes(text)) {
    throw new ConfigError(
      key,
      `must be ${allowed.map((a) => `"${a}"`).join(", ")}, got "${printable(text)}"`,
    );
  }
  return text as T;
}

function checkName(name: string, key: string): void {
  if (!NAME.test(name)) {
    throw new ConfigError(
      key,
      `"${
        printable(name)
      }" is not a name: letters, digits, ".", "_", "-", starting with a letter or digit, at most 64`,
    );
  }
}

/** The hosts of group `name`, nested groups expanded; `path` is the chain of groups so far. */
function expand(
  name: string,
  hosts: Map<string, HostTarget>,
  groups: Map<string, InventoryGroup>,
  path: string[],
): string[] {
  const out: string[] = [];
  const add = (host: string) => {
    if (!out.includes(host)) out.push(host);
  };
  groups.get(name)!.members.forEach((member, i) => {
    const key = `groups.${name}.hosts[${i}]`;
    if (hosts.has(member)) return add(member);
    if (!groups.has(member)) {
      throw new ConfigError(key, `"${printable(member)}" is neither a host nor a group here`);
    }
    if (path.includes(member)) {
      throw new ConfigError(
        key,
        `group "${member}" contains itself (${[...path, member].join(" -> ")})`,
      );
    }
    for (const host of expand(member, hosts, groups, [...path, member])) add(host);
  });
  return out;
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

/**
 * The hosts the TARGET arguments name, in order, each once: `local`,
 * `ssh://...` and `agent://...` as written, other names from the inventory
 * (a host, or a group's hosts).
 *
 * @param targets The TARGET arguments.
 * @param inventory The inventory, if there is one.
 * @param where Where the inventory was looked for, for the message when a name is unknown.
 * @throws {TargetError} When a target is malformed or names nothing.
 */
export function resolveTargets(
  targets: readonly string[],
  inventory: Inventory | null,
  where: string | null,
): HostTarget[] {
  const out: HostTarget[] = [];
  const add = (host: HostTarget) => {
    if (!out.some((h) => h.name === host.name)) out.push(host);
  };
  for (const target of targets) {
    if (target === "local" && inventory?.hosts.has("local")) add(inventory.hosts.get("local")!);
    else if (target === "local" || isUrlTarget(target)) add(parseUrlTarget(target));
    else if (inventory?.hosts.has(target)) add(inventory.hosts.get(target)!);
    else if (inventory?.groups.has(target)) {
      for (const name of inventory.groups.get(target)!.hosts) add(inventory.hosts.get(name)!);
    } else throw new TargetError(target, unknownName(target, inventory, where));
  }
  return out;
}

function unknownName(target: string, inventory: Inventory | null, where: string | null): string {
  if (!NAME.test(target)) {
    return "use local, ssh://[user@]host[:port], agent://host[:port], or a host or group name of the inventory";
  }
  if (inventory === null) {
    return `is not local, ssh://... or agent://..., and there is no inventory to look it up in (${
      where ? `none at ${where}` : "HOME is not set"
    }; give one with --inventory FILE)`;
  }
  const names = [...inventory.hosts.keys(), ...inventory.groups.keys()];
  const hint = closest(target, names);
  return `is not a host or group of ${inventory.source}${
    hint ? ` (did you mean "${hint}"?)` : ""
  }; it has ${names.length === 0 ? "none" : names.join(", ")}`;
}
