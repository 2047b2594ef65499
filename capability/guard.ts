import { CapabilityDenied } from "../executor/errors.ts";
import type { CapabilitySet } from "./capability_set.ts";

/** Options of {@linkcode assertAllowed}. */
export interface AssertAllowedOptions {
  /** The host the action is aimed at (named in the error). */
  host: string;
  /** For sync actions, the target path. */
  path?: string;
}

/**
 * Throws {@linkcode CapabilityDenied} (scope `caller`) unless `set` allows
 * `action`. Every transport calls this before it dispatches anything.
 *
 * @example
 * ```ts
 * import { assertAllowed, CapabilitySet } from "@makenot/ops-exec";
 *
 * assertAllowed(CapabilitySet.of("bento.*"), "bento.sign", { host: "mac-1" });
 * ```
 *
 * @param set The caller's capability set.
 * @param action The action about to be dispatched.
 * @param opts The host, and the path for sync actions.
 * @throws {CapabilityDenied} When the set does not allow the action.
 */
export function assertAllowed(
  set: CapabilitySet,
  action: string,
  opts: AssertAllowedOptions,
): void {
  if (set.allows(action, opts.path)) return;
  throw new CapabilityDenied(action, opts.host, "caller", {
    path: opts.path,
    reason: `granted: ${set.toJSON().join(", ") || "(nothing)"}`,
  });
}
