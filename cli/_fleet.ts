// One operation on every resolved host, at most `concurrency` at a time, each
// host with its own executor (opened here, closed when its operation ends),
// its own verdict and its duration. One host's failure never hides another's
// result; with fail-fast, the first failure stops the rest.

import type { CapabilitySet, Executor } from "../mod.ts";
import { type Verdict, verdictOfError } from "./_outcome.ts";
import { type HostTarget, openExecutor } from "./_target.ts";

/** How one host's operation went. */
export interface HostRun<T> {
  /** The host. */
  host: HostTarget;
  /** Its verdict. */
  verdict: Verdict;
  /** What the operation returned, when it returned. */
  value?: T;
  /** What it threw, when it threw. */
  error?: unknown;
  /** Wall time of the operation, in milliseconds (0 when skipped). */
  durationMs: number;
}

/** Options of {@linkcode eachHost}. */
export interface EachHostOptions {
  /** Hosts at once. */
  concurrency: number;
  /** Stop at the first host whose verdict is not `ok`. */
  failFast: boolean;
  /** Cancels every running operation (Ctrl-C). */
  signal: AbortSignal;
  /** The caller-side grant for a host. */
  grantFor: (host: HostTarget) => CapabilitySet;
  /** `transfer` for push/pull (a transport timeout is then the transfer's own). */
  during?: "step" | "transfer";
  /** Called as each host ends, in the order they end. */
  onEnd?: (run: HostRun<unknown>) => Promise<void>;
}

/** The operation on one host: it gets the host's executor and a signal to honour. */
export type HostOperation<T> = (
  host: HostTarget,
  executor: Executor,
  signal: AbortSignal,
) => Promise<{ value: T; verdict: Verdict }>;

/** Runs `operation` on every host; resolves when every started one has ended. */
export async function eachHost<T>(
  hosts: readonly HostTarget[],
  opts: EachHostOptions,
  operation: HostOperation<T>,
): Promise<HostRun<T>[]> {
  const stop = new AbortController();
  const signal = AbortSignal.any([opts.signal, stop.signal]);
  const runs: HostRun<T>[] = hosts.map((host) => ({
    host,
    verdict: { status: "skipped", exitCode: 1, reason: "not started (fail-fast)" },
    durationMs: 0,
  }));
  let next = 0;
  const worker = async () => {
    while (next < runs.length && !signal.aborted) {
      const run = runs[next++];
      const started = performance.now();
      let executor: Executor | null = null;
      try {
        executor = openExecutor(run.host, opts.grantFor(run.host));
        const { value, verdict } = await operation(run.host, executor, signal);
        run.value = value;
        run.verdict = verdict;
      } catch (error) {
        run.error = error;
        run.verdict = verdictOfError(error, opts.during);
      } finally {
        await executor?.close().catch(() => {});
      }
      run.durationMs = performance.now() - started;
      await opts.onEnd?.(run);
      if (opts.failFast && run.verdict.status !== "ok") stop.abort();
    }
  };
  const limit = Math.max(1, Math.min(opts.concurrency, hosts.length));
  await Promise.all(Array.from({ length: limit }, worker));
  if (opts.signal.aborted) {
    for (const run of runs) {
      if (run.verdict.status === "skipped") {
        run.verdict = { status: "cancelled", exitCode: 130, reason: "not started (interrupted)" };
      }
    }
  }
  return runs;
}
