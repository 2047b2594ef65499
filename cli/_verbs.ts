// What each verb does, on top of the one fleet runner (`eachHost`), the one
// executor factory (`openExecutor`) and the one output (`Output`).

import { resolve } from "node:path";
import {
  CapabilityDenied,
  CapabilitySet,
  ConfigError,
  type HostObservation,
  type RunOutput,
  Step,
  type SyncOpts,
  type SyncResult,
  TransportError,
} from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { execViaShell } from "../executor/_exec_via_shell.ts";
import { parseDuration, UsageError, type VerbArgs } from "./_args.ts";
import { eachHost, type HostOperation, type HostRun } from "./_fleet.ts";
import type { Inventory } from "./_inventory.ts";
import { EXIT, exitCodeOf, type Verdict, verdictOfRun } from "./_outcome.ts";
import { formatBytes, formatDuration, type Output } from "./_output.ts";
import { progressFor } from "./_progress.ts";
import type { HostTarget } from "./_target.ts";

/** Hosts at once unless --concurrency says otherwise. */
export const DEFAULT_CONCURRENCY = 8;

/** Everything a verb needs. */
export interface Invocation {
  /** The parsed command line. */
  args: VerbArgs;
  /** Where output goes. */
  output: Output;
  /** The hosts the targets resolved to. */
  hosts: HostTarget[];
  /** The inventory, if there is one. */
  inventory: Inventory | null;
  /** Aborted on SIGINT/SIGTERM. */
  signal: AbortSignal;
  /** The step of `run` and `sh` (see {@linkcode buildStep}). */
  step?: Step;
  /** `--allow`, read (see {@linkcode allowFlag}); absent when not given. */
  allow?: CapabilitySet;
}

const OK: Verdict = { status: "ok", exitCode: 0, reason: "" };

/** Runs the verb of `inv` on its hosts; resolves to the exit code. */
export async function runVerb(inv: Invocation): Promise<number> {
  switch (inv.args.verb) {
    case "run":
    case "sh":
      return await runStep(inv, inv.step ?? buildStep(inv.args));
    case "observe":
      return await observe(inv);
    case "caps":
      return await caps(inv);
    case "push":
    case "pull":
      return await sync(inv);
    case "hosts":
      return await hosts(inv);
  }
}

// --- run and sh -------------------------------------------------------------

/** The step of `run` or `sh`, from the command line. */
export function buildStep(args: VerbArgs): Step {
  const { verb, values } = args;
  const action = values.action as string | undefined;
  if (!action) {
    throw new UsageError(verb, "--action A is required: the action the step is gated on");
  }
  const env: Record<string, string> = {};
  for (const pair of (values.env as string[] | undefined) ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) throw new UsageError(verb, `--env "${pair}": write NAME=VALUE`);
    env[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  const opts = {
    env,
    ...(values.cwd === undefined ? {} : { cwd: values.cwd as string }),
    ...(values.timeout === undefined
      ? {}
      : { timeoutMs: parseDuration(verb, "timeout", values.timeout as string) }),
    ...(values.grace === undefined
      ? {}
      : { killGraceMs: parseDuration(verb, "grace", values.grace as string) }),
    ...(values.stdin === undefined ? {} : { stdin: readStdin(values.stdin as string) }),
  };
  if (verb === "run") {
    if (args.rest === null) {
      throw new UsageError(
        verb,
        "put -- before the command: ops-exec run TARGET... -a A -- CMD ARGS...",
      );
    }
    if (args.rest.length === 0) throw new UsageError(verb, "no command after --");
    return Step.exec(action, args.rest, opts);
  }
  if (args.rest === null && args.positionals.length < 2) {
    throw new UsageError(
      verb,
      "give the TARGETs, then the script: ops-exec sh TARGET... -a A 'SCRIPT'",
    );
  }
  const script = args.rest ?? args.positionals.slice(-1);
  if (script.length !== 1) {
    throw new UsageError(
      verb,
      "give the script as one argument: ops-exec sh TARGET... -a A 'SCRIPT'",
    );
  }
  return Step.shell(action, script[0], opts);
}

function readStdin(path: string): Uint8Array {
  try {
    if (path === "-") {
      const chunks: Uint8Array[] = [];
      const buffer = new Uint8Array(64 * 1024);
      for (;;) {
        const n = Deno.stdin.readSync(buffer);
        if (n === null) break;
        chunks.push(buffer.slice(0, n));
      }
      const out = new Uint8Array(chunks.reduce((sum, c) => sum + c.length, 0));
      let offset = 0;
      for (const c of chunks) out.set(c, (offset += c.length) - c.length);
      return out;
    }
    return Deno.readFileSync(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) throw error;
    const why = error instanceof Error ? error.message : String(error);
    throw new UsageError(null, `--stdin ${path}: ${why}`);
  }
}

function runStep(inv: Invocation, step: Step): Promise<number> {
  // On this machine, an exec step goes through /bin/sh, as the agent's do: the CLI's
  // permission set may start /bin/sh but not every program (docs/cli.md, "Permissions").
  const here = step.kind === "exec"
    ? Step.fromJSON({ ...step.toJSON(), argv: execViaShell(step.argv) })
    : step;
  return fleet<RunOutput>(inv, async (host, executor, signal) => {
    const output = await executor.runStreaming(
      host.transport === "local" ? here : step,
      inv.output.sinkFor(host.name),
      { signal },
    );
    const verdict = verdictOfRun(output);
    await inv.output.event({ type: "exit", ...output, host: host.name, status: verdict.status });
    return { value: output, verdict };
  });
}

// --- observe ----------------------------------------------------------------

function observe(inv: Invocation): Promise<number> {
  return fleet<HostObservation>(inv, async (host, executor, signal) => {
    const facts = await abortable(executor.observe(), signal);
    if (facts === null) throw new TransportError("protocol", host.name, "observe returned nothing");
    await inv.output.event({ type: "observation", ...facts, host: host.name });
    await inv.output.print(describeFacts(inv.output, host.name, facts));
    return { value: facts, verdict: OK };
  });
}

function describeFacts(output: Output, host: string, f: HostObservation): string {
  const label = output.hostLabel(host);
  const load = f.loadAverage.map((n) => n.toFixed(2)).join(" ");
  const lines = [
    `${label}  ${f.hostname}: ${f.os}/${f.arch}, kernel ${f.kernel}, up ${
      formatUptime(f.uptimeSeconds)
    }${f.agent ? `, ops-agent ${f.agent.version}` : ""}`,
    `${label}  load ${load}, memory ${formatBytes(f.memory.availableBytes)} free of ${
      formatBytes(f.memory.totalBytes)
    }`,
    ...f.disks.map((d) =>
      `${label}  disk ${d.path}: ${formatBytes(d.availableBytes)} free of ${
        formatBytes(d.totalBytes)
      }`
    ),
  ];
  return lines.join("\n");
}

function formatUptime(seconds: number): string {
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  return days > 0 ? `${days}d ${hours}h` : hours > 0 ? `${hours}h ${minutes}m` : `${minutes}m`;
}

// --- caps -------------------------------------------------------------------

function caps(inv: Invocation): Promise<number> {
  return fleet<null>(inv, async (host, executor, signal) => {
    const caller = executor.capabilities();
    const remote = executor instanceof AgentRpc
      ? await abortable(executor.remoteCapabilities(), signal)
      : null;
    const effective = remote === null ? null : caller.intersect(remote);
    await inv.output.event({
      type: "capabilities",
      host: host.name,
      transport: host.transport,
      source: grantSource(inv, host),
      caller: caller.toJSON(),
      agent: remote?.toJSON() ?? null,
      effective: effective?.toJSON() ?? null,
    });
    const list = (set: CapabilitySet) => set.isEmpty ? "(nothing)" : set.toJSON().join(", ");
    const label = inv.output.hostLabel(host.name);
    await inv.output.print([
      `${label}  ${host.transport}: ${describeRoute(host)}`,
      `${label}  caller grant (${grantSource(inv, host)}): ${list(caller)}`,
      remote === null
        ? `${label}  host grant: not reported over ${host.transport}; ${
          host.transport === "ssh"
            ? "the remote account's own permissions apply"
            : "this machine's own permissions apply"
        }`
        : `${label}  agent grants this caller: ${list(remote)}`,
      ...(effective === null ? [] : [`${label}  both allow: ${list(effective)}`]),
    ].join("\n"));
    return { value: null, verdict: OK };
  });
}

// --- push and pull ------------------------------------------------------------

async function sync(inv: Invocation): Promise<number> {
  const { verb, values, positionals } = inv.args;
  if (positionals.length !== 3) {
    throw new UsageError(
      verb,
      `give TARGET SRC DST (got ${positionals.length} argument${
        positionals.length === 1 ? "" : "s"
      })`,
    );
  }
  const [, source, destination] = positionals;
  const local = (path: string) => {
    // Absolute, so that rsync never reads "a:b" as a remote host; the trailing slash is rsync's.
    const full = resolve(path);
    return path.endsWith("/") && full !== "/" ? `${full}/` : full;
  };
  const several = inv.hosts.length > 1;
  const progress = progressFor(inv.output, inv.hosts.map((h) => h.name));
  const reports: string[] = [];
  const common: SyncOpts = {
    delete: values.delete === true,
    exclude: (values.exclude as string[] | undefined) ?? [],
    dryRun: values["dry-run"] === true,
    checksum: values.checksum === true,
    compress: values.compress === true,
    ...(values.timeout === undefined
      ? {}
      : { timeoutMs: parseDuration(verb, "timeout", values.timeout as string) }),
  };
  let code: number;
  try {
    code = await fleet<SyncResult>(inv, async (host, executor, signal) => {
      const opts: SyncOpts = { ...common, signal };
      const onProgress = progress.for(host.name);
      if (onProgress) opts.onProgress = onProgress;
      const result = verb === "push"
        ? await executor.push(local(source), destination, opts)
        : await executor.pull(
          source,
          several ? `${local(destination).replace(/\/$/, "")}/${host.name}/` : local(destination),
          opts,
        );
      progress.done(host.name, true);
      await inv.output.event({ type: "sync", ...result, host: host.name, status: "ok" });
      reports.push(describeSync(inv.output, host.name, result));
      return { value: result, verdict: OK };
    }, "transfer");
  } finally {
    progress.stop();
  }
  if (reports.length > 0) await inv.output.print(reports.join("\n"));
  return code;
}

function describeSync(output: Output, host: string, r: SyncResult): string {
  const files = `${r.filesTransferred} file${r.filesTransferred === 1 ? "" : "s"}`;
  return `${output.hostLabel(host)}  ${r.action === "sync.push" ? "pushed" : "pulled"} ${files}${
    r.dryRun ? " (dry run: nothing changed)" : ""
  }, ${formatBytes(r.literalBytes)} sent as data of ${
    formatBytes(r.totalSize)
  }, ${r.filesDeleted} deleted, in ${formatDuration(r.durationMs)}`;
}

// --- hosts ------------------------------------------------------------------

async function hosts(inv: Invocation): Promise<number> {
  const { output, inventory } = inv;
  if (inventory === null && inv.args.positionals.length === 0) {
    throw new ConfigError(
      "",
      "there is no inventory: write ~/.config/ops-exec/hosts.toml or give --inventory FILE (docs/cli.md)",
    );
  }
  const shown = inv.args.positionals.length > 0 ? inv.hosts : [...inventory!.hosts.values()];
  for (const host of shown) {
    await output.event({
      type: "host",
      name: host.name,
      transport: host.transport,
      address: describeRoute(host),
      groups: host.groups,
      allow: host.allow?.toJSON() ?? null,
    });
  }
  const groups = inv.args.positionals.length > 0 || inventory === null
    ? []
    : [...inventory.groups.values()];
  for (const group of groups) {
    await output.event({
      type: "group",
      name: group.name,
      members: group.members,
      hosts: group.hosts,
      allow: group.allow.toJSON(),
    });
  }
  if (!output.json) {
    const rows = [
      ["HOST", "TRANSPORT", "ADDRESS", "GROUPS", "ALLOW"],
      ...shown.map((h) => [
        h.name,
        h.transport,
        describeRoute(h),
        h.groups.join(",") || "-",
        h.allow === undefined
          ? "(none: --allow)"
          : h.allow.isEmpty
          ? "(nothing)"
          : h.allow.toJSON().join(", "),
      ]),
    ];
    const lines = columns(rows);
    if (groups.length > 0) {
      lines.push(
        "",
        ...columns([
          ["GROUP", "HOSTS", "ALLOW"],
          ...groups.map((
            g,
          ) => [g.name, g.hosts.join(","), g.allow.isEmpty ? "-" : g.allow.toJSON().join(", ")]),
        ]),
      );
    }
    await output.print(lines.join("\n"));
  }
  return EXIT.ok;
}

function columns(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) =>
    r.map((cell, i) => i === r.length - 1 ? cell : cell.padEnd(widths[i])).join("  ")
  );
}

/** Where a host is, as a person reads it. */
export function describeRoute(host: HostTarget): string {
  if (host.transport === "local") return "this machine";
  if (host.transport === "agent") return host.agent!.url;
  const s = host.ssh!;
  const address = s.address.includes(":") ? `[${s.address}]` : s.address;
  return `${s.user ? `${s.user}@` : ""}${address}${s.port ? `:${s.port}` : ""}`;
}

// --- the shared part ----------------------------------------------------------

/** Where the caller-side grant of `host` comes from. */
function grantSource(inv: Invocation, host: HostTarget): "--allow" | "inventory" | "none" {
  if (inv.allow !== undefined) return "--allow";
  return host.allow === undefined ? "none" : "inventory";
}

/** The caller-side grant: `--allow` when given, else the inventory's; never anything implicit. */
export function grantOf(inv: Invocation, host: HostTarget): CapabilitySet {
  return inv.allow ?? host.allow ?? CapabilitySet.none();
}

/** `--allow` as a set. */
export function allowFlag(verb: VerbArgs["verb"], grants: string[]): CapabilitySet {
  return CapabilitySet.of(...grants.map((grant) => {
    try {
      CapabilitySet.of(grant);
      return grant;
    } catch (error) {
      const why = error instanceof ConfigError && error.key
        ? error.message.slice(error.key.length + 2)
        : String(error);
      throw new UsageError(verb, `--allow ${why}`);
    }
  }));
}

/** Runs `operation` on every host, reports each end and the summary, and returns the exit code. */
async function fleet<T>(
  inv: Invocation,
  operation: HostOperation<T>,
  during: "step" | "transfer" = "step",
): Promise<number> {
  const { output, args } = inv;
  const concurrency = args.values.concurrency === undefined
    ? DEFAULT_CONCURRENCY
    : Number(args.values.concurrency);
  const started = performance.now();
  const runs = await eachHost<T>(inv.hosts, {
    concurrency,
    failFast: args.values["fail-fast"] === true,
    signal: inv.signal,
    grantFor: (host) => grantOf(inv, host),
    during,
    onEnd: (run) => reportEnd(inv, run),
  }, operation);
  const exitCode = exitCodeOf(runs.map((r) => r.verdict));
  const rows = runs.map((r) => ({
    host: r.host.name,
    status: r.verdict.status,
    exitCode: exitCodeColumn(r),
    durationMs: Math.round(r.durationMs),
    reason: r.verdict.reason,
  }));
  await output.event({
    type: "summary",
    ok: runs.every((r) => r.verdict.status === "ok"),
    exitCode,
    durationMs: Math.round(performance.now() - started),
    hosts: rows,
  });
  if (runs.length > 1) {
    await output.summary(rows);
    const bad = runs.filter((r) => r.verdict.status !== "ok");
    if (bad.length > 0) {
      await output.note(
        `${bad.length} of ${runs.length} hosts did not succeed: ${
          bad.map((r) => `${r.host.name} (${r.verdict.status})`).join(", ")
        }`,
      );
    }
  }
  return exitCode;
}

/** The step's own exit code; 0 for another operation that succeeded; `null` otherwise. */
function exitCodeColumn(run: HostRun<unknown>): number | null {
  const value = run.value as Partial<RunOutput> | undefined;
  if (value !== undefined && value !== null && "exitCode" in value) return value.exitCode ?? null;
  return run.verdict.status === "ok" ? 0 : null;
}

/** A host's end: an `error` event and, on one host, a line for people. */
async function reportEnd(inv: Invocation, run: HostRun<unknown>): Promise<void> {
  const { verdict, error, host } = run;
  if (error !== undefined && error !== null) {
    verdict.reason = withHint(inv, host, error, verdict.reason);
    await inv.output.event({
      type: "error",
      host: host.name,
      status: verdict.status,
      code: errorCode(error),
      ...(error instanceof TransportError ? { kind: error.kind } : {}),
      ...(error instanceof CapabilityDenied
        ? { action: error.action, scope: error.scope, ...(error.path ? { path: error.path } : {}) }
        : {}),
      message: verdict.reason,
    });
  }
  const plainExit = verdict.status === "failed" && error === undefined;
  if (inv.hosts.length === 1 && verdict.status !== "ok" && !plainExit && !inv.output.json) {
    await inv.output.note(`${host.name}: ${verdict.status.replace("_", " ")}: ${verdict.reason}`);
  }
}

function errorCode(error: unknown): string {
  if (error instanceof Error && "code" in error && typeof error.code === "string") {
    return error.code;
  }
  if (error instanceof UsageError) return "usage";
  if (error instanceof Deno.errors.NotCapable) return "not_capable";
  return error instanceof Error ? error.name : "error";
}

function withHint(inv: Invocation, host: HostTarget, error: unknown, reason: string): string {
  if (!(error instanceof CapabilityDenied)) return reason;
  if (error.scope === "agent") {
    return `${reason} (ops-exec caps ${host.name} shows what the agent grants this machine)`;
  }
  const grant = error.path ? `${error.action}:${error.path}` : error.action;
  switch (grantSource(inv, host)) {
    case "none":
      return `${reason} (nothing is granted for ${host.name}: pass --allow ${grant}, or list it in the inventory's allow)`;
    case "inventory":
      return `${reason} (add ${grant} to the allow of ${host.name} or one of its groups in ${
        inv.inventory!.source
      }, or pass --allow)`;
    default:
      return `${reason} (add --allow ${grant})`;
  }
}

/** `promise`, or the signal's reason as soon as it aborts. */
function abortable<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
