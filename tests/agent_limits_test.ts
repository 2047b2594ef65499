// Acceptance 5 of the agent issue against the real agent process: malformed
// requests get their 4xx with a JSON error, oversized bodies 413, too many
// steps 429, unknown paths 404, and the agent keeps serving afterwards.

import { assert, assertEquals, assertRejects, assertStringIncludes } from "@deps/assert";
import { CapabilitySet, CollectingSink, OpsExecError, Step, StepError } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { type AgentProcess, loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { waitFor } from "./_procs.ts";

const caps = CapabilitySet.of("test.*");

async function post(agent: AgentProcess, body: BodyInit, headers: HeadersInit = {}) {
  const response = await fetch(`${agent.url}/v1/run`, { method: "POST", body, headers });
  const type = response.headers.get("content-type") ?? "";
  const text = await response.text();
  return { status: response.status, type, headers: response.headers, body: JSON.parse(text) };
}

async function stillServes(agent: AgentProcess): Promise<void> {
  await using client = new AgentRpc({ url: agent.url }, caps);
  const sink = new CollectingSink();
  const out = await client.runStreaming(Step.shell("test.alive", "echo alive"), sink);
  assertEquals(out.exitCode, 0);
  assertEquals(sink.text(), "alive");
}

Deno.test("acceptance 5: malformed JSON and wrong shapes get 400 with a JSON error", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  const cases: [BodyInit, string, string | undefined][] = [
    ["{not json", "malformed_request", undefined],
    ["", "malformed_request", undefined],
    ['"a string"', "invalid_step", "(root)"],
    ["[]", "invalid_step", "(root)"],
    ['{"action":"test.x","kind":"exec","argv":"ls"}', "invalid_step", "argv"],
    ['{"action":"test.x","kind":"exec","argv":[]}', "invalid_step", "argv"],
    ['{"action":"test.x","kind":"shell","script":"true","extra":1}', "invalid_step", "extra"],
    ['{"action":"Test.X","kind":"shell","script":"true"}', "invalid_step", "action"],
    ['{"action":"observe","kind":"shell","script":"true"}', "invalid_step", "action"],
    ['{"action":"test.x","kind":"shell","script":"true","cwd":"relative"}', "invalid_step", "cwd"],
    [
      '{"action":"test.x","kind":"shell","script":"true","env":{"A-B":"x"}}',
      "invalid_step",
      "env.A-B",
    ],
    [
      '{"action":"test.x","kind":"shell","script":"true","timeoutMs":-1}',
      "invalid_step",
      "timeoutMs",
    ],
    ['{"action":"test.x","kind":"spawn","script":"true"}', "invalid_step", "kind"],
  ];
  for (const [body, code, field] of cases) {
    const answer = await post(agent, body, { "content-type": "application/json" });
    assertEquals(answer.status, 400, `${body}`);
    assertStringIncludes(answer.type, "application/json");
    assertEquals(answer.body.error.code, code, `${body}`);
    assertEquals(answer.body.error.field, field, `${body}`);
    assert(answer.body.error.message.length > 10);
  }
  const audit = agent.auditLines();
  assertEquals(audit.filter((l) => l.status === 400).length, cases.length, "each 400 is audited");
  await stillServes(agent);
});

Deno.test("acceptance 5: a body over the limit gets 413, with or without Content-Length", async () => {
  await using agent = await startAgentProcess(loopbackConfig({ maxRequestBytes: 4096 }));
  const big = JSON.stringify(Step.shell("test.big", `echo ${"x".repeat(8000)}`).toJSON());
  const declared = await post(agent, big);
  assertEquals(declared.status, 413);
  assertEquals(declared.body.error.code, "request_too_large");
  const chunks = [big.slice(0, 3000), big.slice(3000)];
  const streamed = await post(
    agent,
    new ReadableStream({
      pull(controller) {
        const next = chunks.shift();
        if (next === undefined) controller.close();
        else controller.enqueue(new TextEncoder().encode(next));
      },
    }),
  );
  assertEquals(streamed.status, 413);
  await using client = new AgentRpc({ url: agent.url }, caps);
  const error = await assertRejects(
    () =>
      client.runStreaming(Step.shell("test.big", "true", { stdin: "x".repeat(5000) }), {
        write() {},
      }),
    StepError,
  );
  assertStringIncludes(error.message, "4096 bytes");
  assertEquals(agent.auditLines().filter((l) => l.status === 413).length, 3);
  await stillServes(agent);
});

Deno.test("acceptance 5: over max_concurrent gets 429; the agent serves again once steps end", async () => {
  await using agent = await startAgentProcess(loopbackConfig({ maxConcurrent: 2 }));
  await using client = new AgentRpc({ url: agent.url }, caps);
  const abort = new AbortController();
  const sinks = [new CollectingSink(), new CollectingSink()];
  const long = Step.shell("test.hold", "echo started; sleep 300", { killGraceMs: 200 });
  const running = sinks.map((sink) => client.runStreaming(long, sink, { signal: abort.signal }));
  assert(await waitFor(() => sinks.every((s) => s.lines.length > 0), 10_000), "both started");

  const raw = await post(agent, JSON.stringify(Step.shell("test.third", "true").toJSON()));
  assertEquals(raw.status, 429);
  assertEquals(raw.body.error.code, "too_many_steps");
  assertEquals(raw.headers.get("retry-after"), "1");
  const busy = await assertRejects(
    () => client.runStreaming(Step.shell("test.third", "true"), { write() {} }),
    OpsExecError,
  );
  assertEquals(busy.code, "agent_busy");
  const denied = agent.auditLines().filter((l) => l.status === 429);
  assertEquals(denied.length, 2);
  assertStringIncludes(String(denied[0].reason), "max_concurrent");

  abort.abort();
  for (const out of await Promise.all(running)) assert(out.cancelled);
  assert(
    await waitFor(
      () => agent.auditLines().filter((l) => l.cancelled === true).length === 2,
      10_000,
    ),
    "both held steps ended",
  );
  await stillServes(agent);
});

Deno.test("acceptance 5: unknown paths and methods get 404 with a JSON error", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  for (
    const [method, path] of [["GET", "/v1/nope"], ["GET", "/v1/run"], ["DELETE", "/v1/run"], [
      "GET",
      "/",
    ]]
  ) {
    const response = await fetch(`${agent.url}${path}`, { method });
    assertEquals(response.status, 404, `${method} ${path}`);
    assertEquals((await response.json()).error.code, "not_found");
  }
  const health = await (await fetch(`${agent.url}/v1/health`)).json();
  assertEquals(health.ok, true);
  assertEquals(health.protocol, 1);
  const sync = await fetch(`${agent.url}/v1/sync`);
  assertEquals(sync.status, 400, "the sync tunnel wants a WebSocket upgrade");
  assertEquals((await sync.json()).error.code, "malformed_request");
  await stillServes(agent);
});
