// What a TARGET on the command line names, and the one function that turns a
// resolved host into an executor. Every executor the CLI uses is built by
// `openExecutor`, so the transports' constructors are called in one place.

import {
  type CapabilitySet,
  ConfigError,
  type Executor,
  LocalExec,
  type RemoteSupervisor,
  SshExec,
} from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";

/** The transports a host can be reached by. */
export type TransportName = "local" | "ssh" | "agent";

/** How to reach a host over ssh. */
export interface SshRoute {
  /** Host name, address, or an alias of the caller's ssh_config. */
  address: string;
  /** Login name. */
  user?: string;
  /** TCP port. */
  port?: number;
  /** A private key file. */
  identityFile?: string;
  /** A known_hosts file. */
  knownHostsFile?: string;
  /** More `Name=value` ssh options. */
  sshOptions?: string[];
  /** `auto`, `perl` or `sh`. */
  remoteSupervisor?: RemoteSupervisor;
}

/** How to reach a host's agent. */
export interface AgentRoute {
  /** The agent's base URL, e.g. `http://100.101.7.12:7070`. */
  url: string;
  /** The local address to connect from. */
  localAddress?: string;
}

/** One host, resolved from a TARGET: its name, its route, and what the inventory grants. */
export interface HostTarget {
  /** The name lines, results and errors give it. */
  name: string;
  /** How it is reached. */
  transport: TransportName;
  /** The ssh route (transport `ssh`). */
  ssh?: SshRoute;
  /** The agent route (transport `agent`). */
  agent?: AgentRoute;
  /** The inventory's grant for it (its own `allow` and its groups'); absent for URL targets. */
  allow?: CapabilitySet;
  /** The inventory groups it belongs to, directly or through nested groups. */
  groups: string[];
}

/** The port an `agent://host` target means when it names none. */
export const DEFAULT_AGENT_PORT = 7070;

// A user name and a host as ssh takes them: never a leading "-" (ssh would read an
// option), no white space or control characters, no "@", "/" or ":" inside a name.
const USER = /^[A-Za-z0-9._][A-Za-z0-9._-]*$/;
const HOST_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;
const IPV6 = /^\[([0-9A-Fa-f:.]+)\]$/;
const URL_TARGET =
  /^(ssh|agent):\/\/(?:([^@/?#]*)@)?(\[[^\]]*\]|[^:/?#\[\]]*)(?::([^/?#]*))?(.*)$/s;

/** An error in a TARGET argument (a usage error, not a configuration error). */
export class TargetError extends Error {
  /**
   * @param target The argument.
   * @param message What is wrong with it.
   */
  constructor(readonly target: string, message: string) {
    super(`target "${printableTarget(target)}": ${message}`);
    this.name = "TargetError";
  }
}

/** Whether `text` is written as a URL target (`ssh://`, `agent://`) rather than a name. */
export function isUrlTarget(text: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(text);
}

/**
 * Reads `local`, `ssh://[user@]host[:port]` or `agent://host[:port]`.
 *
 * @throws {TargetError} When the target is malformed; the message says the accepted forms.
 */
export function parseUrlTarget(text: string): HostTarget {
  if (text === "local") return { name: "local", transport: "local", groups: [] };
  const match = URL_TARGET.exec(text);
  if (!match) {
    throw new TargetError(
      text,
      "use local, ssh://[user@]host[:port], agent://host[:port], or a host or group name of the inventory",
    );
  }
  const [, scheme, user, rawHost, rawPort, rest] = match;
  if (rest !== "") {
    throw new TargetError(text, "a target has no path, query or fragment after host[:port]");
  }
  const host = checkHost(text, rawHost);
  const port = rawPort === undefined ? undefined : checkPort(text, rawPort);
  const hostPort = port === undefined ? host : `${host}:${port}`;
  if (scheme === "ssh") {
    if (user !== undefined) {
      if (user.includes(":")) {
        throw new TargetError(text, "no password in a target: ssh authenticates with its keys");
      }
      if (!USER.test(user)) {
        throw new TargetError(
          text,
          `"${
            printableTarget(user)
          }" is not a login name (letters, digits, ".", "_", "-"; not first "-")`,
        );
      }
    }
    const address = host.startsWith("[") ? host.slice(1, -1) : host;
    return {
      name: user === undefined ? hostPort : `${user}@${hostPort}`,
      transport: "ssh",
      ssh: {
        address,
        ...(user === undefined ? {} : { user }),
        ...(port === undefined ? {} : { port }),
      },
      groups: [],
    };
  }
  if (user !== undefined) {
    throw new TargetError(
      text,
      "an agent target names no user: the agent identifies this machine by its tailnet node",
    );
  }
  return {
    name: hostPort,
    transport: "agent",
    agent: { url: agentUrl(host, port)! },
    groups: [],
  };
}

/**
 * The base URL of an agent at `address` (a host name, an IPv4 address, or an
 * IPv6 address with or without brackets) and `port` (default 7070), or
 * `null` when `address` is none of these.
 */
export function agentUrl(address: string, port?: number): string | null {
  const bare = address.startsWith("[") && address.endsWith("]") ? address.slice(1, -1) : address;
  if (bare.includes(":")) {
    return isIpAddress(bare) ? `http://[${bare}]:${port ?? DEFAULT_AGENT_PORT}` : null;
  }
  return HOST_NAME.test(bare) ? `http://${bare}:${port ?? DEFAULT_AGENT_PORT}` : null;
}

/** Whether `text` is an IPv4 or IPv6 address (no brackets). */
export function isIpAddress(text: string): boolean {
  if (/^\d{1,3}(\.\d{1,3}){3}$/.test(text)) return text.split(".").every((n) => Number(n) <= 255);
  if (!/^[0-9A-Fa-f:.]+$/.test(text) || !text.includes(":")) return false;
  try {
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}

function checkHost(text: string, host: string): string {
  const v6 = IPV6.exec(host);
  if (v6) {
    if (!v6[1].includes(":") || !isIpAddress(v6[1])) {
      throw new TargetError(text, `"${host}" is not an IPv6 address`);
    }
    return host;
  }
  if (!HOST_NAME.test(host)) {
    throw new TargetError(
      text,
      host === ""
        ? "names no host"
        : `"${
          printableTarget(host)
        }" is not a host name or address (letters, digits, ".", "_", "-"; not first "-"; IPv6 in brackets)`,
    );
  }
  return host;
}

function checkPort(text: string, port: string): number {
  const n = /^\d{1,5}$/.test(port) ? Number(port) : NaN;
  if (!(n >= 1 && n <= 65535)) {
    throw new TargetError(text, `port "${printableTarget(port)}" must be a number from 1 to 65535`);
  }
  return n;
}

function printableTarget(text: string): string {
  return JSON.stringify(text.length > 80 ? `${text.slice(0, 80)}…` : text).slice(1, -1);
}

/** The inventory's snake_case name of each option an executor's constructor may name in a ConfigError. */
const OPTION_KEYS: Record<string, string> = {
  host: "address",
  user: "user",
  port: "port",
  identityFile: "identity_file",
  knownHostsFile: "known_hosts_file",
  sshOptions: "ssh_options",
  remoteSupervisor: "remote_supervisor",
  url: "address",
  localAddress: "local_address",
};

/**
 * The executor for `host`, scoped to `caps`. The one place the CLI builds
 * an executor; it connects nothing (each transport connects on first use).
 *
 * @param host The resolved host.
 * @param caps The caller-side grant every call on it is checked against.
 * @param keyPrefix Where a bad option sits in the inventory (e.g. `hosts.web-1`), for
 *   the error's key; the executor's own option name otherwise.
 * @throws {ConfigError} When an option is malformed.
 */
export function openExecutor(host: HostTarget, caps: CapabilitySet, keyPrefix?: string): Executor {
  try {
    switch (host.transport) {
      case "local":
        return new LocalExec(caps, { host: host.name });
      case "ssh": {
        const route = host.ssh!;
        return new SshExec({
          host: route.address,
          user: route.user,
          port: route.port,
          identityFile: route.identityFile,
          knownHostsFile: route.knownHostsFile,
          sshOptions: route.sshOptions,
          remoteSupervisor: route.remoteSupervisor,
        }, caps);
      }
      case "agent":
        return new AgentRpc({
          url: host.agent!.url,
          host: host.name,
          ...(host.agent!.localAddress === undefined
            ? {}
            : { localAddress: host.agent!.localAddress }),
        }, caps);
    }
  } catch (error) {
    if (!(error instanceof ConfigError) || keyPrefix === undefined) throw error;
    const [, option, index] = /^([A-Za-z]+)(.*)$/.exec(error.key ?? "") ?? [];
    const key = `${keyPrefix}.${OPTION_KEYS[option] ?? option ?? ""}${index ?? ""}`;
    const why = error.key ? error.message.slice(error.key.length + 2) : error.message;
    throw new ConfigError(key, why, { cause: error });
  }
}
