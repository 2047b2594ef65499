// Acceptance 3 of the multi-host issue: who the caller is decides what a host
// grants. The controller is four tailnet peers (tests/hosts/_fleet.ts): a
// tagged Sando node, alice, bob (group:release, CapMap grants) and a stranger.
// Every answer comes from the real agents asking the one whois map.

import {
  assert,
  assertEquals,
  assertFalse,
  assertInstanceOf,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilityDenied, CollectingSink, Step, TransportError } from "../../mod.ts";
import { whoisText } from "../_tailscale_standin.ts";
import { APP_ROOT, EVERYTHING, type Fleet, fleetTest, type PeerName } from "./_fleet.ts";

/** The effective grant `as` gets from `host`'s agent, as canonical strings. */
async function granted(fleet: Fleet, host: string, as: PeerName): Promise<string[]> {
  const rpc = fleet.rpc(host, as, EVERYTHING);
  try {
    return (await rpc.remoteCapabilities()).toJSON().sort();
  } finally {
    await rpc.close();
  }
}

/** `GET /v1/capabilities` by hand, from `as`'s address: status and body. */
async function capabilitiesRaw(
  fleet: Fleet,
  host: string,
  as: PeerName,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const client = Deno.createHttpClient({ localAddress: fleet.peers[as] });
  try {
    const response = await fetch(`${fleet.host(host).url}/v1/capabilities`, { client });
    return { status: response.status, body: await response.json() };
  } finally {
    client.close();
  }
}

fleetTest(
  "identity: the caller's tailnet node decides its grant on each host",
  async (fleet, t) => {
    await t.step("tag:sando and user:alice get different grants on the same host", async () => {
      const sando = await granted(fleet, "canary", "sando");
      const alice = await granted(fleet, "canary", "alice");
      assertEquals(sando, ["observe", "sando.*", `sync.push:${APP_ROOT}`]);
      assertEquals(alice, ["fleet.*", "observe"]);

      const asSando = await capabilitiesRaw(fleet, "canary", "sando");
      assertEquals(asSando.status, 200);
      const sandoCaller = asSando.body.caller as Record<string, unknown>;
      assertEquals(sandoCaller.tags, ["tag:sando"]);
      assertEquals(sandoCaller.user, undefined, "a tagged node is never a user");
      const asAlice = await capabilitiesRaw(fleet, "canary", "alice");
      assertEquals((asAlice.body.caller as Record<string, unknown>).user, "alice@example.com");
    });

    await t.step("each is refused what only the other is granted (scope agent)", async () => {
      // Both callers' own sets allow everything: only the agent decides here.
      const promote = Step.shell("sando.promote", "echo promoted");
      const check = Step.shell("fleet.check", "echo checked");
      const sink = new CollectingSink();
      assert((await fleet.rpc("canary", "sando", EVERYTHING).runStreaming(promote, sink)).success);
      assert((await fleet.rpc("canary", "alice", EVERYTHING).runStreaming(check, sink)).success);
      assertEquals(sink.text("stdout"), "promoted\nchecked");

      const aliceDenied = await assertRejects(
        () => fleet.rpc("canary", "alice", EVERYTHING).runStreaming(promote, sink),
        CapabilityDenied,
      );
      assertEquals([aliceDenied.scope, aliceDenied.action], ["agent", "sando.promote"]);
      const sandoDenied = await assertRejects(
        () => fleet.rpc("canary", "sando", EVERYTHING).runStreaming(check, sink),
        CapabilityDenied,
      );
      assertEquals([sandoDenied.scope, sandoDenied.action], ["agent", "fleet.check"]);
      assertEquals(sink.text("stdout"), "promoted\nchecked", "a denied step never ran");
    });

    await t.step("a CapMap grant from the tailnet policy takes effect", async () => {
      // canary's config grants group:release nothing: bob's `observe` there
      // comes from his CapMap alone (its bento.* values are above the ceiling).
      assertEquals(await granted(fleet, "canary", "bob"), ["observe"]);
      const facts = await fleet.rpc("canary", "bob", EVERYTHING).observe();
      assertEquals(facts.hostname, "canary");
      // On plain, config (bento.*) and CapMap grants meet the ceiling (no bento.sign there):
      // bento.build from both, observe from the CapMap alone.
      assertEquals(await granted(fleet, "plain", "bob"), ["bento.build", "observe"]);

      // The same node without the CapMap: the grant is gone (a new connection
      // is a new whois; the agent caches per connection).
      const bob = fleet.peers.bob;
      fleet.tailnet.set(bob, whoisText("capmap-grant", { addresses: [`${bob}/32`], capMap: null }));
      try {
        assertEquals(await granted(fleet, "canary", "bob"), []);
        assertEquals(await granted(fleet, "plain", "bob"), ["bento.build"]);
        const denied = await assertRejects(
          () => fleet.rpc("canary", "bob", EVERYTHING).observe(),
          CapabilityDenied,
        );
        assertEquals(denied.scope, "agent");
      } finally {
        fleet.tailnet.set(
          bob,
          whoisText("capmap-grant", { addresses: [`${bob}/32`] }),
        );
      }
      assertEquals(await granted(fleet, "canary", "bob"), ["observe"]);
    });

    await t.step("a peer unknown to whois gets 401 (TransportError unknown_peer)", async () => {
      const raw = await capabilitiesRaw(fleet, "prod", "stranger");
      assertEquals(raw.status, 401);
      assertEquals((raw.body.error as Record<string, unknown>).code, "unknown_peer");

      const stranger = fleet.rpc("prod", "stranger", EVERYTHING);
      const error = await assertRejects(() => stranger.remoteCapabilities(), TransportError);
      assertEquals(error.kind, "unknown_peer");
      const sink = new CollectingSink();
      const run = await assertRejects(
        () => stranger.runStreaming(Step.shell("fleet.check", "echo never"), sink),
        TransportError,
      );
      assertEquals(run.kind, "unknown_peer");
      assertEquals(sink.lines.length, 0);
      const audit = fleet.host("prod").agent.auditLines()
        .filter((line) => String(line.from).startsWith(`${fleet.peers.stranger}:`));
      // Refused at the door: the first refusal of an address a minute is itemised (issue 13).
      assert(audit.length >= 1, "the agent audits the refusals");
      for (const line of audit) {
        assertEquals([line.decision, line.status], ["denied", 401]);
        assertStringIncludes(String(line.reason), "unknown peer");
        assertFalse("exitCode" in line && line.exitCode !== undefined);
      }
      assertInstanceOf(error, TransportError);
    });
  },
);
