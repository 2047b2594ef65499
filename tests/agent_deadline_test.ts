// AgentRpc's deadline for steps with a timeout: the agent ends such a step
// within its timeout plus its grace, so a client that has heard nothing by
// then (plus `timeoutMarginMs`) gives up with TransportError `timeout` instead
// of waiting for the idle timeout. The multi-host tests cut a real link
// (tests/hosts/faults_test.ts); here a frozen agent (SIGSTOP) stands for it.
// The time bounds are upper bounds with slack ("no hang"), not performance claims.

import { assert, assertEquals, assertLessOrEqual, assertRejects } from "@deps/assert";
import { CapabilitySet, CollectingSink, type LogLine, Step, TransportError } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { groupMembers, HAS_PROC, waitFor } from "./_procs.ts";
import { missing } from "./_prereq.ts";

const caps = CapabilitySet.of("test.*");
const SLACK_MS = 5_000;

Deno.test("AgentRpc: a frozen agent fails a step with a timeout by its timeout, grace and margin", async () => {
  if (missing([HAS_PROC, "/proc (Linux) to inspect the agent's processes"])) return;
  await using agent = await startAgentProcess(loopbackConfig());
  // The idle timeout alone would wait 45 s.
  await using client = new AgentRpc({ url: agent.url, timeoutMarginMs: 1_000 }, caps);
  const timeoutMs = 1_000;
  const killGraceMs = 200;
  const sink = new CollectingSink();
  const begun = performance.now();
  const running = client.runStreaming(
    Step.shell("test.frozen", "echo $$; sleep 300", { timeoutMs, killGraceMs }),
    sink,
  );
  assert(await waitFor(() => sink.lines.length > 0, 10_000));
  const pgid = Number(sink.lines[0].text);
  agent.child.kill("SIGSTOP");
  try {
    const error = await assertRejects(() => running, TransportError);
    assertEquals(error.kind, "timeout", error.message);
    assertEquals(error.host, client.host);
    assertLessOrEqual(performance.now() - begun, timeoutMs + killGraceMs + 1_000 + SLACK_MS);
  } finally {
    agent.child.kill("SIGCONT");
  }
  // Thawed, the agent ends the step (its timeout is long past) and serves the next one.
  assert(await waitFor(() => groupMembers(pgid).length === 0, 10_000), "no survivor");
  const next = await client.runStreaming(Step.shell("test.next", "echo ok"), new CollectingSink());
  assert(next.success);
});

Deno.test("AgentRpc: a slow sink past the deadline is not a lost host (data still flows)", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url, timeoutMarginMs: 500 }, caps);
  // The step ends at once; the sink takes 3 x 800 ms, far past 200 + 100 + 500 ms.
  const seen: string[] = [];
  const out = await client.runStreaming(
    Step.shell("test.slow-sink", "echo a; echo b; echo c; exit 4", {
      timeoutMs: 200,
      killGraceMs: 100,
    }),
    {
      write: async (line: LogLine) => {
        await new Promise((resolve) => setTimeout(resolve, 800));
        seen.push(line.text);
      },
    },
  );
  assertEquals(seen, ["a", "b", "c"]);
  assertEquals(out.exitCode, 4);
  assertEquals(out.timedOut, false);
});

Deno.test("AgentRpc: without a timeout, a step has no deadline (the idle timeout applies)", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url, timeoutMarginMs: 500 }, caps);
  // Quiet for 2 s, four times the margin: heartbeats keep it alive, no deadline trips.
  const out = await client.runStreaming(Step.shell("test.quiet", "sleep 2; echo done"), {
    write() {},
  });
  assertEquals(out.exitCode, 0);
});
