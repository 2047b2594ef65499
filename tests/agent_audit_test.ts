// Issue 13, items 4 and 5, acceptance 3 and 4, against the real agent with a
// real syslog daemon (rsyslogd on a private socket): a step that kills the
// agent, or rewrites its audit file, leaves its run on record — the start
// line written before it started, and the system log's copy of every line;
// a caller's huge killGraceMs does not hold the agent past max_kill_grace.

import { assert, assertEquals, assertLess, assertStringIncludes } from "@deps/assert";
import { CapabilitySet, CollectingSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { startAgentProcess } from "./_agent_process.ts";
import { HAS_PROC, pidsWithCommandLine, sleepToken, waitFor } from "./_procs.ts";
import { missing } from "./_prereq.ts";
import { startSyslog, syslogMissing } from "./_syslog.ts";
import { timeLimit } from "./_time_limit.ts";

const CAPS = CapabilitySet.of("test.*");

function config(extra: string): string {
  return `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
${extra}

[identity]
provider = "loopback"
loopback_identity = "user:dev@localhost"

[ceiling]
allow = ["test.*"]

[[grant]]
to = ["user:dev@localhost"]
allow = ["test.*"]
`;
}

/** The JSON lines among the messages (the agent also says "starting" there). */
function parse(lines: string[]): Record<string, unknown>[] {
  return lines.filter((line) => line.startsWith("{")).map((line) => JSON.parse(line));
}

Deno.test({
  name:
    "3. a step that kills the agent leaves its run on record: the start line, and its copy in the system log",
  ignore: syslogMissing() !== undefined,
  fn: timeLimit(60_000, async () => {
    await using syslog = await startSyslog();
    await using agent = await startAgentProcess(
      config(`audit_syslog = true\naudit_syslog_socket = "${syslog.socket}"`),
    );
    await using rpc = new AgentRpc({ url: agent.url }, CAPS);
    // The step's parent is the agent (the session launcher execs, it does not fork).
    await rpc.runStreaming(
      Step.shell("test.killer", "kill -9 $PPID; sleep 5"),
      new CollectingSink(),
    )
      .catch(() => {});
    const status = await agent.child.status;
    assertEquals(status.signal, "SIGKILL", "the step killed the agent");
    const file = agent.auditLines().filter((l) => l.action === "test.killer");
    assertEquals(file.map((l) => [l.decision, l.event]), [["allowed", "start"]]);
    // logger still sent what the agent had handed it.
    assert(
      await waitFor(() => parse(syslog.messages()).some((l) => l.id === file[0].id), 5000),
      `no copy in the system log: ${syslog.messages().join("\n")}`,
    );
    const copy = parse(syslog.messages()).find((l) => l.id === file[0].id)!;
    assertEquals(copy, file[0], "the copy is the line itself");
  }),
});

Deno.test({
  name:
    "3. a step that rewrites the audit file: the agent notes it, writes on at the path, and the system log keeps every line",
  ignore: syslogMissing() !== undefined,
  fn: timeLimit(60_000, async () => {
    await using syslog = await startSyslog();
    await using agent = await startAgentProcess(
      config(`audit_syslog = true\naudit_syslog_socket = "${syslog.socket}"`),
    );
    await using rpc = new AgentRpc({ url: agent.url }, CAPS);
    const secret = await rpc.runStreaming(
      Step.shell("test.secretive", "true"),
      new CollectingSink(),
    );
    assertEquals(secret.exitCode, 0);
    // Erase every trace of test.secretive, as the agent's own account may.
    const eraser = await rpc.runStreaming(
      Step.shell("test.eraser", `sed -i '/test.secretive/d' "$LOG"`, {
        env: { LOG: agent.auditPath },
      }),
      new CollectingSink(),
    );
    assertEquals(eraser.exitCode, 0);
    await rpc.runStreaming(Step.shell("test.after", "true"), new CollectingSink());
    const file = agent.auditLines();
    assertEquals(file.filter((l) => l.action === "test.secretive"), [], "erased from the file");
    // The agent saw the file replaced under it, and wrote on to the file at the path.
    const note = file.find((l) => l.event === "audit_log_replaced");
    assert(note, JSON.stringify(file));
    assert(file.some((l) => l.action === "test.after" && l.event === "end"));
    assert(file.some((l) => l.action === "test.eraser" && l.event === "end"), "after sed -i");
    // The system log has it all, the erased run included.
    await waitFor(() => parse(syslog.messages()).some((l) => l.action === "test.after"), 5000);
    const copies = parse(syslog.messages());
    assertEquals(
      copies.filter((l) => l.action === "test.secretive").map((l) => l.event),
      ["start", "end"],
    );
    assert(copies.some((l) => l.event === "audit_log_replaced"));
  }),
});

Deno.test("3. audit_syslog = true where the system log cannot be reached: the agent does not start, naming the key", async () => {
  const error = await startAgentProcess(
    config(`audit_syslog = true\naudit_syslog_socket = "/tmp/ops-agent/no-such-syslog"`),
  ).then(() => null, (e) => e);
  assert(error instanceof Error, "the agent started");
  assertStringIncludes(error.message, "agent.audit_syslog");
  assertStringIncludes(error.message, "audit_syslog = false");
});

Deno.test({
  name:
    "4. a caller's huge killGraceMs does not hold the agent past max_kill_grace: on timeout, and on shutdown",
  ignore: missing([HAS_PROC, "/proc (Linux)"]) !== undefined,
  fn: timeLimit(60_000, async () => {
    await using agent = await startAgentProcess(config("max_kill_grace = 1\nshutdown_grace = 1"));
    await using rpc = new AgentRpc({ url: agent.url }, CAPS);
    const huge = 2 ** 31 - 1;
    // A timeout: TERM, then KILL after max_kill_grace, not after 24 days.
    const started = performance.now();
    const timed = await rpc.runStreaming(
      Step.shell("test.stubborn", "trap '' TERM; sleep 300", { timeoutMs: 300, killGraceMs: huge }),
      new CollectingSink(),
    );
    const took = performance.now() - started;
    assertEquals([timed.timedOut, timed.signal], [true, "SIGKILL"], JSON.stringify(timed));
    assertLess(took, 5000, `the stubborn step took ${Math.round(took)} ms to end`);
    const start = agent.auditLines().find((l) =>
      l.action === "test.stubborn" && l.event === "start"
    );
    assertEquals(start?.killGraceMs, 1000, "the start line says what grace the step got");

    // A shutdown: the agent exits within shutdown_grace and the flush, with its step dead and audited.
    const token = sleepToken();
    const held = rpc.runStreaming(
      Step.shell("test.holdout", `trap '' TERM; sleep ${token}`, { killGraceMs: huge }),
      new CollectingSink(),
    ).catch((error) => error);
    assert(await waitFor(() => pidsWithCommandLine(token).length > 0, 10_000));
    const stopping = performance.now();
    const status = await agent.stop("SIGTERM");
    const stopTook = performance.now() - stopping;
    assertEquals(status.code, 0, agent.output());
    assertLess(stopTook, 8000, `the agent took ${Math.round(stopTook)} ms to stop`);
    assertEquals(pidsWithCommandLine(token), [], "the step outlived the agent");
    await held;
    const end = agent.auditLines().find((l) => l.action === "test.holdout" && l.event === "end");
    assertEquals(
      [end?.signal, end?.reason],
      ["SIGKILL", "agent shutting down"],
      JSON.stringify(end),
    );
  }),
});
