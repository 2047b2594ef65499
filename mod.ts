/**
 * ops-exec: run a typed, capability-gated step on a host and observe a host,
 * locally, over the system ssh, or through an `ops-agent` on a tailnet.
 *
 * Every executor is scoped to one host and one {@linkcode CapabilitySet}; an
 * action the set does not grant throws {@linkcode CapabilityDenied} before any
 * process starts or any byte leaves the machine.
 *
 * @example
 * ```ts
 * import { CapabilitySet, ConsoleSink, LocalExec, Step } from "@makenot/ops-exec";
 *
 * await using exec = new LocalExec(CapabilitySet.of("bento.*", "observe"));
 * const out = await exec.runStreaming(
 *   Step.shell("bento.build", "set -e; echo building; echo done"),
 *   new ConsoleSink({ host: exec.host }),
 * );
 * console.log(out.success, out.exitCode);
 * ```
 *
 * @module
 */
export * from "./step/mod.ts";
export * from "./capability/mod.ts";
export * from "./executor/mod.ts";
export * from "./transports/mod.ts";
