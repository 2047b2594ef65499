// The agent's own guards, each against the real agent process over real HTTP,
// with tailscaled's stand-in answering whois in the exact shapes of
// tests/whois/ (through its `tailscale` CLI script, which reads a map private
// to this test: no LocalAPI socket shared with other runs on this machine).
// Each test exists because a small, plausible bug once passed the whole suite
// (issue 10); tools/mutants.ts puts those bugs back and checks that these fail.

import {
  assert,
  assertEquals,
  assertFalse,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilityDenied, CapabilitySet, CollectingSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { WsClient, WsHandshakeError } from "../transports/_ws_client.ts";
import { type AgentProcess, loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";
import { pidsWithCommandLine, waitFor } from "./_procs.ts";
import { STANDIN_SOCKET, TailnetStandin, whoisText } from "./_tailscale_standin.ts";
import { timeLimit } from "./_time_limit.ts";

const CAPMAP = "makenot.work/cap/ops-exec";
const EVERYTHING = CapabilitySet.of("*");

/** An HTTP request from `peer` (a loopback source address), answered as status and JSON. */
async function request(
  agent: AgentProcess,
  peer: string,
  path: string,
  init: RequestInit = {},
): Promise<{ status: number; body: Record<string, unknown> }> {
  const client = Deno.createHttpClient({ localAddress: peer });
  try {
    const response = await fetch(`${agent.url}${path}`, { ...init, client });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text.split("\n")[0]) : {} };
  } finally {
    client.close();
  }
}

/** Tries `attempt` until `ok` holds of its value or `ms` pass; returns the last value. */
async function eventually<T>(
  attempt: () => Promise<T>,
  ok: (value: T) => boolean,
  ms = 5000,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await attempt();
    if (ok(value) || Date.now() > end) return value;
    await new Promise((r) => setTimeout(r, 50));
  }
}

function postStep(step: Step): RequestInit {
  return {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(step.toJSON()),
  };
}

function tailnetConfig(grants: string): string {
  return `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"

[identity]
provider = "tailscale"
cli = "tailscale"
capmap = "${CAPMAP}"

[ceiling]
allow = ["ops.*", "legacy.*", "test.*", "observe"]
${grants}
`;
}

async function withTailnet(
  grants: string,
  fn: (agent: AgentProcess, tailnet: TailnetStandin) => Promise<void>,
): Promise<void> {
  // No LocalAPI socket: only the CLI, whose map is this stand-in's own.
  await using tailnet = await TailnetStandin.start({ sockets: [] });
  await using agent = await startAgentProcess(tailnetConfig(grants), {
    env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH")}` },
  });
  await fn(agent, tailnet);
}

const PEOPLE_AND_TAGS = `
[[grant]]
to = ["user:alice@example.com", "group:ops"]
allow = ["ops.*"]

[[grant]]
to = ["tag:ci"]
allow = ["legacy.*"]
`;

// ---- grants ----------------------------------------------------------------------------

Deno.test(
  "CapMap grants are held to the host's ceiling, as config grants are",
  timeLimit(30_000, () =>
    withTailnet(PEOPLE_AND_TAGS, async (agent, tailnet) => {
      const bob = "127.0.0.2";
      // The tailnet policy grants bob more than this host's ceiling allows.
      tailnet.set(
        bob,
        whoisText("capmap-grant", {
          groups: [],
          capMap: { [CAPMAP]: [{ allow: ["danger.*"] }, { allow: ["ops.read"] }] },
        }),
      );
      const caps = await request(agent, bob, "/v1/capabilities");
      assertEquals(caps.status, 200);
      assertEquals(caps.body.capabilities, ["ops.read"], "CapMap ∩ ceiling");

      const dir = await Deno.makeTempDir();
      try {
        await using rpc = new AgentRpc({ url: agent.url, localAddress: bob }, EVERYTHING);
        const denied = await assertRejects(
          () =>
            rpc.runStreaming(Step.shell("danger.wipe", `touch ${dir}/wiped`), new CollectingSink()),
          CapabilityDenied,
        );
        assertEquals(denied.scope, "agent");
        assertStringIncludes(denied.message, "ceiling");
        assertFalse(await exists(`${dir}/wiped`), "the step above the ceiling ran");
        // The part of the CapMap grant under the ceiling is honoured.
        const read = await rpc.runStreaming(
          Step.shell("ops.read", "echo read"),
          new CollectingSink(),
        );
        assertEquals(read.exitCode, 0);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
      const audit = agent.auditLines().filter((line) => line.action === "danger.wipe");
      assertEquals(audit.map((line) => [line.decision, line.status]), [["denied", 403]]);
      assertStringIncludes(String(audit[0].reason), "ceiling");
    })),
);

Deno.test(
  "a tagged node that kept its owner's user (old Headscale) is its tags, never its owner",
  timeLimit(30_000, () =>
    withTailnet(PEOPLE_AND_TAGS, async (agent, tailnet) => {
      const alice = "127.0.0.2";
      const legacy = "127.0.0.3";
      tailnet.set(alice, whoisText("user-node"));
      // Node.Tags says tagged; the user is alice's, not `tagged-devices`.
      tailnet.set(
        legacy,
        whoisText("tagged-node", {
          loginName: "alice@example.com",
          groups: ["group:ops"],
          tags: ["tag:ci"],
          stableId: "nLegacyCI1CNTRL",
        }),
      );
      // Alice herself is matched as alice: the grant works for a person.
      const person = await request(agent, alice, "/v1/capabilities");
      assertEquals(person.body.capabilities, ["ops.*"]);
      assertEquals((person.body.caller as Record<string, unknown>).user, "alice@example.com");

      const node = await request(agent, legacy, "/v1/capabilities");
      assertEquals(node.status, 200);
      assertEquals(node.body.capabilities, ["legacy.*"], "only what tag:ci is granted");
      const caller = node.body.caller as Record<string, unknown>;
      assertEquals(
        caller.user,
        undefined,
        `the node is named as a person: ${JSON.stringify(caller)}`,
      );
      assertEquals(caller.tags, ["tag:ci"]);

      await using rpc = new AgentRpc({ url: agent.url, localAddress: legacy }, EVERYTHING);
      const denied = await assertRejects(
        () => rpc.runStreaming(Step.shell("ops.deploy", "true"), new CollectingSink()),
        CapabilityDenied,
      );
      assertEquals(denied.scope, "agent");
      const fromNode = agent.auditLines().filter((line) => String(line.from).startsWith(legacy));
      assert(fromNode.length >= 2);
      for (const line of fromNode) {
        const who = line.who as Record<string, unknown>;
        assertEquals(who.user, undefined, `audited as a person: ${JSON.stringify(line)}`);
        assertEquals(who.tags, ["tag:ci"]);
      }
    })),
);

// ---- identity failures -----------------------------------------------------------------

Deno.test(
  "whois failing is 503 for every peer, loopback ones too: there is no fallback identity",
  timeLimit(30_000, async () => {
    await using tailnet = await TailnetStandin.start({ sockets: [] });
    tailnet.set("127.0.0.1", whoisText("user-node"));
    tailnet.set("127.0.0.2", whoisText("user-node"));
    // tailscaled is down: the CLI says so, as the real one does, and exits 1.
    const bin = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "tailscale-down-" });
    const cli = `${bin}/tailscale`;
    await Deno.writeTextFile(
      cli,
      `#!/bin/sh\necho "failed to connect to local tailscaled; it doesn't appear to be running (sudo systemctl start tailscaled ?)" >&2\nexit 1\n`,
      { mode: 0o755 },
    );
    const marker = `${bin}/ran`;
    try {
      await using agent = await startAgentProcess(
        tailnetConfig(`
[[grant]]
to = ["*"]
allow = ["test.*", "observe"]
`),
        { env: { PATH: `${bin}:${Deno.env.get("PATH")}` } },
      );
      for (const peer of ["127.0.0.1", "127.0.0.2"]) {
        const run = await request(
          agent,
          peer,
          "/v1/run",
          postStep(
            Step.shell("test.run", `touch ${marker}`),
          ),
        );
        assertEquals(run.status, 503, `${peer}: ${JSON.stringify(run.body)}`);
        assertEquals((run.body.error as Record<string, unknown>).code, "identity_unavailable");
        assertEquals((await request(agent, peer, "/v1/capabilities")).status, 503);
        assertEquals((await request(agent, peer, "/v1/observe")).status, 503);
      }
      await using rpc = new AgentRpc({ url: agent.url }, EVERYTHING);
      await assertRejects(
        () => rpc.runStreaming(Step.shell("test.run", `touch ${marker}`), new CollectingSink()),
      );
      assertFalse(await exists(marker), "a step ran for a caller nobody identified");
      const audit = agent.auditLines();
      // One itemised line per address a minute (issue 13: refusals are audited at a bounded rate).
      assertEquals(audit.map((line) => String(line.from).split(":")[0]).sort(), [
        "127.0.0.1",
        "127.0.0.2",
      ]);
      for (const line of audit) {
        assertEquals([line.who, line.decision, line.status], [null, "denied", 503]);
        assertStringIncludes(String(line.reason), "identity unavailable");
      }

      // tailscaled back: the same peers are served (failures are not remembered).
      await Deno.writeTextFile(cli, `#!/bin/sh\nexec ${tailnet.binDir}/tailscale "$@"\n`);
      const back = await request(
        agent,
        "127.0.0.1",
        "/v1/run",
        postStep(
          Step.shell("test.run", `touch ${marker}`),
        ),
      );
      assertEquals(back.status, 200);
      assert(await eventually(() => exists(marker), Boolean), "the identified caller's step ran");
    } finally {
      await Deno.remove(bin, { recursive: true });
    }
  }),
);

// ---- the audit log ---------------------------------------------------------------------

Deno.test(
  "a step's env values and stdin never reach the audit log, allowed or denied",
  timeLimit(30_000, async () => {
    await using agent = await startAgentProcess(loopbackConfig({ ceiling: ["test.*"] }));
    await using rpc = new AgentRpc({ url: agent.url }, EVERYTHING);
    const secret = `s3cr3t-${crypto.randomUUID()}`;
    const stdin = `stdin-${crypto.randomUUID()}`;
    const sink = new CollectingSink();
    const allowed = await rpc.runStreaming(
      Step.shell("test.secret", 'printf "%s\\n" "${#API_TOKEN}"; cat', {
        env: { API_TOKEN: secret },
        stdin,
        label: "uses a token",
      }),
      sink,
    );
    assertEquals(allowed.exitCode, 0);
    // The step did get both.
    assertEquals(sink.text("stdout"), `${secret.length}\n${stdin}`);
    await assertRejects(
      () =>
        rpc.runStreaming(
          Step.shell("other.secret", "true", { env: { API_TOKEN: secret }, stdin }),
          new CollectingSink(),
        ),
      CapabilityDenied,
    );
    const text = await Deno.readTextFile(agent.auditPath);
    const runs = agent.auditLines().filter((line) => line.endpoint === "POST /v1/run");
    assertEquals(runs.map((line) => [line.status, line.event]), [
      [200, "start"],
      [200, "end"],
      [403, undefined],
    ]);
    assert(runs.every((line) => String(line.digest).startsWith("sha256:")));
    for (const value of [secret, stdin, btoa(stdin), btoa(secret)]) {
      assertFalse(text.includes(value), `the audit log holds ${value}:\n${text}`);
    }
  }),
);

// ---- sync transfers and max_concurrent -------------------------------------------------

/** Opens the sync tunnel by hand; the socket, or the HTTP status it was refused with. */
async function openTunnel(agent: AgentProcess, dest: string): Promise<WsClient | number> {
  const target = new URL("/v1/sync", agent.url);
  target.searchParams.set(
    "argv",
    JSON.stringify(["rsync", "--server", "-logtpre.iLsfxCIvu", ".", dest]),
  );
  try {
    return await WsClient.connect(target.href);
  } catch (error) {
    if (error instanceof WsHandshakeError) return error.status;
    throw error;
  }
}

Deno.test(
  "a sync transfer takes a max_concurrent slot: it waits for a step, a step waits for it, shutdown ends it",
  timeLimit(60_000, async () => {
    if (missing([RSYNC !== null, "rsync"])) return;
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const root = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "slots-" }),
    );
    try {
      const agent = await startAgentProcess(
        loopbackConfig({ ceiling: ["test.*", `sync.push:${root}`], maxConcurrent: 1 }),
      );
      await using _agent = agent;
      await using rpc = new AgentRpc({ url: agent.url }, EVERYTHING);
      const dest = `${root}/app/`;

      // A running step holds the one slot: the transfer is refused, as a second step would be.
      let ready!: () => void;
      const up = new Promise<void>((resolve) => (ready = resolve));
      const controller = new AbortController();
      const step = rpc.runStreaming(
        Step.shell("test.hold", "echo ready; exec sleep 300"),
        { write: (line) => void (line.text === "ready" && ready()) },
        { signal: controller.signal },
      );
      step.catch(() => {}); // awaited below; a failed check must not leave it unhandled
      await up;
      assertEquals(await openTunnel(agent, dest), 429, "a transfer started beside a step");
      controller.abort();
      await step;

      // A transfer holds the slot: a step is refused while it runs, and served once it ends.
      const tunnel = await eventually(
        () => openTunnel(agent, dest),
        (value) => typeof value !== "number",
      );
      if (typeof tunnel === "number") {
        throw new Error(`the tunnel did not open once the step ended: ${tunnel}`);
      }
      const refused = await request(
        agent,
        "127.0.0.1",
        "/v1/run",
        postStep(
          Step.shell("test.run", "true"),
        ),
      );
      assertEquals(refused.status, 429, "a step started beside a transfer");
      tunnel.destroy();
      const served = await eventually(
        () => request(agent, "127.0.0.1", "/v1/run", postStep(Step.shell("test.run", "true"))),
        (answer) => answer.status === 200,
      );
      assertEquals(served.status, 200, "the slot came back when the transfer ended");

      // Shutdown ends a transfer too: its rsync is stopped and the transfer audited.
      const last = await openTunnel(agent, `${root}/last/`);
      if (typeof last === "number") throw new Error(`the last tunnel did not open: ${last}`);
      assert(await waitFor(() => pidsWithCommandLine(`${root}/last`).length > 0, 5000));
      const status = await agent.stop("SIGTERM");
      last.destroy();
      assertEquals(status.code, 0, agent.output());
      assertEquals(pidsWithCommandLine(`${root}/last`), [], "rsync outlived the agent");
      // (A transfer's start line is left out: its end line says how it went.)
      const transfers = agent.auditLines().filter((line) =>
        line.endpoint === "GET /v1/sync" && line.event !== "start"
      );
      // 429 first, and again for each retry while the aborted step still held its slot.
      const statuses = transfers.map((line) => line.status);
      assertEquals(statuses.slice(-2), [101, 101], JSON.stringify(statuses));
      assert(statuses.slice(0, -2).every((s) => s === 429) && statuses.length >= 3);
      assertEquals(transfers.at(-1)!.path, `${root}/last`);
    } finally {
      await Deno.remove(root, { recursive: true }).catch(() => {});
    }
  }),
);

// ---- issue 13, item 7: a whois that stalls or breaks off -------------------------------

Deno.test(
  "7. a whois whose answer stalls or breaks off is 503 (identity unavailable), audited, never 500",
  timeLimit(60_000, async () => {
    await using tailnet = await TailnetStandin.start();
    tailnet.set("127.0.0.2", whoisText("user-node"));
    tailnet.fault("127.0.0.4", "stall");
    tailnet.fault("127.0.0.5", "reset");
    await using agent = await startAgentProcess(`
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"

[identity]
provider = "tailscale"
socket = "${STANDIN_SOCKET}"

[ceiling]
allow = ["test.*"]

[[grant]]
to = ["*"]
allow = ["test.*"]
`);
    for (const peer of ["127.0.0.5", "127.0.0.4"]) {
      const answer = await request(agent, peer, "/v1/capabilities");
      assertEquals(answer.status, 503, `${peer}: ${JSON.stringify(answer.body)}`);
      assertEquals((answer.body.error as Record<string, unknown>).code, "identity_unavailable");
      const line = await eventually(
        () =>
          Promise.resolve(agent.auditLines().find((l) => String(l.from).startsWith(`${peer}:`))),
        (l) => l !== undefined,
      );
      assertEquals([line?.status, line?.decision], [503, "denied"], JSON.stringify(line));
      assertStringIncludes(String(line?.reason), "identity unavailable");
    }
    // The agent goes on serving the peers whois answers for.
    assertEquals((await request(agent, "127.0.0.2", "/v1/capabilities")).status, 200);
  }),
);

// ---- issue 13, item 6 and acceptance 5: names and StableIDs never meet -----------------

Deno.test(
  "5. node: names and node-id: StableIDs cannot be confused; the old ambiguous form is a config error",
  timeLimit(60_000, async () => {
    await using tailnet = await TailnetStandin.start({ sockets: [] });
    const id7 = "127.0.0.6"; // Headscale node 7 (its StableID is "7")
    const named7 = "127.0.0.7"; // a node whose user named it "7"
    tailnet.set(id7, whoisText("headscale-node"));
    tailnet.set(
      named7,
      whoisText("headscale-node", { name: "7.ops.internal.", computedName: "7", stableId: "12" }),
    );
    await using agent = await startAgentProcess(
      tailnetConfig(`
[[grant]]
to = ["node-id:7"]
allow = ["ops.promote"]

[[grant]]
to = ["node:7.ops.internal"]
allow = ["legacy.read"]
`),
      { env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH")}` } },
    );
    assertEquals((await request(agent, id7, "/v1/capabilities")).body.capabilities, [
      "ops.promote",
    ]);
    assertEquals((await request(agent, named7, "/v1/capabilities")).body.capabilities, [
      "legacy.read",
    ]);
    await using impostor = new AgentRpc({ url: agent.url, localAddress: named7 }, EVERYTHING);
    await assertRejects(
      () => impostor.runStreaming(Step.shell("ops.promote", "true"), new CollectingSink()),
      CapabilityDenied,
    );

    // The form that once matched either is refused, naming both ways to say it.
    const refused = await startAgentProcess(
      tailnetConfig(`
[[grant]]
to = ["node:7"]
allow = ["ops.promote"]
`),
      { env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH")}` } },
    ).then(() => null, (error) => error);
    assert(refused instanceof Error, "an agent started with node:7");
    assertStringIncludes(refused.message, "grant[0].to[0]");
    assertStringIncludes(refused.message, "node-id:7");
  }),
);
