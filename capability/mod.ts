/**
 * Capabilities: the grant grammar and {@linkcode CapabilitySet}.
 *
 * @module
 */
export { CapabilitySet } from "./capability_set.ts";
export { isInsideRoot, normalizeRoot } from "./path.ts";
export { assertAllowed, type AssertAllowedOptions } from "./guard.ts";
