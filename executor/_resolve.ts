// Where a path really leads, after `..` and every symlink, for paths that may
// not exist yet. Shared by the agent (whose read scope does not cover the
// sync roots, so it asks /bin/sh) and LocalExec (which checks a push/pull
// path the same way before rsync starts).

import type { CapabilitySet } from "../capability/capability_set.ts";
import { isInsideRoot, normalizeRoot } from "../capability/path.ts";
import { baseEnvironment } from "./_env.ts";
import { CapabilityDenied } from "./errors.ts";

// Prints, for each argument, where it really leads: the deepest directory
// that exists, resolved by `cd -P` (every symlink followed), with the parts
// that do not exist yet appended. NUL-separated. (A last component that is a
// link to a file, or a dangling one, is taken by name: rsync replaces or
// sends such a link itself, it does not write or read through it.)
const RESOLVE = `for p; do
  rest=
  while [ "$p" != / ] && [ ! -d "$p" ]; do rest="/\${p##*/}$rest"; p=\${p%/*}; [ -n "$p" ] || p=/; done
  if cd -P -- "$p" 2>/dev/null; then printf '%s%s\\0' "$(pwd -P)" "$rest"; else printf '\\0'; fi
done`;

/**
 * Where each path leads after symlinks and `..` (for paths that do not exist
 * yet: their deepest existing directory, resolved, plus the rest). Resolved by
 * `/bin/sh` (`cd -P`), which runs whatever the caller's read scope; an
 * unresolvable path comes back as `null`.
 *
 * @param paths Absolute paths.
 * @returns One resolved path (normalised) or `null` per input, in order.
 */
export async function resolvePaths(paths: readonly string[]): Promise<(string | null)[]> {
  if (paths.length === 0) return [];
  const out = await new Deno.Command("/bin/sh", {
    args: ["-c", RESOLVE, "sh", ...paths],
    env: baseEnvironment(),
    clearEnv: true,
    stdin: "null",
    stderr: "null",
  }).output();
  const resolved = new TextDecoder().decode(out.stdout).split("\0").slice(0, paths.length);
  return paths.map((_, i) => (resolved[i] ? normalizeRoot(resolved[i]) : null));
}

/**
 * The first of `roots` whose resolved form (`resolvedRoots[i]`, `null` when
 * it cannot be resolved) holds `resolved`, preferring the outermost; `null`
 * when none does.
 *
 * @param resolved A path after symlinks.
 * @param roots The roots, as granted.
 * @param resolvedRoots The same roots after symlinks, in the same order.
 */
export function enclosingRoot(
  resolved: string,
  roots: readonly string[],
  resolvedRoots: readonly (string | null)[],
): { root: string; resolvedRoot: string } | null {
  let best: { root: string; resolvedRoot: string } | null = null;
  roots.forEach((root, i) => {
    const real = resolvedRoots[i];
    if (real === null || !isInsideRoot(resolved, real)) return;
    if (best === null || real.length < best.resolvedRoot.length) {
      best = { root, resolvedRoot: real };
    }
  });
  return best;
}

/**
 * The caller-side check of a local push/pull after symlinks: `path` (already
 * allowed as written) must also lead, through every symlink, into a root
 * that `caps` grants for `action`, resolved the same way.
 *
 * @throws {CapabilityDenied} (scope `caller`) When it leads out of every granted root.
 */
export async function assertLeadsInside(
  caps: CapabilitySet,
  action: "sync.push" | "sync.pull",
  path: string,
  host: string,
): Promise<void> {
  if (caps.allows(action)) return;
  const roots = caps.syncRoots(action);
  const [resolved, ...real] = await resolvePaths([normalizeRoot(path), ...roots]);
  if (resolved !== null && enclosingRoot(resolved, roots, real) !== null) return;
  throw new CapabilityDenied(action, host, "caller", {
    path,
    reason: resolved === null
      ? "the path cannot be resolved"
      : `it leads to ${resolved} (through a symlink), outside the granted roots ${
        roots.join(", ")
      }`,
  });
}
