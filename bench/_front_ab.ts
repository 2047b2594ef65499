// Temporary: the agent before (main) and after (this branch), alternating.
import { CapabilitySet, LocalExec, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { startAgentProcess as startNew } from "../tests/_agent_process.ts";
import { startAgentProcess as startOld } from "/tmp/i13-old/tests/_agent_process.ts";
import { alternate, median } from "./_stats.ts";
const CONFIG = `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
[identity]
provider = "loopback"
loopback_identity = "user:bench@localhost"
[ceiling]
allow = ["bench.*"]
[[grant]]
to = ["user:bench@localhost"]
allow = ["bench.*"]
`;
const caps = CapabilitySet.of("bench.*");
await using oldA = await startOld(CONFIG);
await using newA = await startNew(CONFIG);
const local = new LocalExec(caps);
const o = new AgentRpc({ url: oldA.url }, caps), n = new AgentRpc({ url: newA.url }, caps);
const step = Step.exec("bench.true", ["true"]);
const sink = { write() {} };
const runs = Number(Deno.args[0] ?? 200);
const s = await alternate({
  local: () => local.runStreaming(step, sink),
  before: () => o.runStreaming(step, sink),
  after: () => n.runStreaming(step, sink),
}, { runs, warmup: 20 });
for (const [k, v] of Object.entries(s)) console.log("per-step", k, median(v).toFixed(3), "ms");
const bytes = Number(Deno.args[1] ?? 256 * 2 ** 20);
const flood = Step.shell(
  "bench.lines",
  `yes xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0 | head -c ${bytes}`,
);
const rate: Record<string, number[]> = { local: [], before: [], after: [] };
for (let rep = 0; rep < Number(Deno.args[2] ?? 3); rep++) {
  for (const [k, ex] of [["local", local], ["before", o], ["after", n]] as const) {
    let count = 0;
    const t = performance.now();
    await ex.runStreaming(flood, {
      write() {
        count++;
      },
    });
    rate[k].push(bytes / 1e6 / ((performance.now() - t) / 1000));
  }
}
for (const [k, v] of Object.entries(rate)) console.log("stdout", k, median(v).toFixed(0), "MB/s");
await o.close();
await n.close();
