import { assert, assertEquals, assertFalse, assertInstanceOf, assertLess } from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { Step } from "../step/mod.ts";
import { LocalExec } from "../transports/local.ts";
import { CapabilityDenied } from "./errors.ts";
import { fanOut } from "./fan_out.ts";
import { CollectingSink } from "./sinks.ts";
import type { Executor } from "./types.ts";

const caps = CapabilitySet.of("fan.*");
const hosts = (...names: string[]) => names.map((host) => new LocalExec(caps, { host }));

function collectors() {
  const sinks = new Map<string, CollectingSink>();
  return {
    sinks,
    sinkFor: (e: Executor) => {
      const sink = new CollectingSink();
      sinks.set(e.host, sink);
      return sink;
    },
  };
}

Deno.test("fanOut runs the step on every host, each with its own sink, results in order", async () => {
  const { sinks, sinkFor } = collectors();
  const result = await fanOut(hosts("a", "b", "c"), Step.shell("fan.hello", "echo hi; exit 0"), {
    sinkFor,
  });
  assert(result.ok);
  assertEquals(result.results.map((r) => [r.host, r.status, r.output?.exitCode]), [
    ["a", "ran", 0],
    ["b", "ran", 0],
    ["c", "ran", 0],
  ]);
  assertEquals([...sinks.keys()].sort(), ["a", "b", "c"]);
  for (const sink of sinks.values()) assertEquals(sink.text("stdout"), "hi");
});

Deno.test("run-to-completion: one host's failure or error does not stop the others", async () => {
  const executors: Executor[] = [
    ...hosts("ok-1"),
    new LocalExec(CapabilitySet.of("other.*"), { host: "denied" }),
    ...hosts("ok-2"),
  ];
  const { sinkFor } = collectors();
  const result = await fanOut(executors, Step.shell("fan.check", "exit 0"), { sinkFor });
  assertFalse(result.ok);
  assertEquals(result.results.map((r) => r.status), ["ran", "error", "ran"]);
  assertInstanceOf(result.results[1].error, CapabilityDenied);
  assertEquals(result.failures.map((f) => f.host), ["denied"]);
});

Deno.test("concurrency limits how many hosts run at once", async () => {
  const dir = await Deno.makeTempDir();
  // Each run records the number of runs in flight when it starts.
  const script = `mkdir ${dir}/$$; ls ${dir} | wc -l; sleep 0.2; rmdir ${dir}/$$`;
  const { sinks, sinkFor } = collectors();
  const result = await fanOut(
    hosts("a", "b", "c", "d", "e", "f"),
    Step.shell("fan.limit", script),
    {
      concurrency: 2,
      sinkFor,
    },
  );
  assert(result.ok);
  const inFlight = [...sinks.values()].map((s) => Number(s.text("stdout").trim()));
  assert(inFlight.every((n) => n <= 2), `in flight: ${inFlight}`);
  assert(inFlight.some((n) => n === 2), `never ran two at once: ${inFlight}`);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("failFast cancels the running hosts and skips the rest", async () => {
  const dir = await Deno.makeTempDir();
  // The first host to start fails; any other sleeps until it is cancelled.
  const step = Step.shell(
    "fan.rollout",
    `if mkdir ${dir}/first 2>/dev/null; then exit 3; else sleep 30; fi`,
    { killGraceMs: 200 },
  );
  const { sinkFor } = collectors();
  const started = performance.now();
  const result = await fanOut(hosts("a", "b", "c", "d"), step, {
    concurrency: 2,
    failFast: true,
    sinkFor,
  });
  assertLess(performance.now() - started, 10_000, "the sleeping host must have been cancelled");
  assertFalse(result.ok);
  const ran = result.results.filter((r) => r.status === "ran");
  assertEquals(ran.length, 2);
  assertEquals(ran.map((r) => r.output?.exitCode ?? "cancelled").sort(), [3, "cancelled"].sort());
  assert(ran.some((r) => r.output?.cancelled));
  assertEquals(result.results.slice(2).map((r) => r.status), ["skipped", "skipped"]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("failFast also stops on an error (a denied host)", async () => {
  const { sinkFor } = collectors();
  const executors: Executor[] = [
    new LocalExec(CapabilitySet.of("other.*"), { host: "denied" }),
    ...hosts("slow", "later"),
  ];
  const result = await fanOut(
    executors,
    Step.shell("fan.rollout", "sleep 30", { killGraceMs: 200 }),
    {
      concurrency: 2,
      failFast: true,
      sinkFor,
    },
  );
  assertEquals(result.results.map((r) => r.status), ["error", "ran", "skipped"]);
  assert(result.results[1].output?.cancelled);
});

Deno.test("an aborted signal skips every host", async () => {
  const result = await fanOut(hosts("a", "b"), Step.shell("fan.x", "true"), {
    signal: AbortSignal.abort(),
    sinkFor: collectors().sinkFor,
  });
  assertEquals(result.results.map((r) => r.status), ["skipped", "skipped"]);
  assertFalse(result.ok);
});
