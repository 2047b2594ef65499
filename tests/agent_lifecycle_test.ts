// Acceptance 6 and 7 of the agent issue against the real agent process:
// graceful SIGTERM (running steps get their grace, every request audited,
// exit 0), and a client that never hangs on an agent that is down, killed
// mid-step or frozen.

import {
  assert,
  assertEquals,
  assertLess,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilityDenied, CapabilitySet, CollectingSink, Step, TransportError } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { groupMembers, HAS_PROC, hostGroupOf, sleepToken, waitFor } from "./_procs.ts";
import { missing } from "./_prereq.ts";
import { timeLimit } from "./_time_limit.ts";

const caps = CapabilitySet.of("test.*", "other.*");
const noProc = () => missing([HAS_PROC, "/proc (Linux) to inspect the agent's processes"]);

Deno.test(
  "acceptance 6: SIGTERM stops accepting, running steps get their grace, all audited, exit 0",
  timeLimit(30_000, async (_t, limit) => {
    if (noProc()) return;
    const agent = await startAgentProcess(loopbackConfig());
    const client = new AgentRpc({ url: agent.url }, caps);
    // Refused before the signal: audited too.
    await assertRejects(
      () => client.runStreaming(Step.shell("other.thing", "true"), { write() {} }),
      CapabilityDenied,
    );
    // Each step is found on the host by its token (in its own PID namespace, $$ is not its pid here).
    const tokens = { graceful: sleepToken(), stubborn: sleepToken(), plain: sleepToken() };
    const steps = {
      // Catches TERM, takes 1 s to finish cleanly within its 5 s grace.
      graceful: Step.shell(
        "test.graceful",
        `trap 'echo got TERM; sleep 1; echo bye; exit 7' TERM; echo up; sleep ${tokens.graceful} & wait; while :; do sleep 0.05; done`,
      ),
      // Ignores TERM: SIGKILL after its 500 ms grace.
      stubborn: Step.shell("test.stubborn", `trap '' TERM; echo up; sleep ${tokens.stubborn}`, {
        killGraceMs: 500,
      }),
      // Dies of TERM at once.
      plain: Step.shell("test.plain", `echo up; sleep ${tokens.plain}`),
    };
    const sinks = {
      graceful: new CollectingSink(),
      stubborn: new CollectingSink(),
      plain: new CollectingSink(),
    };
    const names = ["graceful", "stubborn", "plain"] as const;
    const running = names.map((name) => client.runStreaming(steps[name], sinks[name]));
    assert(
      await waitFor(() => names.every((n) => hostGroupOf(tokens[n]) !== null), 10_000),
      "the steps started",
    );
    const pgids = names.map((n) => hostGroupOf(tokens[n])!);
    // A stubborn step that never gets its SIGKILL would keep this test for its whole sleep.
    limit.addEventListener("abort", () => {
      for (const pgid of pgids) {
        try {
          Deno.kill(-pgid, "SIGKILL");
        } catch {
          // Gone already.
        }
      }
      void agent[Symbol.asyncDispose]();
    });

    agent.child.kill("SIGTERM");
    // New connections are refused at once, while the steps are in their grace.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const late = new AgentRpc({ url: agent.url }, caps);
    const refused = await assertRejects(
      () => late.runStreaming(Step.shell("test.late", "true"), { write() {} }),
      TransportError,
    );
    assertEquals(refused.kind, "unreachable");
    await late.close();

    const [graceful, stubborn, plain] = await Promise.all(running);
    assertEquals(graceful.exitCode, 7);
    assert(graceful.cancelled);
    // (The shell may also report its killed `sleep` on stderr.)
    assertEquals(sinks.graceful.text("stdout").split("\n").slice(1), ["got TERM", "bye"]);
    for (const name of names) assertEquals(sinks[name].lines[0].text, "up");
    assertEquals(stubborn.signal, "SIGKILL");
    assertEquals(plain.signal, "SIGTERM");
    for (const pgid of pgids) {
      assert(
        await waitFor(() => groupMembers(pgid).length === 0, 2000),
        `group ${pgid} is gone: ${
          groupMembers(pgid).map((pid) =>
            Deno.readTextFileSync(`/proc/${pid}/cmdline`).replaceAll("\0", " ")
          ).join("; ")
        }`,
      );
    }

    const status = await agent.child.status;
    assertEquals(status.code, 0, agent.output());
    assertStringIncludes(agent.output(), "SIGTERM: shutting down (running steps: 3)");
    const runs = agent.auditLines().filter((l) =>
      l.endpoint === "POST /v1/run" && l.event !== "start"
    );
    assertEquals(runs.length, 4, "one line for every request (and a start line for each run)");
    assertEquals(runs[0].decision, "denied");
    const byAction = Object.fromEntries(runs.slice(1).map((l) => [l.action, l]));
    assertEquals(byAction["test.graceful"].exitCode, 7);
    assertEquals(byAction["test.stubborn"].signal, "SIGKILL");
    assertEquals(byAction["test.plain"].signal, "SIGTERM");
    for (const line of runs.slice(1)) {
      assertEquals(line.cancelled, true);
      assertEquals(line.reason, "agent shutting down");
    }
    await client.close();
    await agent.stop();
    await Deno.remove(agent.dir, { recursive: true });
  }),
);

Deno.test("acceptance 7: an agent that is down is a TransportError (unreachable)", async () => {
  const agent = await startAgentProcess(loopbackConfig());
  const url = agent.url;
  // SIGINT stops it as SIGTERM does.
  assertEquals((await agent.stop("SIGINT")).code, 0);
  assertStringIncludes(agent.output(), "SIGINT: shutting down (running steps: 0)");
  await Deno.remove(agent.dir, { recursive: true });
  await using client = new AgentRpc({ url }, caps);
  const error = await assertRejects(
    () => client.runStreaming(Step.shell("test.x", "true"), { write() {} }),
    TransportError,
  );
  assertEquals(error.kind, "unreachable");
  assertStringIncludes(error.message, "connection refused");
  await assertRejects(() => client.remoteCapabilities(), TransportError, "connection refused");
});

Deno.test("acceptance 7: an agent killed mid-step is a TransportError at once, never a hang", async () => {
  if (noProc()) return;
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url, idleTimeoutMs: 120_000 }, caps);
  const sink = new CollectingSink();
  const token = sleepToken();
  const running = client.runStreaming(Step.shell("test.long", `sleep ${token}`), sink);
  assert(await waitFor(() => hostGroupOf(token) !== null, 10_000));
  const pgid = hostGroupOf(token)!;
  const killed = performance.now();
  agent.child.kill("SIGKILL");
  const error = await assertRejects(() => running, TransportError);
  const took = performance.now() - killed;
  assertEquals(error.kind, "connection_lost");
  // Far below the 120 s idle timeout: the broken connection itself was noticed.
  assertLess(took, 10_000);
  // The agent died without its chance to clean up: the test sweeps the orphan.
  for (const pid of groupMembers(pgid)) Deno.kill(pid, "SIGKILL");
});

Deno.test("acceptance 7: a frozen agent is noticed by the idle timeout; heartbeats keep quiet steps alive", async () => {
  if (noProc()) return;
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url, idleTimeoutMs: 1500 }, caps);
  // Quiet for 3 s, twice the idle timeout: the agent's heartbeats carry it.
  const quiet = await client.runStreaming(Step.shell("test.quiet", "sleep 3; echo done"), {
    write() {},
  });
  assertEquals(quiet.exitCode, 0);

  const sink = new CollectingSink();
  const token = sleepToken();
  const running = client.runStreaming(Step.shell("test.long", `sleep ${token}`), sink);
  assert(await waitFor(() => hostGroupOf(token) !== null, 10_000));
  const pgid = hostGroupOf(token)!;
  agent.child.kill("SIGSTOP");
  try {
    const error = await assertRejects(() => running, TransportError);
    assertEquals(error.kind, "connection_lost");
    assertStringIncludes(error.message, "no data from the agent");
  } finally {
    agent.child.kill("SIGCONT");
  }
  // Thawed, the agent sees the closed connection and kills the step's group.
  assert(await waitFor(() => groupMembers(pgid).length === 0, 10_000), "no survivor");
});

Deno.test(
  "acceptance 6: SIGTERM with a stalled reader still ends the step, audits it and exits 0",
  timeLimit(30_000, async () => {
    if (noProc()) return;
    const agent = await startAgentProcess(loopbackConfig());
    const client = new AgentRpc({ url: agent.url }, caps);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let first: string | undefined;
    const token = `flood-${crypto.randomUUID()}`;
    const running = client.runStreaming(Step.shell("test.flood", `exec yes ${token}`), {
      write(line) {
        first ??= line.text;
        return released;
      },
    }).then((out) => out, (error) => error);
    assert(await waitFor(() => first !== undefined && hostGroupOf(token) !== null, 10_000));
    const pgid = hostGroupOf(token)!;
    await new Promise((resolve) => setTimeout(resolve, 300));
    agent.child.kill("SIGTERM");
    // The reader never reads during the shutdown: the agent neither waits on it nor loses its audit.
    const status = await agent.child.status;
    assertEquals(status.code, 0, agent.output());
    assertEquals(groupMembers(pgid), []);
    const line = agent.auditLines().find((l) => l.action === "test.flood" && l.event === "end")!;
    assertEquals(line.cancelled, true);
    assertEquals(line.reason, "agent shutting down");
    release();
    const result = await running;
    // Whatever the kernel still held arrives; the end is an exit event or a lost connection.
    assert(
      (result instanceof TransportError && result.kind === "connection_lost") ||
        (!(result instanceof Error) && result.cancelled),
      String(result),
    );
    await client.close();
    await agent.stop();
    await Deno.remove(agent.dir, { recursive: true });
  }),
);
