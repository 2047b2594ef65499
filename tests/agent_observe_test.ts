// observe() through the real agent: host facts read under the agent's narrow
// permission set, its version, its tailnet self (whois of its own address,
// ::ffff:-mapped addresses unmapped), disk use of the caller's granted roots.

import { assert, assertEquals, assertGreater, assertRejects } from "@deps/assert";
import { CapabilityDenied, CapabilitySet } from "../mod.ts";
import { AGENT_VERSION } from "../agent/mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { STANDIN_SOCKET, TailnetStandin, whoisText } from "./_tailscale_standin.ts";
import { HAS_PROC } from "./_procs.ts";
import { isRoot, missing } from "./_prereq.ts";

Deno.test("observe through the agent: version, tailnet self, host facts", async () => {
  await using tailnet = await TailnetStandin.start();
  tailnet.set("127.0.0.2", whoisText("user-node"));
  tailnet.set("127.0.0.3", whoisText("tagged-node"));
  // The agent host itself, as an older client reports it (mapped addresses).
  tailnet.set(
    "127.0.0.1",
    whoisText("tagged-node", {
      name: "build-mac.tail78f774.ts.net.",
      stableId: "nBuildMac1CNTRL",
      addresses: ["::ffff:100.101.102.103/32", "fd7a:115c:a1e0::ab12:4843/128"],
      tags: ["tag:builder"],
    }),
  );
  await using agent = await startAgentProcess(`
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
[identity]
provider = "tailscale"
socket = "${STANDIN_SOCKET}"
[ceiling]
allow = ["observe"]
[[grant]]
to = ["user:alice@example.com"]
allow = ["observe"]
`);
  await using alice = new AgentRpc(
    { url: agent.url, localAddress: "127.0.0.2", host: "build-mac" },
    CapabilitySet.of("observe"),
  );
  const facts = await alice.observe();
  assertEquals(facts.host, "build-mac");
  assertEquals(facts.hostname, Deno.hostname());
  assertEquals(facts.os, Deno.build.os);
  assertEquals(facts.agent?.version, AGENT_VERSION);
  assertEquals(facts.agent?.tailnetSelf, {
    name: "build-mac.tail78f774.ts.net",
    addresses: ["100.101.102.103", "fd7a:115c:a1e0::ab12:4843"],
  });
  assertGreater(facts.memory.totalBytes, 0);
  assertEquals(facts.disks.map((d) => d.path), ["/"], "no granted roots: the root file system");
  assertGreater(facts.disks[0].totalBytes, 0);
  assert(!Number.isNaN(Date.parse(facts.observedAt)));

  await using sando = new AgentRpc(
    { url: agent.url, localAddress: "127.0.0.3" },
    CapabilitySet.of("*"),
  );
  const denied = await assertRejects(() => sando.observe(), CapabilityDenied);
  assertEquals(denied.scope, "agent");
  const lines = agent.auditLines().filter((l) => l.endpoint === "GET /v1/observe");
  assertEquals(lines.map((l) => l.decision), ["allowed", "denied"]);
});

Deno.test("observe through the agent: disk use of the caller's granted sync roots", async () => {
  const root = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "root-" });
  await using agent = await startAgentProcess(loopbackConfig({
    ceiling: ["observe", `sync.push:${root}`, "sync.pull:/srv/nowhere-here"],
  }));
  await using client = new AgentRpc({ url: agent.url }, CapabilitySet.of("observe"));
  const facts = await client.observe();
  assertEquals(facts.agent?.tailnetSelf, undefined, "the loopback provider knows no tailnet");
  assertEquals(facts.disks.map((d) => d.path), [root], "a root that does not exist is left out");
  assertGreater(facts.disks[0].availableBytes, 0);
  await Deno.remove(root);
});

// ---- issue 13, item 7: df inside max_concurrent and with a deadline ------------------

Deno.test("7. /v1/observe takes a max_concurrent slot: a burst gets 429s, not a df each", async () => {
  await using agent = await startAgentProcess(
    loopbackConfig({ ceiling: ["observe"], maxConcurrent: 2 }),
  );
  const statuses = await Promise.all(
    Array.from({ length: 60 }, async () => {
      const response = await fetch(`${agent.url}/v1/observe`);
      await response.body?.cancel();
      return response.status;
    }),
  );
  assert(statuses.includes(200), JSON.stringify(statuses));
  assert(statuses.includes(429), `every observe ran its df: ${JSON.stringify(statuses)}`);
  assert(statuses.every((s) => s === 200 || s === 429), JSON.stringify(statuses));
});

Deno.test(
  "7. a df that does not answer: 504 after the deadline, audited; its slot is held until df is gone",
  async () => {
    if (!HAS_PROC || !isRoot()) {
      return void missing([false, "root (to bind a hanging df in place)"]);
    }
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "hung-df-" });
    try {
      // A df as a dead NFS mount leaves it: deaf to SIGTERM, back after 14 s.
      const hung = `${dir}/df`;
      await Deno.writeTextFile(hung, "#!/bin/sh\ntrap '' TERM\nsleep 14\n", { mode: 0o755 });
      await using agent = await startAgentProcess(
        loopbackConfig({ ceiling: ["observe"], maxConcurrent: 1 }),
        {
          // The agent in a mount namespace of its own, whose df is that one.
          prefix: [
            "unshare",
            "--mount",
            "--",
            "/bin/sh",
            "-c",
            'mount --bind "$0" /usr/bin/df && exec "$@"',
            hung,
          ],
        },
      );
      const started = performance.now();
      const response = await fetch(`${agent.url}/v1/observe`);
      const took = performance.now() - started;
      assertEquals(response.status, 504);
      assertEquals((await response.json()).error.code, "observe_timeout");
      assert(took < 13_000, `the answer took ${Math.round(took)} ms`);
      // The hung df still holds the one slot: no second df starts beside it.
      const second = await fetch(`${agent.url}/v1/observe`);
      await second.body?.cancel();
      assertEquals(second.status, 429);
      assert(agent.auditLines().some((l) => l.status === 504), "the timeout is audited");
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
