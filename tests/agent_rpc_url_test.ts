// Issue 18.3: AgentRpc URLs a new user gets wrong, against the real agent
// (tests/_agent_process.ts): https:// to the plain-HTTP agent, a URL with a
// path, a URL without a scheme. Each error says what to do.

import { assertEquals, assertRejects, assertStringIncludes, assertThrows } from "@deps/assert";
import { CapabilitySet, CollectingSink, ConfigError, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { type AgentProcess, loopbackConfig, startAgentProcess } from "./_agent_process.ts";

const caps = CapabilitySet.of("test.*", "observe");
const agent: AgentProcess = await startAgentProcess(loopbackConfig());
const hostPort = new URL(agent.url).host;

Deno.test("18.3 https:// to the plain-HTTP agent is refused up front: use http://, WireGuard encrypts it", async () => {
  // What TLS against this agent meets (rustls' own words, no hint).
  const tls = await assertRejects(() => fetch(`https://${hostPort}/v1/health`));
  assertStringIncludes(String((tls as Error).cause ?? tls), "InvalidContentType");
  const error = assertThrows(() => new AgentRpc({ url: `https://${hostPort}` }, caps), ConfigError);
  assertEquals(error.key, "url");
  assertStringIncludes(error.message, "plain HTTP");
  assertStringIncludes(error.message, "WireGuard");
  assertStringIncludes(error.message, `use http://${hostPort}`);
  // The URL it names works.
  await using rpc = new AgentRpc({ url: `http://${hostPort}` }, caps);
  assertEquals((await rpc.remoteCapabilities()).allows("test.echo"), true);
});

Deno.test("18.3 a URL with a path, query, fragment or user is refused at construction, naming it", () => {
  for (
    const [url, named] of [
      [`http://${hostPort}/ops-agent`, "/ops-agent"],
      [`http://${hostPort}/v1/`, "/v1/"],
      [`http://${hostPort}/?token=x`, "?token=x"],
      [`http://${hostPort}/#top`, "#top"],
      [`http://me:secret@${hostPort}`, "user name"],
    ]
  ) {
    const error = assertThrows(() => new AgentRpc({ url }, caps), ConfigError, named);
    assertEquals(error.key, "url");
    assertStringIncludes(error.message, `http://${hostPort}`, "the URL to use instead");
  }
});

Deno.test("18.3 the agent's bare address, with or without a trailing slash, works", async () => {
  for (const url of [`http://${hostPort}`, `http://${hostPort}/`]) {
    await using rpc = new AgentRpc({ url }, caps);
    const sink = new CollectingSink();
    const out = await rpc.runStreaming(Step.exec("test.echo", ["echo", "at the root"]), sink);
    assertEquals([out.exitCode, sink.text()], [0, "at the root"]);
  }
});

Deno.test("18.3 a URL without a scheme keeps its clear message: it says to write http://", () => {
  for (const url of [hostPort, "localhost:7070", "100.101.102.103:7070", "web-1"]) {
    const error = assertThrows(() => new AgentRpc({ url }, caps), ConfigError);
    assertEquals(error.key, "url");
    assertStringIncludes(error.message, `http://${url}`);
  }
});

Deno.test("teardown: the agent", async () => {
  await agent[Symbol.asyncDispose]();
});
