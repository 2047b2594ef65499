import { ConfigError } from "../executor/errors.ts";
import { printable, typeName } from "../executor/_describe.ts";
import { isActionName } from "../step/action.ts";
import { isInsideRoot, normalizeRoot } from "./path.ts";

/**
 * One parsed grant.
 *
 * - `all`: `*`, every action, sync on any path.
 * - `below`: `bento.*`, every action under `bento.` (not `bento` itself).
 * - `exact`: `bento.sign`, that action only.
 * - `rooted`: `sync.push:/srv/app`, one sync action on paths inside a root.
 */
export type Grant =
  | { readonly kind: "all" }
  | { readonly kind: "below"; readonly prefix: string }
  | { readonly kind: "exact"; readonly action: string }
  | { readonly kind: "rooted"; readonly action: SyncAction; readonly root: string };

/** The actions whose grants may be limited to a path root. */
export type SyncAction = "sync.push" | "sync.pull";

/** Whether `action` is one of the path-aware sync actions. */
export function isSyncAction(action: string): action is SyncAction {
  return action === "sync.push" || action === "sync.pull";
}

/**
 * Parses one grant string of the grant grammar.
 *
 * @param text The grant, e.g. `bento.*` or `sync.push:/srv/app`.
 * @param key The key path reported if it is malformed.
 * @returns The parsed grant.
 * @throws {ConfigError} When the grant does not parse.
 */
export function parseGrant(text: unknown, key = "grant"): Grant {
  if (typeof text !== "string") {
    throw new ConfigError(key, `a grant must be a string, got ${typeName(text)}`);
  }
  if (text === "*") return { kind: "all" };
  const colon = text.indexOf(":");
  if (colon >= 0) {
    const action = text.slice(0, colon);
    const root = text.slice(colon + 1);
    if (!isSyncAction(action)) {
      throw new ConfigError(
        key,
        `"${printable(text)}": only sync.push and sync.pull take a path root`,
      );
    }
    if (!root.startsWith("/") || root.includes("\0")) {
      throw new ConfigError(
        key,
        `"${printable(text)}": the path root must be an absolute path`,
      );
    }
    return { kind: "rooted", action, root: normalizeRoot(root) };
  }
  if (text.endsWith(".*")) {
    const prefix = text.slice(0, -2);
    if (isActionName(prefix)) return { kind: "below", prefix };
  } else if (isActionName(text)) {
    return { kind: "exact", action: text };
  }
  throw new ConfigError(
    key,
    `"${
      printable(text)
    }" is not a grant: use "bento.sign", "bento.*", "*" or "sync.push:/abs/path"`,
  );
}

/** The canonical text of a grant. */
export function formatGrant(grant: Grant): string {
  switch (grant.kind) {
    case "all":
      return "*";
    case "below":
      return `${grant.prefix}.*`;
    case "exact":
      return grant.action;
    case "rooted":
      return `${grant.action}:${grant.root}`;
  }
}

/**
 * Whether one grant allows `action` (on `path`, for sync actions).
 * A rooted grant needs a path inside its root; any other grant ignores the path.
 */
export function grantAllows(grant: Grant, action: string, path?: string): boolean {
  switch (grant.kind) {
    case "all":
      return true;
    case "below":
      return action.startsWith(`${grant.prefix}.`);
    case "exact":
      return action === grant.action;
    case "rooted":
      return action === grant.action && path !== undefined &&
        isInsideRoot(path, grant.root);
  }
}

/**
 * The grant that allows exactly what both `a` and `b` allow, or `null` when
 * nothing is allowed by both.
 */
export function intersectGrants(a: Grant, b: Grant): Grant | null {
  if (a.kind === "all") return b;
  if (b.kind === "all") return a;
  if (a.kind === "rooted" && b.kind === "rooted") {
    if (a.action !== b.action) return null;
    if (isInsideRoot(a.root, b.root)) return a;
    if (isInsideRoot(b.root, a.root)) return b;
    return null;
  }
  if (a.kind === "rooted") return grantAllows(b, a.action) ? a : null;
  if (b.kind === "rooted") return grantAllows(a, b.action) ? b : null;
  if (a.kind === "exact") return grantAllows(b, a.action) ? a : null;
  if (b.kind === "exact") return grantAllows(a, b.action) ? b : null;
  // Both are `prefix.*`: the deeper prefix, if one lies under the other.
  if (a.prefix === b.prefix || a.prefix.startsWith(`${b.prefix}.`)) return a;
  if (b.prefix.startsWith(`${a.prefix}.`)) return b;
  return null;
}

/** Whether everything `inner` allows is also allowed by `outer`. */
export function grantCovers(outer: Grant, inner: Grant): boolean {
  const both = intersectGrants(outer, inner);
  return both !== null && formatGrant(both) === formatGrant(inner);
}
