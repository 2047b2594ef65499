// Which grants a caller gets: the config's [[grant]] tables whose selectors
// match it, plus its CapMap grants, intersected with the host's ceiling.

import type { CapabilitySet } from "../capability/capability_set.ts";
import type { AgentConfig } from "./config.ts";
import type { CallerIdentity } from "./_whois.ts";

/**
 * Whether `selector` names the caller. `user:` and `group:` match people
 * only: a tagged node never matches them, whatever user it carries. `node:`
 * matches the node's MagicDNS name or short name, `node-id:` its StableID;
 * neither ever matches the other.
 */
export function selectorMatches(selector: string, caller: CallerIdentity): boolean {
  if (selector === "*") return true;
  const colon = selector.indexOf(":");
  const kind = selector.slice(0, colon);
  const value = selector.slice(colon + 1);
  const isPerson = caller.tags.length === 0 && caller.login !== undefined;
  switch (kind) {
    case "user":
      return isPerson && caller.login!.toLowerCase() === value.toLowerCase();
    case "group":
      return isPerson && caller.groups.includes(selector);
    case "tag":
      return caller.tags.includes(selector);
    case "node":
      // Names only: a StableID is `node-id:`, so no node can take a name that
      // reads as another node's ID (Headscale's IDs are small numbers, and its
      // users choose their hostnames).
      return value === caller.nodeName || value === caller.nodeShortName;
    case "node-id":
      return value === caller.nodeId;
    default:
      return false;
  }
}

/** What a caller may do on this host, and what it would get without the ceiling. */
export interface Entitlement {
  /** (config grants ∪ CapMap grants) ∩ ceiling. */
  effective: CapabilitySet;
  /** config grants ∪ CapMap grants, before the ceiling. */
  granted: CapabilitySet;
}

/** The caller's effective grant under `config`. */
export function entitlement(config: AgentConfig, caller: CallerIdentity): Entitlement {
  let granted = caller.capGrants;
  for (const rule of config.grants) {
    if (rule.to.some((selector) => selectorMatches(selector, caller))) {
      granted = granted.union(rule.allow);
    }
  }
  return { granted, effective: granted.intersect(config.ceiling) };
}

/**
 * Why `action` is refused, in words for the caller and the audit log, or
 * `null` when it is allowed.
 */
export function denialReason(
  grant: Entitlement,
  action: string,
  path?: string,
): string | null {
  if (grant.effective.allows(action, path)) return null;
  if (grant.granted.allows(action, path)) {
    return "granted to this caller but above this host's ceiling";
  }
  return "not granted to this caller";
}
