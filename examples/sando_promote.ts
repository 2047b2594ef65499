// Sando's shape on ops-exec: promote an artifact through gated tiers
// (canary -> prod). For each tier, in order: observe every host (is there room
// for the release?), push the artifact, run `sando.promote` (switch the
// `current` link), run `sando.health`. A tier that fails is rolled back and
// the rollout halts: later tiers receive nothing.
//
// Works with any Executor: AgentRpc hosts on a tailnet, SshExec hosts, or
// LocalExec for a dry rehearsal. As a program:
//
//   deno run -A examples/sando_promote.ts --artifact ./dist --release 1.2.3 \
//     --root /srv/app --tier canary=http://100.101.7.12:7070 --tier prod=http://100.101.7.13:7070

import {
  CapabilitySet,
  ConsoleSink,
  type Executor,
  fanOut,
  type HostResult,
  type LogSink,
  Step,
} from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { exampleArgs, usageError } from "./_args.ts";

/** One tier of the rollout: hosts that are promoted together. */
export interface Tier {
  /** The tier's name, e.g. `canary`. */
  name: string;
  /** Its hosts. */
  hosts: Executor[];
}

/** Options of {@linkcode promote}. */
export interface PromoteOptions {
  /** The local artifact directory (must hold an executable `health.sh`). */
  artifact: string;
  /** The release name, e.g. `1.2.3`. */
  release: string;
  /** The application root on every host; releases go to `<root>/releases/<release>`. */
  root: string;
  /** Bytes of free space a host needs beyond the artifact. Default 64 MiB. */
  headroomBytes?: number;
  /** Hosts promoted at once within a tier. Default 4. */
  concurrency?: number;
  /** Where each host's lines go. Default: the console, prefixed with the host. */
  sinkFor?: (executor: Executor) => LogSink;
  /** Progress messages. Default: console.log. */
  log?: (message: string) => void;
}

/** What a rollout did. */
export interface PromotionReport {
  /** The tiers that were promoted and passed their health check. */
  promoted: string[];
  /** The tier where the rollout halted, if it did. */
  haltedAt?: string;
  /** Why it halted: the failing hosts and what went wrong on each. */
  failures: { host: string; phase: string; reason: string }[];
}

const PROMOTE = 'set -e; cd "$APP_ROOT"; ' +
  "if [ -L current ]; then readlink current > .previous; else : > .previous; fi; " +
  'ln -sfn "releases/$RELEASE" current; echo "current -> releases/$RELEASE"';
const HEALTH = 'cd "$APP_ROOT/current" && ./health.sh';
const ROLLBACK = 'set -e; cd "$APP_ROOT"; previous=$(cat .previous 2>/dev/null || true); ' +
  'if [ -n "$previous" ]; then ln -sfn "$previous" current; echo "rolled back to $previous"; ' +
  'else rm -f current; echo "rolled back: no previous release"; fi';

/**
 * Promotes `opts.artifact` through `tiers`, in order, halting at the first
 * tier where any host fails (which is then rolled back).
 */
export async function promote(
  tiers: readonly Tier[],
  opts: PromoteOptions,
): Promise<PromotionReport> {
  const log = opts.log ?? console.log;
  const report: PromotionReport = { promoted: [], failures: [] };
  const env = { APP_ROOT: opts.root, RELEASE: opts.release };
  const releaseDir = `${opts.root}/releases/${opts.release}`;
  const size = await directorySize(opts.artifact);
  const fanOpts = { concurrency: opts.concurrency ?? 4, sinkFor: opts.sinkFor };

  for (const tier of tiers) {
    log(`tier ${tier.name}: ${tier.hosts.map((h) => h.host).join(", ")}`);
    const fail = (results: HostResult[], phase: string) => {
      for (const r of results) {
        report.failures.push({ host: r.host, phase, reason: describe(r) });
      }
    };

    // 1. Observe: every host must have room for the release.
    const roomless: HostResult[] = [];
    await Promise.all(tier.hosts.map(async (host) => {
      try {
        const facts = await host.observe();
        const disk = facts?.disks.find((d) => opts.root.startsWith(d.path));
        if (disk && disk.availableBytes < size + (opts.headroomBytes ?? 64 * 2 ** 20)) {
          throw new Error(`only ${disk.availableBytes} bytes free under ${disk.path}`);
        }
        log(
          `  ${host.host}: ${facts?.hostname} ${facts?.os}/${facts?.arch}, load ${
            facts?.loadAverage[0]
          }`,
        );
      } catch (error) {
        roomless.push({ host: host.host, executor: host, status: "error", error });
      }
    }));
    if (roomless.length) return halt(report, tier, fail, roomless, "observe", log);

    // 2. Push the artifact to every host of the tier.
    const unpushed: HostResult[] = [];
    await Promise.all(tier.hosts.map(async (host) => {
      try {
        const sync = await host.push(`${opts.artifact}/`, `${releaseDir}/`, { delete: true });
        log(`  ${host.host}: pushed ${sync.filesTransferred} files (${sync.literalBytes} bytes)`);
      } catch (error) {
        unpushed.push({ host: host.host, executor: host, status: "error", error });
      }
    }));
    if (unpushed.length) return halt(report, tier, fail, unpushed, "push", log);

    // 3. Promote, 4. health-check; a failure rolls the tier back and halts.
    const promoted = await fanOut(
      tier.hosts,
      Step.shell("sando.promote", PROMOTE, { env }),
      fanOpts,
    );
    const healthy = promoted.ok
      ? await fanOut(
        tier.hosts,
        Step.shell("sando.health", HEALTH, { env, timeoutMs: 60_000 }),
        fanOpts,
      )
      : promoted;
    if (!healthy.ok) {
      log(`  tier ${tier.name} failed: rolling back`);
      await fanOut(tier.hosts, Step.shell("sando.promote", ROLLBACK, { env }), fanOpts);
      return halt(report, tier, fail, healthy.failures, promoted.ok ? "health" : "promote", log);
    }
    report.promoted.push(tier.name);
  }
  log(`promoted ${opts.release} to ${report.promoted.join(", ")}`);
  return report;
}

function halt(
  report: PromotionReport,
  tier: Tier,
  fail: (results: HostResult[], phase: string) => void,
  failures: HostResult[],
  phase: string,
  log: (message: string) => void,
): PromotionReport {
  fail(failures, phase);
  report.haltedAt = tier.name;
  log(
    `halted at ${tier.name} (${phase}): ${
      failures.map((f) => `${f.host}: ${describe(f)}`).join("; ")
    }`,
  );
  return report;
}

function describe(result: HostResult): string {
  if (result.status === "error") {
    return result.error instanceof Error ? result.error.message : String(result.error);
  }
  if (result.status === "skipped") return "skipped";
  const out = result.output!;
  if (out.timedOut) return "timed out";
  if (out.cancelled) return "cancelled";
  return out.signal ? `killed by ${out.signal}` : `exit ${out.exitCode}`;
}

async function directorySize(path: string): Promise<number> {
  let total = 0;
  for await (const entry of Deno.readDir(path)) {
    const full = `${path}/${entry.name}`;
    if (entry.isDirectory) total += await directorySize(full);
    else if (entry.isFile) total += (await Deno.stat(full)).size;
  }
  return total;
}

const SANDO_USAGE =
  `Usage: sando_promote.ts --artifact DIR --release NAME [--root DIR] --tier NAME=URL[,URL...]...

Promotes the artifact DIR (which must hold an executable health.sh) through the
tiers in order, each tier's hosts being ops-agent URLs: observe, push to
ROOT/releases/NAME, switch ROOT/current, check health. A failing tier is rolled
back and the rollout halts.

Options:
  --artifact DIR        the local artifact directory
  --release NAME        the release name, e.g. 1.2.3
  --root DIR            the application root on every host (default /srv/app)
  --tier NAME=URL,...   a tier and its agents' URLs (repeatable, in order)
  -h, --help            this help

Example:
  deno run -A examples/sando_promote.ts --artifact ./dist --release 1.2.3 \\
    --tier canary=http://100.101.7.12:7070 --tier prod=http://100.101.7.13:7070`;

if (import.meta.main) {
  const values = exampleArgs("sando_promote.ts", SANDO_USAGE, {
    artifact: { type: "string" },
    release: { type: "string" },
    root: { type: "string", default: "/srv/app" },
    tier: { type: "string", multiple: true },
  }) as { artifact?: string; release?: string; root: string; tier?: string[] };
  if (!values.artifact || !values.release || !values.tier?.length) {
    usageError(
      "sando_promote.ts",
      "--artifact, --release and at least one --tier are required",
    );
  }
  for (const spec of values.tier) {
    if (!/^[^=]+=[^=]+$/.test(spec)) {
      usageError("sando_promote.ts", `--tier "${spec}": write NAME=URL[,URL...]`);
    }
  }
  const caps = CapabilitySet.of(
    "sando.*",
    "observe",
    `sync.push:${values.root}`,
  );
  const tiers = values.tier.map((spec: string) => {
    const [name, urls] = spec.split("=", 2);
    return { name, hosts: urls.split(",").map((url: string) => new AgentRpc({ url }, caps)) };
  });
  const report = await promote(tiers, {
    artifact: values.artifact,
    release: values.release,
    root: values.root!,
    sinkFor: (e) => new ConsoleSink({ host: e.host }),
  });
  for (const tier of tiers) for (const host of tier.hosts) await host.close();
  Deno.exit(report.haltedAt ? 1 : 0);
}
