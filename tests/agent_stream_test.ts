// Acceptance 3 and 4 of the agent issue against the real agent process:
// streaming (complete, ordered, backpressure that keeps the agent's memory
// flat) and cancellation (abort, a killed client, timeouts) that leaves no
// process of the step alive on the agent host.

import { assert, assertEquals, assertLess } from "@deps/assert";
import { CapabilitySet, CollectingSink, type LogLine, type LogSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, rssBytes, startAgentProcess } from "./_agent_process.ts";
import { groupMembers, HAS_PROC, isAlive, waitFor } from "./_procs.ts";
import { missing } from "./_prereq.ts";
import { timeLimit } from "./_time_limit.ts";

const caps = CapabilitySet.of("test.*");
const noProc = () => missing([HAS_PROC, "/proc (Linux) to inspect the agent's processes"]);

/** Checks that lines arrive numbered 1..n, with consecutive seq. */
class NumberedSink implements LogSink {
  next = 1;
  bad: string | null = null;
  write(line: LogLine): void {
    if (this.bad) return;
    if (line.stream !== "stdout" || line.text !== String(this.next) || line.seq !== this.next - 1) {
      this.bad = `line ${this.next}: got ${JSON.stringify(line)}`;
    }
    this.next++;
  }
}

Deno.test(
  "acceptance 3: 100 concurrent steps × 100 000 numbered lines arrive complete and in order",
  timeLimit(60_000, async () => {
    await using agent = await startAgentProcess(loopbackConfig({ maxConcurrent: 128 }));
    await using client = new AgentRpc({ url: agent.url }, caps);
    const step = Step.exec("test.count", ["seq", "1", "100000"]);
    const sinks = Array.from({ length: 100 }, () => new NumberedSink());
    const outs = await Promise.all(sinks.map((sink) => client.runStreaming(step, sink)));
    for (const [i, out] of outs.entries()) {
      assertEquals(sinks[i].bad, null);
      assertEquals(sinks[i].next - 1, 100_000, `step ${i} delivered every line`);
      assertEquals(out.exitCode, 0);
      assertEquals(out.lines, { stdout: 100_000, stderr: 0 });
    }
    const runs = agent.auditLines().filter((line) =>
      line.endpoint === "POST /v1/run" && line.event === "end"
    );
    assertEquals(runs.length, 100);
    assert(runs.every((line) => line.exitCode === 0 && line.decision === "allowed"));
  }),
);

Deno.test("acceptance 3: interleaved stdout/stderr keep one seq order; long and odd lines survive", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url }, caps);
  const sink = new CollectingSink();
  const script = [
    "i=0; while [ $i -lt 200 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done",
    "printf 'quote \" back\\\\slash tab\\t ü €\\n'",
    "head -c 2500000 /dev/zero | tr '\\0' x; echo",
    "printf 'bad \\377 utf8\\n'",
    "printf 'no newline at the end'",
  ].join("; ");
  const out = await client.runStreaming(Step.shell("test.mixed", script), sink);
  assertEquals(out.exitCode, 0);
  assertEquals(sink.lines.map((l) => l.seq), sink.lines.map((_, i) => i));
  const stdout = sink.lines.filter((l) => l.stream === "stdout").map((l) => l.text);
  const stderr = sink.lines.filter((l) => l.stream === "stderr").map((l) => l.text);
  assertEquals(stderr, Array.from({ length: 200 }, (_, i) => `err${i}`));
  assertEquals(stdout.slice(0, 200), Array.from({ length: 200 }, (_, i) => `out${i}`));
  assertEquals(stdout[200], 'quote " back\\slash tab\t ü €');
  // 2 500 000 x's: split into 1 MiB pieces, never buffered whole.
  assertEquals(stdout.slice(201, 204).map((l) => l.length), [1048576, 1048576, 402848]);
  assertEquals(stdout[204], "bad \ufffd utf8");
  assertEquals(stdout[205], "no newline at the end");
  assertEquals(out.lines, { stdout: 206, stderr: 200 });
});

Deno.test(
  "acceptance 3: a stalled reader stalls the step; the agent's memory stays flat over 1 GiB",
  timeLimit(90_000, async () => {
    if (noProc()) return;
    await using agent = await startAgentProcess(loopbackConfig());
    await using client = new AgentRpc({ url: agent.url }, caps);
    const bytes = 2 ** 30;
    const step = Step.shell("test.flood", `yes "$(printf '%099d' 0)" | head -c ${bytes}`);
    // Warm the agent up (JIT, heap) so the baseline is its steady state.
    await client.runStreaming(Step.shell("test.warm", "seq 1 200000"), { write() {} });
    const baseline = rssBytes(agent.pid);
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    let lines = 0;
    let chars = 0;
    const sink: LogSink = {
      write(line) {
        lines++;
        chars += line.text.length;
        // The first line holds the reader for 5 s: nothing is read meanwhile.
        if (lines === 1) return released;
      },
    };
    let stalledMax = 0;
    let overallMax = 0;
    let stalled = true;
    const sampler = setInterval(() => {
      const rss = rssBytes(agent.pid);
      overallMax = Math.max(overallMax, rss);
      if (stalled) stalledMax = Math.max(stalledMax, rss);
    }, 50);
    const running = client.runStreaming(step, sink);
    await new Promise((resolve) => setTimeout(resolve, 5000));
    stalled = false;
    release();
    const out = await running;
    clearInterval(sampler);
    assertEquals(out.exitCode, 0);
    assertEquals(lines, Math.ceil(bytes / 100));
    assertEquals(chars + lines - 1, bytes, "every byte arrived (the last line has no newline)");
    const MiB = 2 ** 20;
    console.log(
      `agent RSS: baseline ${(baseline / MiB).toFixed(1)} MiB, stalled max +${
        ((stalledMax - baseline) / MiB).toFixed(1)
      } MiB, streaming max +${((overallMax - baseline) / MiB).toFixed(1)} MiB`,
    );
    // Without backpressure the agent would hold most of the GiB within 5 s.
    assertLess(
      stalledMax - baseline,
      32 * MiB,
      `RSS while stalled: +${(stalledMax - baseline) / MiB} MiB`,
    );
    // While streaming, only the garbage of a few batches comes and goes.
    assertLess(
      overallMax - baseline,
      256 * MiB,
      `RSS while streaming: +${(overallMax - baseline) / MiB} MiB`,
    );
  }),
);

/** A step that prints its process group id, then waits with two children in its group. */
const SLEEPERS = Step.shell("test.sleep", "echo $$; sleep 300 & sleep 300 & wait", {
  killGraceMs: 1000,
});

async function firstLine(sink: { lines: LogLine[] }): Promise<number> {
  assert(await waitFor(() => sink.lines.length > 0, 10_000), "the step printed its pgid");
  return Number(sink.lines[0].text);
}

Deno.test("acceptance 4: aborting the client's signal kills the step's whole process group", async () => {
  if (noProc()) return;
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url }, caps);
  const sink = new CollectingSink();
  const abort = new AbortController();
  const running = client.runStreaming(SLEEPERS, sink, { signal: abort.signal });
  const pgid = await firstLine(sink);
  assert(await waitFor(() => groupMembers(pgid).length === 3, 5000), "sh and two sleeps run");
  abort.abort();
  const out = await running;
  assert(out.cancelled);
  assertEquals(out.success, false);
  assert(await waitFor(() => groupMembers(pgid).length === 0, 10_000), "no survivor");
  assert(
    await waitFor(() => agent.auditLines().some((l) => l.cancelled === true), 5000),
    "the cancelled run is audited",
  );
  const line = agent.auditLines().find((l) => l.cancelled === true)!;
  assertEquals(line.reason, "the client went away");

  // A signal aborted before the call starts nothing at all.
  const before = agent.auditLines().length;
  const early = await client.runStreaming(SLEEPERS, sink, { signal: AbortSignal.abort() });
  assert(early.cancelled);
  assertEquals(agent.auditLines().length, before);
});

Deno.test("acceptance 4: killing the client process kills the step's process group", async () => {
  if (noProc()) return;
  await using agent = await startAgentProcess(loopbackConfig());
  const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "client-" });
  const script = `${dir}/client.ts`;
  await Deno.writeTextFile(
    script,
    `import { CapabilitySet, Step } from ${
      JSON.stringify(new URL("../mod.ts", import.meta.url).href)
    };
import { AgentRpc } from ${JSON.stringify(new URL("../transports/rpc.ts", import.meta.url).href)};
const client = new AgentRpc({ url: ${JSON.stringify(agent.url)} }, CapabilitySet.of("test.*"));
await client.runStreaming(Step.shell("test.sleep", "echo $$; sleep 300 & sleep 300 & wait"), {
  write(line) { console.log(line.text); },
});
`,
  );
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", new URL("../deno.json", import.meta.url).pathname, script],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.getReader();
  const { value } = await reader.read();
  const pgid = Number(new TextDecoder().decode(value).trim().split("\n")[0]);
  assert(pgid > 1, `pgid ${pgid}`);
  assert(await waitFor(() => groupMembers(pgid).length === 3, 5000));
  child.kill("SIGKILL");
  await child.status;
  reader.releaseLock();
  await child.stdout.cancel();
  assert(await waitFor(() => groupMembers(pgid).length === 0, 10_000), "no survivor");
  assert(await waitFor(() => agent.auditLines().some((l) => l.cancelled === true), 5000));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("acceptance 4: step timeouts work through the agent", async () => {
  if (noProc()) return;
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url }, caps);
  const sink = new CollectingSink();
  const step = Step.shell("test.slow", "echo $$; sleep 300 & sleep 300", {
    timeoutMs: 500,
    killGraceMs: 500,
  });
  const out = await client.runStreaming(step, sink);
  assert(out.timedOut);
  assertEquals(out.cancelled, false);
  assertEquals(out.signal, "SIGTERM");
  const pgid = Number(sink.lines[0].text);
  assert(await waitFor(() => groupMembers(pgid).length === 0, 5000), "no survivor");
  assertEquals(agent.auditLines().at(-1)!.timedOut, true);

  // A step that ignores SIGTERM gets SIGKILL after its grace.
  const stubborn = Step.shell("test.stubborn", "trap '' TERM; echo $$; sleep 300", {
    timeoutMs: 300,
    killGraceMs: 300,
  });
  const sink2 = new CollectingSink();
  const out2 = await client.runStreaming(stubborn, sink2);
  assert(out2.timedOut);
  assertEquals(out2.signal, "SIGKILL");
  assert(!isAlive(Number(sink2.lines[0].text)));
});

Deno.test(
  "acceptance 4: aborting while the reader is stalled (the step blocked on its pipe) kills the group",
  timeLimit(30_000, async () => {
    if (noProc()) return;
    await using agent = await startAgentProcess(loopbackConfig());
    await using client = new AgentRpc({ url: agent.url }, caps);
    const abort = new AbortController();
    let first: string | undefined;
    const sink: LogSink = {
      write(line) {
        first ??= line.text;
        // Never returns: the agent's queue fills and the step blocks in write(2).
        return new Promise(() => {});
      },
    };
    const flood = Step.shell("test.flood", "echo $$; yes", { killGraceMs: 500 });
    const running = client.runStreaming(flood, sink, { signal: abort.signal });
    assert(await waitFor(() => first !== undefined, 10_000));
    const pgid = Number(first);
    await new Promise((resolve) => setTimeout(resolve, 500));
    assertEquals(groupMembers(pgid).length, 2, "sh and yes, blocked");
    abort.abort();
    assert((await running).cancelled);
    assert(await waitFor(() => groupMembers(pgid).length === 0, 10_000), "no survivor");
  }),
);
