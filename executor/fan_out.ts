import type { Step } from "../step/step.ts";
import { ConsoleSink } from "./sinks.ts";
import type { Executor, LogSink, RunOutput } from "./types.ts";

/** Options of {@linkcode fanOut}. */
export interface FanOutOptions {
  /** How many hosts run at once. Default: all of them. */
  concurrency?: number;
  /**
   * Stop on the first failure (an error, or a run that did not succeed):
   * start no further host and cancel the ones running, as a CI matrix's
   * fail-fast does. Default `false`: run to completion.
   */
  failFast?: boolean;
  /** The sink for each host's lines. Default: a console sink prefixed with the host. */
  sinkFor?: (executor: Executor) => LogSink;
  /** Cancels every host's step. */
  signal?: AbortSignal;
}

/** How the step went on one host. */
export interface HostResult {
  /** The executor's host. */
  host: string;
  /** The executor that ran (or would have run) the step. */
  executor: Executor;
  /** `ran`: see `output`; `error`: see `error`; `skipped`: not started (fail-fast or abort). */
  status: "ran" | "error" | "skipped";
  /** The run's output, when the step ran. */
  output?: RunOutput;
  /** Why the step could not run on this host (denied, unreachable, ...). */
  error?: unknown;
}

/** The outcome of a {@linkcode fanOut}. */
export interface FanOutResult {
  /** One result per executor, in the order given. */
  results: HostResult[];
  /** `true` when every host ran the step successfully. */
  ok: boolean;
  /** The results that are not a success (errors, failed runs, skipped hosts). */
  failures: HostResult[];
  /** Wall time of the whole fan-out, in milliseconds. */
  durationMs: number;
}

/**
 * Runs one step on many executors, at most `concurrency` at a time, with each
 * host's lines going to its own sink (by default the console, prefixed with
 * the host). One host's error never hides another's result: each host gets
 * its output or its error.
 *
 * @example
 * ```ts
 * import { CapabilitySet, fanOut, LocalExec, Step } from "@makenot/ops-exec";
 *
 * const caps = CapabilitySet.of("sando.*");
 * const hosts = ["a", "b", "c"].map((host) => new LocalExec(caps, { host }));
 * const { ok, results } = await fanOut(hosts, Step.shell("sando.check", "uptime"), {
 *   concurrency: 2,
 *   failFast: true,
 * });
 * for (const r of results) console.log(r.host, r.status, r.output?.exitCode);
 * ```
 *
 * @param executors The hosts, one executor each.
 * @param step The step to run on every host.
 * @param opts Concurrency, fail-fast, sinks and cancellation.
 * @returns Every host's result, in the order of `executors`.
 */
export async function fanOut(
  executors: readonly Executor[],
  step: Step,
  opts: FanOutOptions = {},
): Promise<FanOutResult> {
  const started = performance.now();
  const limit = Math.max(1, Math.min(opts.concurrency ?? executors.length, executors.length));
  const stop = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stop.signal]) : stop.signal;
  const sinkFor = opts.sinkFor ?? ((e: Executor) => new ConsoleSink({ host: e.host }));
  const results: HostResult[] = executors.map((executor) => ({
    host: executor.host,
    executor,
    status: "skipped",
  }));

  let next = 0;
  const worker = async () => {
    while (next < executors.length && !signal.aborted) {
      const result = results[next++];
      try {
        result.output = await result.executor.runStreaming(step, sinkFor(result.executor), {
          signal,
        });
        result.status = "ran";
      } catch (error) {
        result.status = "error";
        result.error = error;
      }
      if (opts.failFast && !succeeded(result)) stop.abort(new Error(`${result.host} failed`));
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));

  const failures = results.filter((r) => !succeeded(r));
  return {
    results,
    ok: failures.length === 0,
    failures,
    durationMs: performance.now() - started,
  };
}

function succeeded(result: HostResult): boolean {
  return result.status === "ran" && result.output!.success;
}
