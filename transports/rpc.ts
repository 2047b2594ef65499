/**
 * {@linkcode AgentRpc}: run steps on a host through its `ops-agent`, over
 * HTTP with streamed NDJSON. Loads no server code.
 *
 * @example
 * ```ts
 * import { CapabilitySet, CollectingSink, Step } from "@makenot/ops-exec";
 * import { AgentRpc } from "@makenot/ops-exec/rpc";
 *
 * await using agent = new AgentRpc(
 *   { url: "http://100.101.102.103:7070" },
 *   CapabilitySet.of("bento.*"),
 * );
 * const sink = new CollectingSink();
 * const out = await agent.runStreaming(Step.exec("bento.build", ["uname", "-a"]), sink);
 * console.log(out.exitCode, sink.text());
 * ```
 *
 * @module
 */
export { AgentRpc, type AgentRpcOptions } from "./agent_rpc.ts";
