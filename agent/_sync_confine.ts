// How the agent keeps a transfer's `rsync --server` inside the root it was
// granted, at the moment rsync uses the path rather than only at the upgrade:
// the roots resolved once at start, the rsync that runs (and which of its own
// server-side safeguards it has), and the command that starts it — on Linux
// in a private mount namespace whose only tree is the root (SYNC_SCRIPT).

import type { CapabilitySet } from "../capability/capability_set.ts";
import { isInsideRoot, normalizeRoot } from "../capability/path.ts";
import { baseEnvironment } from "../executor/_env.ts";
import { enclosingRoot, resolvePaths } from "../executor/_resolve.ts";
import { runProcess } from "../executor/_spawn.ts";
import type { RsyncFlavour } from "../transports/_agent_protocol.ts";
import { describeFlavour } from "../transports/_rsync_flavour.ts";
import { unshareArgv } from "./_namespaces.ts";
import SYNC_SCRIPT from "./_sync_confine.sh" with { type: "text" };

/**
 * How a transfer's rsync is confined: `namespace` (Linux: a private mount
 * namespace, made as root or inside an unprivileged user namespace, whose
 * only tree is the root) or `none` (the agent's checks and rsync's own
 * safeguards only; see docs/protocol.md).
 */
export type SyncConfinement = "namespace" | "none";

/** What the agent found out at start about confining transfers. */
export interface SyncSetup {
  /** The configured confinement. */
  confinement: SyncConfinement;
  /** With `namespace`: whether it needs an unprivileged user namespace (the agent is not root). */
  userNamespace: boolean;
  /** The rsync program that runs (`agent.rsync`). */
  program: string;
  /** What that rsync is and offers. */
  rsync: RsyncFeatures;
  /** rsync's `--timeout` and the WebSocket's idle limit, in seconds. */
  idleTimeoutS: number;
}

/** The agent host's rsync and the server-side safeguards it offers. */
export interface RsyncFeatures {
  /** What its `--version` said, in words, e.g. `rsync 3.5.0 (protocol 32)`. */
  version: string;
  /** Whether it is openrsync (macOS's rsync), whose receiver has no `--safe-links`. */
  openrsync: boolean;
  /** A receiver honours `--safe-links` (rsync 3.x). */
  safeLinks: boolean;
  /** `--confine-root=DIR` (rsync 3.5+). */
  confineRoot: boolean;
  /** `--drop-D` (rsync 3.5+). */
  dropDevices: boolean;
}

/** `setup` in words, for the agent's start-up line. */
export function describeSync(setup: SyncSetup): string {
  const { rsync } = setup;
  const guards = [
    rsync.safeLinks ? "--safe-links" : "",
    rsync.confineRoot ? "--confine-root" : "",
    rsync.dropDevices ? "--drop-D" : "",
  ].filter(Boolean);
  const where = setup.confinement === "none"
    ? 'not confined by the OS (sync_confinement = "none")'
    : `confined to its root in a private mount namespace${
      setup.userNamespace ? " inside a user namespace (the agent is not root)" : ""
    }`;
  return `${rsync.version}, ${where}; rsync's own safeguards: ${
    guards.join(" ") || "none"
  }; idle limit ${setup.idleTimeoutS} s`;
}

/**
 * Which of rsync's own server-side safeguards the agent's rsync (`program`,
 * whose `--version` said `flavour`; `null` when it said nothing usable) has,
 * from its `--help`.
 */
export async function probeRsync(
  program: string,
  flavour: RsyncFlavour | null,
): Promise<RsyncFeatures> {
  let help = "";
  try {
    const out = await new Deno.Command(program, {
      args: ["--help"],
      env: baseEnvironment(),
      clearEnv: true,
      stdin: "null",
    }).output();
    const decoder = new TextDecoder();
    help = decoder.decode(out.stdout) + decoder.decode(out.stderr);
  } catch {
    // No such program: no safeguards (and /v1/sync fails as it says).
  }
  const openrsync = flavour?.kind === "openrsync";
  return {
    version: flavour ? describeFlavour(flavour) : `${program} (not a known rsync)`,
    openrsync,
    safeLinks: !openrsync && help.includes("--safe-links"),
    confineRoot: help.includes("--confine-root"),
    dropDevices: help.includes("--drop-D"),
  };
}

/**
 * The sync roots of a config, resolved once when the agent starts: a
 * request's path is compared with where a root led then, so a root that a
 * broader grant's holder later replaces by a symlink leads nowhere new.
 */
export class SyncRoots {
  readonly #resolved: Map<string, string | null>;

  private constructor(resolved: Map<string, string | null>) {
    this.#resolved = resolved;
  }

  /** Resolves every root that `sets` name. */
  static async resolve(sets: readonly CapabilitySet[]): Promise<SyncRoots> {
    const roots = [...new Set(sets.flatMap((set) => set.syncRoots()))];
    const resolved = await resolvePaths(roots);
    return new SyncRoots(new Map(roots.map((root, i) => [root, resolved[i]])));
  }

  /**
   * Where `root` led at start. A root the config does not name (a CapMap
   * grant narrower than the ceiling) is placed inside the resolved form of
   * the closest configured root that holds it, without following anything
   * below that: it can only be narrower, never elsewhere.
   */
  resolved(root: string): string | null {
    if (this.#resolved.has(root)) return this.#resolved.get(root)!;
    let best: string | undefined;
    for (const known of this.#resolved.keys()) {
      if (isInsideRoot(root, known) && (best === undefined || known.length > best.length)) {
        best = known;
      }
    }
    const base = best === undefined ? null : this.#resolved.get(best)!;
    if (base === null || best === undefined) return null;
    return normalizeRoot(`${base}/${root.slice(best.length)}`);
  }

  /**
   * The granted root, resolved, whose tree holds `resolvedTarget` (the
   * outermost when several do); `"/"` when the grant is not limited to
   * roots; `null` when it lies outside every root.
   */
  confinementRoot(
    effective: CapabilitySet,
    action: "sync.push" | "sync.pull",
    resolvedTarget: string,
  ): string | null {
    if (effective.allows(action)) return "/";
    const roots = effective.syncRoots(action);
    return enclosingRoot(resolvedTarget, roots, roots.map((root) => this.resolved(root)))
      ?.resolvedRoot ?? null;
  }
}

/** What one transfer runs. */
export interface SyncPlan {
  /** `sync.push` (rsync receives) or `sync.pull` (it sends). */
  action: "sync.push" | "sync.pull";
  /** The granted root that holds the target, resolved at start; `/` for an unlimited grant. */
  root: string;
  /** The target, resolved, with its trailing slash (rsync's "contents of") kept. */
  target: string;
  /** A dry run (`-n`): nothing is created for it. */
  dryRun?: boolean;
}

/**
 * The command that runs the client's `rsync --server` vector (`serverArgv`,
 * without the target path) for `plan` under `setup`: rsync's own safeguards
 * added, and — unless the grant is unlimited — the confinement.
 */
export function syncCommand(
  plan: SyncPlan,
  serverArgv: readonly string[],
  setup: SyncSetup,
): string[] {
  const rsync = [setup.program, ...serverArgv.slice(0, -1), ...safeguards(plan, setup), "."];
  if (plan.root === "/") return [...rsync, plan.target];
  const how = setup.confinement === "none" ? "pin" : setup.userNamespace ? "userview" : "view";
  const dir = plan.action === "sync.pull" ? "pull" : plan.dryRun ? "push-dry" : "push";
  const script = ["/bin/sh", "-c", SYNC_SCRIPT, "sh", how, dir];
  const unshare = unshareArgv(setup, ["--mount", "--pid", "--fork", "--propagation", "private"]);
  return [...(how === "pin" ? [] : unshare), ...script, plan.root, plan.target, ...rsync];
}

/** Whether an `rsync --server` vector asks for a dry run (`n` among its short options). */
export function isDryRun(serverArgv: readonly string[]): boolean {
  return serverArgv.some((word) =>
    word === "--dry-run" || (/^-[A-Za-z]/.test(word) && word.split("e.")[0].includes("n"))
  );
}

/** The server-side options the agent adds to every vector it runs. */
function safeguards(plan: SyncPlan, setup: SyncSetup): string[] {
  const receiving = plan.action === "sync.push";
  const { rsync } = setup;
  return [
    `--timeout=${setup.idleTimeoutS}`,
    ...(receiving && rsync.safeLinks ? ["--safe-links"] : []),
    ...(receiving && rsync.dropDevices ? ["--drop-D"] : []),
    ...(rsync.confineRoot && plan.root !== "/" ? [`--confine-root=${plan.root}`] : []),
  ];
}

/**
 * Whether this host can confine transfers as `setup` says: runs the
 * confinement with rsync's `--version` as the transfer. Resolves to `null`
 * when it works, else to what failed.
 */
export async function probeConfinement(setup: SyncSetup): Promise<string | null> {
  const argv = syncCommand(
    { action: "sync.pull", root: "/tmp", target: "/tmp" },
    ["--version", "."],
    { ...setup, confinement: "namespace" },
  );
  const lines: string[] = [];
  try {
    const result = await runProcess({
      argv,
      env: baseEnvironment(),
      timeoutMs: 10_000,
      killGraceMs: 1000,
    }, { write: (line) => void lines.push(line.text) });
    if (result.exitCode === 0 && lines.some((line) => /rsync/.test(line))) return null;
    return lines.slice(-2).join(" / ") || `exit ${result.exitCode ?? result.signal}`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}
