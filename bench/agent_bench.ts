// ops-agent benchmarks (issue: ops-agent and AgentRpc).
//
// 1. Per-step overhead: AgentRpc through a real agent process on loopback
//    (deno run -P=agent, loopback identity) against LocalExec, same step
//    (`true`), alternating, median of N runs. Target: ≤ 3 ms above LocalExec.
// 2. Line throughput: 1 GiB of 100-byte lines through the agent into a
//    counting sink, against LocalExec into the same sink. Target ≥ 0.5×.
//    The agent's RSS is sampled from /proc/<pid>/status while it streams.
//
// Run: deno run -A bench/agent_bench.ts [--runs 300] [--bytes 1073741824] [--reps 3]

import { parseArgs } from "@deps/cli";
import { CapabilitySet, LocalExec, type LogLine, type LogSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { startAgentProcess } from "../tests/_agent_process.ts";
import { alternate, machine, median, ms, percentile } from "./_stats.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "300" },
    bytes: { type: "string", default: String(2 ** 30) },
    reps: { type: "string", default: "3" },
  },
});
const runs = Number(values.runs);
const bytes = Number(values.bytes);
const reps = Number(values.reps);

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

class SkipThroughput extends Error {}

class CountingSink implements LogSink {
  count = 0;
  chars = 0;
  write(line: LogLine): void {
    this.count++;
    this.chars += line.text.length;
  }
}

function rssKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN);
}

const caps = CapabilitySet.of("bench.*");
const agent = await startAgentProcess(CONFIG);
// The same agent with every step in PID and mount namespaces of its own (issue 13).
const isolatedAgent = Deno.build.os === "linux"
  ? await startAgentProcess(
    CONFIG.replace("[identity]", 'step_isolation = "namespace"\n\n[identity]'),
  )
  : null;
const isolated = isolatedAgent ? new AgentRpc({ url: isolatedAgent.url }, caps) : null;
const local = new LocalExec(caps);
const remote = new AgentRpc({ url: agent.url }, caps);
const fmt = (n: number) => n.toFixed(3);
const result: Record<string, unknown> = { machine: machine(), runs, bytes, reps };

try {
  // 1. Per-step overhead.
  const exec = Step.exec("bench.true", ["true"]);
  const shell = Step.shell("bench.true", "true");
  const sink = { write() {} };
  const samples = await alternate({
    local: () => local.runStreaming(exec, sink),
    agent: () => remote.runStreaming(exec, sink),
    localShell: () => local.runStreaming(shell, sink),
    agentShell: () => remote.runStreaming(shell, sink),
    ...(isolated ? { agentIsolated: () => isolated.runStreaming(exec, sink) } : {}),
  }, { runs, warmup: 20 });
  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
  result.overhead = {
    execLocalMs: m.local,
    execAgentMs: m.agent,
    execAboveMs: m.agent - m.local,
    shellLocalMs: m.localShell,
    shellAgentMs: m.agentShell,
    shellAboveMs: m.agentShell - m.localShell,
    agentP90Ms: percentile(samples.agent, 90),
    ...(isolated
      ? { execIsolatedMs: m.agentIsolated, isolationMs: m.agentIsolated - m.agent }
      : {}),
  };
  console.log(`per-step overhead, median of ${runs} (alternating, 20 warm-up rounds):`);
  console.log(
    `  exec true   LocalExec ${ms(m.local)}  agent ${ms(m.agent)}  above ${ms(m.agent - m.local)}`,
  );
  console.log(
    `  shell true  LocalExec ${ms(m.localShell)}  agent ${ms(m.agentShell)}  above ${
      ms(m.agentShell - m.localShell)
    }`,
  );
  if (isolated) {
    console.log(
      `  exec true   isolated agent ${ms(m.agentIsolated)}  isolation costs ${
        ms(m.agentIsolated - m.agent)
      }`,
    );
  }

  // 2. Throughput, with the agent's RSS.
  if (bytes <= 0) throw new SkipThroughput();
  const big = Step.shell("bench.lines", `yes "$(printf '%099d' 0)" | head -c ${bytes}`);
  const rates: { local: number[]; agent: number[] } = { local: [], agent: [] };
  let rssBase = rssKiB(agent.pid);
  let rssMax = rssBase;
  for (let rep = 0; rep < reps; rep++) {
    for (const side of ["local", "agent"] as const) {
      const counter = new CountingSink();
      rssBase = Math.min(rssBase, rssKiB(agent.pid));
      const sampler = setInterval(() => (rssMax = Math.max(rssMax, rssKiB(agent.pid))), 50);
      const started = performance.now();
      const out = await (side === "local" ? local : remote).runStreaming(big, counter);
      const seconds = (performance.now() - started) / 1000;
      clearInterval(sampler);
      if (out.exitCode !== 0 || counter.chars + counter.count < bytes - 100) {
        throw new Error(
          `${side}: incomplete output (${counter.count} lines, exit ${out.exitCode})`,
        );
      }
      rates[side].push(bytes / seconds / 1e6);
    }
  }
  const localRate = median(rates.local);
  const agentRate = median(rates.agent);
  result.throughput = {
    localMBps: localRate,
    agentMBps: agentRate,
    ratio: agentRate / localRate,
    agentRssBaseMiB: rssBase / 1024,
    agentRssMaxMiB: rssMax / 1024,
  };
  console.log(`line throughput, ${bytes} bytes of 100-byte lines, median of ${reps}:`);
  console.log(
    `  LocalExec ${fmt(localRate)} MB/s  agent ${fmt(agentRate)} MB/s  ratio ${
      fmt(agentRate / localRate)
    }`,
  );
  console.log(
    `  agent RSS: ${fmt(rssBase / 1024)} MiB before, at most ${
      fmt(rssMax / 1024)
    } MiB while streaming`,
  );
} catch (error) {
  if (!(error instanceof SkipThroughput)) throw error;
} finally {
  await remote.close();
  await agent.stop();
  await isolated?.close();
  await isolatedAgent?.stop();
  await Deno.remove(agent.dir, { recursive: true }).catch(() => {});
}
console.log(JSON.stringify(result));
