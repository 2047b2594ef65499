import { ConfigError } from "../executor/errors.ts";
import { typeName } from "../executor/_describe.ts";
import {
  formatGrant,
  type Grant,
  grantAllows,
  grantCovers,
  intersectGrants,
  parseGrant,
} from "./grant.ts";

/**
 * A set of grants: what a caller (or a host) allows. The same grammar is used
 * in code, in the agent's `config.toml` and in tailnet CapMap values:
 *
 * - `bento.sign`: that action only;
 * - `bento.*`: every action below `bento.` (not `bento` itself);
 * - `*`: everything;
 * - `sync.push:/srv/app`: `sync.push` (or `sync.pull`) limited to a path root.
 *
 * Sets are immutable. {@linkcode CapabilitySet.intersect} keeps the invariant
 * `a.intersect(b).allows(x, p) === (a.allows(x, p) && b.allows(x, p))`.
 *
 * @example
 * ```ts
 * import { CapabilitySet } from "@makenot/ops-exec";
 *
 * const caller = CapabilitySet.of("bento.*", "observe", "sync.push:/srv/app");
 * caller.allows("bento.sign"); // true
 * caller.allows("sync.push", "/srv/app/releases"); // true
 * caller.allows("sync.push", "/srv/application"); // false
 *
 * const ceiling = CapabilitySet.of("bento.build", "observe");
 * caller.intersect(ceiling).allows("bento.sign"); // false
 * ```
 */
export class CapabilitySet {
  readonly #grants: readonly Grant[];

  private constructor(grants: readonly Grant[]) {
    this.#grants = Object.freeze(simplify(grants));
  }

  /**
   * A set of the given grants.
   *
   * @param grants Grant strings, e.g. `"bento.*"`, `"sync.push:/srv/app"`.
   * @returns The set.
   * @throws {ConfigError} When a grant does not parse.
   */
  static of(...grants: string[]): CapabilitySet {
    return new CapabilitySet(grants.map((g, i) => parseGrant(g, `grants[${i}]`)));
  }

  /**
   * The empty set: allows nothing.
   *
   * @returns A set with no grants.
   */
  static none(): CapabilitySet {
    return new CapabilitySet([]);
  }

  /**
   * Reads a set from its JSON form (an array of grant strings), strictly.
   *
   * @param value A parsed JSON value.
   * @param key The key path named in errors.
   * @returns The set.
   * @throws {ConfigError} When the value is not an array of valid grants.
   */
  static fromJSON(value: unknown, key = "capabilities"): CapabilitySet {
    if (!Array.isArray(value)) {
      throw new ConfigError(key, `must be an array of grant strings, got ${typeName(value)}`);
    }
    return new CapabilitySet(value.map((g, i) => parseGrant(g, `${key}[${i}]`)));
  }

  /**
   * Whether the set allows `action`. `path` matters only for `sync.push` and
   * `sync.pull`: a path-limited grant allows only a path inside its root, so
   * without a path only an unlimited sync grant allows a sync action.
   *
   * @param action An action name.
   * @param path For sync actions, the absolute target path.
   * @returns `true` when some grant allows it.
   */
  allows(action: string, path?: string): boolean {
    return this.#grants.some((grant) => grantAllows(grant, action, path));
  }

  /**
   * The set that allows exactly what both sets allow.
   *
   * @param other The other set (e.g. a host's ceiling).
   * @returns The intersection.
   */
  intersect(other: CapabilitySet): CapabilitySet {
    const both: Grant[] = [];
    for (const a of this.#grants) {
      for (const b of other.#grants) {
        const g = intersectGrants(a, b);
        if (g) both.push(g);
      }
    }
    return new CapabilitySet(both);
  }

  /**
   * The set that allows what either set allows.
   *
   * @param other The other set.
   * @returns The union.
   */
  union(other: CapabilitySet): CapabilitySet {
    return new CapabilitySet([...this.#grants, ...other.#grants]);
  }

  /** Whether the set allows nothing at all. */
  get isEmpty(): boolean {
    return this.#grants.length === 0;
  }

  /**
   * The absolute roots of the set's path-limited sync grants, sorted.
   *
   * @param action Only the roots of this action's grants (`sync.push` or `sync.pull`).
   * @returns Each distinct root once.
   */
  syncRoots(action?: "sync.push" | "sync.pull"): string[] {
    const roots = new Set<string>();
    for (const g of this.#grants) {
      if (g.kind === "rooted" && (action === undefined || g.action === action)) roots.add(g.root);
    }
    return [...roots].sort();
  }

  /**
   * The canonical grant strings, sorted, without grants another one covers.
   *
   * @returns An array suitable for `CapabilitySet.fromJSON`.
   */
  toJSON(): string[] {
    return this.#grants.map(formatGrant);
  }

  /**
   * The grants as one readable string.
   *
   * @returns e.g. `CapabilitySet(bento.*, observe)`.
   */
  toString(): string {
    return `CapabilitySet(${this.toJSON().join(", ")})`;
  }
}

/** Drops grants that another grant covers, dedupes, and sorts. */
function simplify(grants: readonly Grant[]): Grant[] {
  const byText = new Map<string, Grant>();
  for (const g of grants) byText.set(formatGrant(g), g);
  const unique = [...byText.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return unique
    .filter(([text, g]) => !unique.some(([other, h]) => other !== text && grantCovers(h, g)))
    .map(([, g]) => g);
}
