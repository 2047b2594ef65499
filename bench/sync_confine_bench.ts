// What confining a transfer to its root costs (issue 9): a one-file push
// through the agent, with `sync_confinement = "namespace"` (a private mount
// namespace per transfer) against `"none"`, the two agents alternating.
// The data path is the same (bind mounts), so the difference is per transfer.
//
// Run: deno run -A bench/sync_confine_bench.ts [--reps 40]

import { parseArgs } from "@deps/cli";
import { CapabilitySet } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "../tests/_agent_process.ts";
import { alternate, machine, median, percentile } from "./_stats.ts";

const { values } = parseArgs({ options: { reps: { type: "string", default: "40" } } });
if (Deno.build.os !== "linux") {
  console.log("sync_confine_bench: skipped, mount namespaces are Linux's");
  Deno.exit(0);
}
await Deno.mkdir("/tmp/ops-agent", { recursive: true });
const base = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "bench-confine-" });
await Deno.mkdir(`${base}/src`);
await Deno.writeTextFile(`${base}/src/a.txt`, "a");

const caps = CapabilitySet.of("sync.*");
const agents = [];
const candidates: Record<string, () => Promise<unknown>> = {};
for (const confinement of ["namespace", "none"]) {
  const root = `${base}/${confinement}`;
  const toml = loopbackConfig({ ceiling: [`sync.push:${root}`] })
    .replace("[identity]", `sync_confinement = "${confinement}"\n[identity]`);
  const agent = await startAgentProcess(toml);
  const rpc = new AgentRpc({ url: agent.url }, caps);
  agents.push(agent, rpc);
  let i = 0;
  candidates[confinement] = () => rpc.push(`${base}/src/`, `${root}/app${i++ % 4}/`);
}
const samples = await alternate(candidates, { runs: Number(values.reps), warmup: 5 });
console.log(machine());
for (const [name, times] of Object.entries(samples)) {
  console.log(
    `push of a one-file tree, sync_confinement = "${name}": median ${
      median(times).toFixed(1)
    } ms, p90 ${percentile(times, 90).toFixed(1)} ms (${times.length} runs)`,
  );
}
console.log(
  `namespace costs ${(median(samples.namespace) - median(samples.none)).toFixed(1)} ms a transfer`,
);
for (const item of agents.reverse()) await item[Symbol.asyncDispose]();
await Deno.remove(base, { recursive: true });
