// `deno task demo`: ops-exec end to end on this machine, with nothing to
// configure. A capability set grants the demo's actions; a step streams its
// output through a console sink; an ungranted action is refused before any
// process starts; the host is observed.

import { CapabilityDenied, CapabilitySet, ConsoleSink, LocalExec, Step } from "../mod.ts";

const caps = CapabilitySet.of("demo.*", "observe");
await using exec = new LocalExec(caps, { host: "local" });
console.log(`granted: ${caps.toJSON().join(", ")}\n`);

console.log("1. a gated step, output streamed as it runs:");
const build = Step.shell(
  "demo.build",
  'set -e; for part in fetch compile link; do echo "$part ok"; sleep 0.1; done; echo "1 warning" >&2',
  { timeoutMs: 10_000, label: "build" },
);
const out = await exec.runStreaming(build, new ConsoleSink({ host: exec.host }));
console.log(`   -> exit ${out.exitCode} in ${out.durationMs.toFixed(0)} ms\n`);

console.log("2. an action the set does not grant never starts:");
try {
  await exec.runStreaming(
    Step.shell("release.publish", "echo this never runs"),
    new ConsoleSink({ host: exec.host }),
  );
  throw new Error("the denied step ran: this is a bug");
} catch (error) {
  if (!(error instanceof CapabilityDenied)) throw error;
  console.log(`   -> refused (${error.scope}): ${error.message}\n`);
}

console.log("3. observing the host:");
const facts = await exec.observe();
console.log(
  `   -> ${facts.hostname}: ${facts.os}/${facts.arch}, kernel ${facts.kernel}, ` +
    `load ${facts.loadAverage.map((n) => n.toFixed(2)).join(" ")}, ` +
    `${(facts.memory.availableBytes / 2 ** 30).toFixed(1)} of ${
      (facts.memory.totalBytes / 2 ** 30).toFixed(1)
    } GiB free, up ${(facts.uptimeSeconds / 3600).toFixed(1)} h`,
);
