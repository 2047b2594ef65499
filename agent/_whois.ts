// Turns a tailscale whois answer (apitype.WhoIsResponse) into the caller
// identity grants are matched against. Identities are keyed on StableID and
// LoginName, never on the numeric IDs: those are int64 and lose precision in
// JSON.parse above 2^53, so two nodes can parse to the same number.

import { CapabilitySet } from "../capability/capability_set.ts";
import type { CallerSummary } from "../transports/_agent_protocol.ts";
import { unmapAddress } from "./_net.ts";

/** The pseudo-user tailscale gives every tagged node. */
export const TAGGED_DEVICES = "tagged-devices";

/** Who a caller is, as far as grants are concerned. */
export interface CallerIdentity {
  /** Which provider answered. */
  provider: "tailscale" | "loopback";
  /** The peer address the request came from (`IP:PORT`, unmapped). */
  peer: string;
  /** The person's login; `undefined` for a tagged node (it is never a person). */
  login?: string;
  /** The person's groups, each `group:NAME` (empty for tagged nodes). */
  groups: string[];
  /** The node's tags, each `tag:NAME`. */
  tags: string[];
  /** The node's MagicDNS name without the trailing dot, if known. */
  nodeName?: string;
  /** The node's short name (`ComputedName`, else the first label of its name). */
  nodeShortName?: string;
  /** The node's StableID, if known. */
  nodeId?: string;
  /** The node's tailnet addresses, unmapped, without prefix lengths. */
  addresses: string[];
  /** Grants from the tailnet policy file (`CapMap[capmap]`), already parsed. */
  capGrants: CapabilitySet;
  /** CapMap values that were ignored because they did not parse, with why. */
  capProblems: string[];
}

/** A whois document that is not shaped like one. */
export class WhoisFormatError extends Error {
  /** @param message What is wrong with it. */
  constructor(message: string) {
    super(message);
    this.name = "WhoisFormatError";
  }
}

/**
 * Parses the JSON text of a whois answer.
 *
 * @param text The response body of `/localapi/v0/whois` or `tailscale whois --json`.
 * @param peer The address that was looked up.
 * @param capmap The CapMap key to take grants from, if any.
 */
export function parseWhois(text: string, peer: string, capmap?: string): CallerIdentity {
  let doc: unknown;
  try {
    // Numeric IDs are dropped on purpose: nothing may depend on them.
    doc = JSON.parse(text, (key, value) => (key === "ID" || key === "User") ? undefined : value);
  } catch {
    throw new WhoisFormatError("the whois answer is not JSON");
  }
  const node = record(record(doc, "whois answer").Node, "Node");
  const profile = record(record(doc, "whois answer").UserProfile, "UserProfile");
  const tags = stringArray(node.Tags, "Node.Tags").filter((t) => t.startsWith("tag:"));
  const login = optionalString(profile.LoginName, "UserProfile.LoginName");
  // Node.Tags first: a tagged node is never a person, whatever user it shows
  // (Headscale before 0.28 kept the owner's user on tagged nodes).
  const isTagged = tags.length > 0 || login === TAGGED_DEVICES;
  const name = optionalString(node.Name, "Node.Name")?.replace(/\.$/, "");
  const computed = optionalString(node.ComputedName, "Node.ComputedName");
  const identity: CallerIdentity = {
    provider: "tailscale",
    peer,
    groups: isTagged ? [] : stringArray(profile.Groups, "UserProfile.Groups").map(asGroup),
    tags,
    addresses: stringArray(node.Addresses, "Node.Addresses").map((a) =>
      unmapAddress(a.replace(/\/\d+$/, ""))
    ),
    capGrants: CapabilitySet.none(),
    capProblems: [],
  };
  if (!isTagged && login) identity.login = login;
  if (name) identity.nodeName = name;
  const short = computed || name?.split(".")[0];
  if (short) identity.nodeShortName = short;
  const stableId = optionalString(node.StableID, "Node.StableID");
  if (stableId) identity.nodeId = stableId;
  if (capmap !== undefined) readCapMap(record(doc, "whois answer").CapMap, capmap, identity);
  return identity;
}

/** Collects the grants of `CapMap[capmap]`; an entry that does not parse grants nothing. */
function readCapMap(capMap: unknown, key: string, identity: CallerIdentity): void {
  if (capMap === null || capMap === undefined) return;
  if (typeof capMap !== "object" || Array.isArray(capMap)) {
    identity.capProblems.push("CapMap is not an object");
    return;
  }
  const values = (capMap as Record<string, unknown>)[key];
  if (values === undefined || values === null) return;
  if (!Array.isArray(values)) {
    identity.capProblems.push(`CapMap["${key}"] is not an array`);
    return;
  }
  let grants = CapabilitySet.none();
  values.forEach((value, i) => {
    const where = `CapMap["${key}"][${i}]`;
    if (typeof value !== "object" || value === null || Array.isArray(value)) {
      identity.capProblems.push(`${where} is not an object`);
      return;
    }
    const extra = Object.keys(value).filter((k) => k !== "allow");
    if (extra.length > 0) {
      identity.capProblems.push(`${where} has unknown keys: ${extra.join(", ")}`);
      return;
    }
    try {
      grants = grants.union(
        CapabilitySet.fromJSON((value as { allow?: unknown }).allow, `${where}.allow`),
      );
    } catch (error) {
      identity.capProblems.push(error instanceof Error ? error.message : String(error));
    }
  });
  identity.capGrants = grants;
}

/** The identity every peer of the loopback provider gets. */
export function loopbackIdentity(selector: string, peer: string): CallerIdentity {
  const colon = selector.indexOf(":");
  const kind = selector.slice(0, colon);
  const value = selector.slice(colon + 1);
  const identity: CallerIdentity = {
    provider: "loopback",
    peer,
    groups: [],
    tags: kind === "tag" ? [selector] : [],
    addresses: [],
    capGrants: CapabilitySet.none(),
    capProblems: [],
  };
  if (kind === "user") identity.login = value;
  if (kind === "node") [identity.nodeName, identity.nodeShortName] = [value, value];
  if (kind === "node-id") identity.nodeId = value;
  return identity;
}

/** How the agent names a caller in answers and in the audit log. */
export function summarize(identity: CallerIdentity): CallerSummary {
  const summary: CallerSummary = { provider: identity.provider };
  if (identity.login !== undefined) summary.user = identity.login;
  if (identity.tags.length > 0) summary.tags = identity.tags;
  if (identity.nodeName !== undefined) summary.node = identity.nodeName;
  if (identity.nodeId !== undefined) summary.nodeId = identity.nodeId;
  return summary;
}

function asGroup(name: string): string {
  return name.startsWith("group:") ? name : `group:${name}`;
}

function record(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new WhoisFormatError(`${what} is missing or not an object`);
  }
  return value as Record<string, unknown>;
}

function optionalString(value: unknown, what: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== "string") throw new WhoisFormatError(`${what} is not a string`);
  return value;
}

function stringArray(value: unknown, what: string): string[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string")) {
    throw new WhoisFormatError(`${what} is not an array of strings`);
  }
  return value as string[];
}
