// Issue 13, item 1 and acceptance 1, against the real agent process with the
// tailscaled stand-in: a peer whois does not know tries to exhaust the
// agent's descriptors, and a peer it knows (holding no grant) opens
// slowloris sockets — request heads dribbled a byte at a time, a 4 MB body
// dribbled, keep-alive connections left idle. The agent keeps serving an
// identified caller throughout and closes the idle ones within its timeouts.
// Also item 7: unknown peers cannot grow the audit log without limit.

import net from "node:net";
import { assert, assertEquals, assertLess } from "@deps/assert";
import { CapabilitySet, CollectingSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { type AgentProcess, startAgentProcess } from "./_agent_process.ts";
import { findProgram, missing } from "./_prereq.ts";
import { TailnetStandin, whoisText } from "./_tailscale_standin.ts";
import { timeLimit } from "./_time_limit.ts";

const PRLIMIT = findProgram("/usr/bin/prlimit");
const ALICE = "127.0.0.2";
const WEAK = "127.0.0.3"; // known to whois, granted nothing
const STRANGER = "127.0.0.9";
const SLOW = 2000;

function config(limits: string): string {
  return `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
${limits}

[identity]
provider = "tailscale"
cli = "tailscale"

[ceiling]
allow = ["test.*"]

[[grant]]
to = ["user:alice@example.com"]
allow = ["test.*"]
`;
}

/** A raw TCP socket from `local` to the agent, open (or failed) once the promise settles. */
function socket(agent: AgentProcess, local: string): Promise<net.Socket> {
  const url = new URL(agent.url);
  return new Promise((resolve) => {
    const s = net.connect({ host: url.hostname, port: Number(url.port), localAddress: local });
    s.on("error", () => {});
    s.resume(); // read (and drop) what the agent answers, so that its FIN is seen
    s.once("connect", () => resolve(s));
    s.once("close", () => resolve(s));
  });
}

/** Runs steps as alice until `stop`, counting successes and failures. */
function keepServing(agent: AgentProcess, stop: AbortSignal) {
  const tally = { ok: 0, failed: [] as string[] };
  const done = (async () => {
    await using rpc = new AgentRpc(
      { url: agent.url, localAddress: ALICE },
      CapabilitySet.of("test.*"),
    );
    while (!stop.aborted) {
      try {
        const sink = new CollectingSink();
        const out = await rpc.runStreaming(Step.shell("test.alive", "echo alive"), sink);
        if (out.exitCode === 0 && sink.text() === "alive") tally.ok++;
        else tally.failed.push(JSON.stringify(out));
      } catch (error) {
        tally.failed.push(String(error));
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  })();
  return { tally, done };
}

Deno.test({
  name:
    "1. an unknown peer's flood and 2000 slowloris sockets: the agent keeps serving identified callers and closes the idle ones within its timeouts",
  ignore: missing([PRLIMIT !== null, "prlimit (util-linux)"]) !== undefined,
  fn: timeLimit(120_000, async () => {
    await using tailnet = await TailnetStandin.start({ sockets: [] });
    tailnet.set(ALICE, whoisText("user-node"));
    tailnet.set(WEAK, whoisText("tagged-node", { tags: ["tag:nothing"] }));
    // 512 descriptors: fewer than the sockets thrown at it.
    await using agent = await startAgentProcess(
      config(
        `header_timeout = 2\nidle_timeout = 3\nrequest_timeout = 4\nmax_connections_per_peer = 64`,
      ),
      {
        env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH")}` },
        prefix: [PRLIMIT!, "--nofile=512:512", "--"],
      },
    );
    const stop = new AbortController();
    const serving = keepServing(agent, stop.signal);
    const sockets: net.Socket[] = [];
    try {
      // The unknown peer: 1500 connections, as fast as they go.
      const flood = await Promise.all(
        Array.from({ length: 1500 }, () => socket(agent, STRANGER)),
      );
      sockets.push(...flood);
      // (A request on each: a socket the kernel completed but the agent never
      // accepted, its backlog full, only learns of that when it sends.)
      for (const s of flood) s.write("GET /v1/capabilities HTTP/1.1\r\nhost: agent\r\n\r\n");
      // The known peer: 2000 slowloris sockets in three kinds.
      const slow = await Promise.all(Array.from({ length: SLOW }, () => socket(agent, WEAK)));
      sockets.push(...slow);
      const opened = performance.now();
      const dribble = setInterval(() => {
        for (const [i, s] of slow.entries()) {
          if (s.destroyed) continue;
          if (i % 3 === 0) s.write("G"); // a request head, a byte at a time
          else if (i % 3 === 1 && !s.writableEnded) {
            // a 4 MB body, dribbled
            if (!(s as unknown as { started?: boolean }).started) {
              s.write(
                "POST /v1/run HTTP/1.1\r\nhost: agent\r\ncontent-type: application/json\r\ncontent-length: 4000000\r\n\r\n{",
              );
              (s as unknown as { started?: boolean }).started = true;
            } else s.write(" ");
          } else if (i % 3 === 2 && !(s as unknown as { started?: boolean }).started) {
            // a keep-alive connection: one request, then idle
            s.write("GET /v1/health HTTP/1.1\r\nhost: agent\r\n\r\n");
            (s as unknown as { started?: boolean }).started = true;
          }
        }
      }, 500);
      try {
        // The identified caller is served all along.
        await new Promise((resolve) => setTimeout(resolve, 3000));
        assert(serving.tally.ok > 0, `alice was not served: ${serving.tally.failed.join("\n")}`);
        // Every slowloris socket is closed within the timeouts (the 4 MB body by request_timeout).
        const closed = await waitUntil(
          () => slow.every((s) => s.destroyed || s.readableEnded),
          15_000,
        );
        const took = performance.now() - opened;
        assert(
          closed,
          `${
            slow.filter((s) => !(s.destroyed || s.readableEnded)).length
          } slowloris sockets still open after ${Math.round(took)} ms (by kind: ${
            JSON.stringify([0, 1, 2].map((k) =>
              slow.filter((s, i) =>
                i % 3 === k && !(s.destroyed || s.readableEnded)
              ).length
            ))
          })`,
        );
        assertLess(took, 15_000);
        assert(
          flood.every((s) => s.destroyed || s.readableEnded),
          "the unknown peer's sockets are closed",
        );
      } finally {
        clearInterval(dribble);
      }
      stop.abort();
      await serving.done;
      assertEquals(serving.tally.failed, [], "every step of alice's ran");
      assert(serving.tally.ok >= 5, `alice ran ${serving.tally.ok} steps`);
      // Still alive, still serving, on the same limits.
      assertEquals(agent.child.pid > 0 && (await statusOrNull(agent)), null, agent.output());
      // The unknown peer's 1500 connections: a handful of audit lines, not 1500.
      const stranger = agent.auditLines().filter((l) => String(l.from).startsWith(`${STRANGER}:`));
      assert(
        stranger.length >= 1 && stranger.length <= 3,
        `${stranger.length} lines for the stranger`,
      );
      assert(
        stranger.every((l) => /unknown peer|being identified/.test(String(l.reason))),
        JSON.stringify(stranger),
      );
    } finally {
      stop.abort();
      for (const s of sockets) s.destroy();
    }
  }),
});

async function waitUntil(check: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return check();
}

/** The agent's exit status if it has exited, else `null`. */
async function statusOrNull(agent: AgentProcess): Promise<Deno.CommandStatus | null> {
  return await Promise.race([
    agent.child.status,
    new Promise<null>((r) => setTimeout(() => r(null), 50)),
  ]);
}
