// Fan-out benchmark (issue: several real hosts, fan-out, Sando and Bento).
//
// One short step to every host of the test fleet at once (`fanOut`) against
// the same step to one host at a time, alternating (fan-out, then each host
// alone, in a rotating order), median of N rounds. Target: the fan-out's wall
// time ≤ 1.5 × the slowest single host's. Measured through AgentRpc (each
// host's ops-agent) and through SshExec (each host's sshd, warm masters), for
// an empty step (`echo ok`: nothing but overhead), a 20 ms and a 100 ms one.
//
// The four hosts are namespaces of one machine: they share its cores with
// each other and with the controller, which real hosts do not. So the
// benchmark also reports CPU time (from /proc): the controller's per host of
// a fan-out (what fanning out costs the caller), and, through the agents, all
// CPU one fan-out takes (controller, agents, steps) and the floor that sets on
// this machine's cores.
//
// It needs the namespaces of the multi-host tests: run as root, it builds its
// own test network and fleet (tests/hosts/_controller.ts, _fleet.ts) and runs
// itself inside the controller's namespace, so no packet crosses the root
// namespace's network. Without root (or iproute2, sshd, rsync, nsenter) it
// prints why and exits 0.
//
// Run: deno run -A bench/fanout_bench.ts [--runs 200]

import { parseArgs } from "@deps/cli";
import { CapabilitySet, type Executor, fanOut, type LogSink, Step } from "../mod.ts";
import { runInTestNetwork, testNetworkPrerequisites } from "../tests/hosts/_controller.ts";
import { Fleet } from "../tests/hosts/_fleet.ts";
import { testNetwork } from "../tests/hosts/_testnet.ts";
import { alternate, machine, median, ms, percentile } from "./_stats.ts";

const HOSTS = ["canary", "prod", "mac", "plain"];

const { values } = parseArgs({
  options: { runs: { type: "string", default: "200" }, warmup: { type: "string", default: "20" } },
});
/** Rounds for the empty step; the 20 ms step gets half as many, the 100 ms one a quarter. */
const runs = Number(values.runs);
const warmup = Number(values.warmup);

const net = testNetwork();
if (net === null) {
  // The outer process: build the network, rerun this file as its controller.
  const absent = testNetworkPrerequisites().filter(([met]) => !met).map(([, what]) => what);
  if (absent.length) {
    console.log(`fan-out benchmark skipped: it needs ${absent.join(", ")}`);
    Deno.exit(0);
  }
  const self = new URL(import.meta.url).pathname;
  Deno.exit(
    await runInTestNetwork(HOSTS, [Deno.execPath(), "run", "--allow-all", self, ...Deno.args], {
      log: () => {},
    }),
  );
}

const quiet: LogSink = { write() {} };
const caps = CapabilitySet.of("fleet.*");
const TICKS_PER_SECOND = 100; // Linux's USER_HZ

/** CPU milliseconds `pid` (with its waited-for children) has used, from /proc. */
function cpuMs(pid: number | "self"): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // utime, stime, cutime, cstime
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/** Fan-out vs each host alone, alternating; wall times in ms. */
async function measure(executors: Executor[], step: Step, rounds: number, agentPids: number[]) {
  const fan: number[] = [];
  const single = new Map<string, number[]>(executors.map((e) => [e.host, []]));
  const ratio: number[] = [];
  let controllerCpu = 0;
  let allCpu = 0;
  const check = (host: string, success: boolean) => {
    if (!success) throw new Error(`${host}: the step failed`);
  };
  for (let round = -warmup; round < rounds; round++) {
    const self0 = cpuMs("self");
    const agents0 = agentPids.reduce((sum, pid) => sum + cpuMs(pid), 0);
    let started = performance.now();
    const result = await fanOut(executors, step, { sinkFor: () => quiet });
    const fanMs = performance.now() - started;
    if (round >= 0) {
      const self = cpuMs("self") - self0;
      controllerCpu += self;
      allCpu += self + agentPids.reduce((sum, pid) => sum + cpuMs(pid), 0) - agents0;
    }
    if (!result.ok) throw new Error(`fan-out failed: ${JSON.stringify(result.failures)}`);
    let slowest = 0;
    // Rotate the order so that no host is always first (cold) or last.
    for (let i = 0; i < executors.length; i++) {
      const exec = executors[(i + round + warmup) % executors.length];
      started = performance.now();
      const out = await exec.runStreaming(step, quiet);
      const took = performance.now() - started;
      check(exec.host, out.success);
      if (round >= 0) single.get(exec.host)!.push(took);
      slowest = Math.max(slowest, took);
    }
    if (round >= 0) {
      fan.push(fanMs);
      ratio.push(fanMs / slowest);
    }
  }
  const singles = Object.fromEntries([...single].map(([host, s]) => [host, median(s)]));
  const slowestHost = Object.entries(singles).sort((a, b) => b[1] - a[1])[0];
  const cpuPerFan = allCpu / rounds;
  return {
    controllerCpuPerHostMs: controllerCpu / rounds / executors.length,
    ...(agentPids.length
      ? { cpuPerFanMs: cpuPerFan, cpuFloorMs: cpuPerFan / navigator.hardwareConcurrency }
      : {}),
    fanMedianMs: median(fan),
    fanP90Ms: percentile(fan, 90),
    singleMedianMs: singles,
    slowestHost: slowestHost[0],
    slowestSingleMedianMs: slowestHost[1],
    ratio: median(fan) / slowestHost[1],
    perRoundRatioMedian: median(ratio),
  };
}

await using fleet = await Fleet.start(net);
const result: Record<string, unknown> = { machine: machine(), runs, warmup, hosts: HOSTS };
const transports: Record<string, Executor[]> = {
  agent: HOSTS.map((h) => fleet.rpc(h, "alice", caps)),
  ssh: HOSTS.map((h) => fleet.ssh(h, caps)),
};
/** SshExec names hosts by address. */
const names = new Map(HOSTS.map((h) => [fleet.host(h).address, h]));
const agentPids = HOSTS.map((h) => fleet.host(h).agent.pid);
const steps: [string, Step, number][] = [
  ["empty", Step.shell("fleet.short", "echo ok"), runs],
  ["20ms", Step.shell("fleet.short", "sleep 0.02; echo ok"), Math.ceil(runs / 2)],
  ["100ms", Step.shell("fleet.short", "sleep 0.1; echo ok"), Math.ceil(runs / 4)],
];
const cpu = (v: number) => `${v.toFixed(2)} ms`;
for (const [stepName, step, rounds] of steps) {
  console.log(
    `fan-out of \`${step.script}\` to ${HOSTS.length} hosts, ${rounds} rounds (+${warmup} warm-up):`,
  );
  for (const [name, executors] of Object.entries(transports)) {
    const r = await measure(executors, step, rounds, name === "agent" ? agentPids : []);
    result[`${name}/${stepName}`] = r;
    const singles = Object.entries(r.singleMedianMs).map(([h, v]) =>
      `${names.get(h) ?? h} ${ms(v)}`
    )
      .join(", ");
    console.log(
      `  ${name.padEnd(5)} fan-out ${ms(r.fanMedianMs)} (p90 ${ms(r.fanP90Ms)}); ` +
        `alone: ${singles}; ratio to the slowest (${names.get(r.slowestHost) ?? r.slowestHost}) ${
          r.ratio.toFixed(3)
        } ` +
        `(per-round median ${r.perRoundRatioMedian.toFixed(3)}; target ≤ 1.5)`,
    );
    console.log(
      `        controller CPU per host ${cpu(r.controllerCpuPerHostMs)}` +
        (r.cpuPerFanMs === undefined ? "" : `; all CPU per fan-out ${cpu(r.cpuPerFanMs)}, ` +
          `i.e. at least ${cpu(r.cpuFloorMs!)} on ${navigator.hardwareConcurrency} cores`),
    );
  }
}
// fanOut's own cost: against a bare Promise.all of the same runs, alternating.
const bare = await alternate({
  fanOut: () => fanOut(transports.agent, steps[0][1], { sinkFor: () => quiet }),
  promiseAll: () => Promise.all(transports.agent.map((e) => e.runStreaming(steps[0][1], quiet))),
}, { runs, warmup });
result.fanOutVsPromiseAll = {
  fanOutMs: median(bare.fanOut),
  promiseAllMs: median(bare.promiseAll),
};
console.log(
  `fanOut vs a bare Promise.all of runStreaming (agent, empty step, ${runs} alternating rounds): ` +
    `${ms(median(bare.fanOut))} vs ${ms(median(bare.promiseAll))}`,
);
console.log(JSON.stringify(result));
