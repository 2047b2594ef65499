// The fleet itself: every host is a real, separate host (its own address,
// sshd, agent, hostname and /srv), and the tests' traffic stays off the root
// namespace's network.

import { exists } from "../_prereq.ts";
import { assert, assertEquals } from "@deps/assert";
import { CapabilitySet, CollectingSink, Step } from "../../mod.ts";
import { APP_ROOT, BUILDS_ROOT, fleetTest } from "./_fleet.ts";

const FLEET = CapabilitySet.of("fleet.*", "observe");

fleetTest("the fleet: separate hosts, each reachable over ssh and its agent", async (fleet, t) => {
  await t.step(
    "the tests run in the controller's namespace, on tailnet addresses only",
    async () => {
      const out = await new Deno.Command("ip", { args: ["netns", "identify"] }).output();
      assertEquals(new TextDecoder().decode(out.stdout).trim(), fleet.net.controller.netns);
      const addresses = Deno.networkInterfaces()
        .filter((i) => i.family === "IPv4" && i.name !== "lo")
        .map((i) => i.address).sort();
      assertEquals(addresses, [...fleet.net.controller.addresses].sort());
    },
  );

  await t.step("each agent answers on its host's address and observes its own host", async () => {
    for (const host of fleet.hosts.values()) {
      const health = await fetch(`${host.url}/v1/health`).then((r) => r.json());
      assertEquals(health.ok, true);
      const facts = await fleet.rpc(host.name, "alice", FLEET).observe();
      assertEquals(facts.hostname, host.name);
      assertEquals(facts.agent?.tailnetSelf?.name, `${host.name}.tail78f774.ts.net`);
    }
  });

  await t.step("each host has its own /srv, shared by its sshd and its agent", async () => {
    const marker = `marker-${crypto.randomUUID()}`;
    const write = await fleet.inHost("canary", `echo ${marker} > ${APP_ROOT}/marker`);
    assertEquals(write.code, 0, write.stderr);
    for (const host of fleet.hosts.values()) {
      const rpc = await runBoth(fleet, host.name, `cat ${APP_ROOT}/marker 2>/dev/null || true`);
      assertEquals(rpc.agent, host.name === "canary" ? marker : "", `agent on ${host.name}`);
      assertEquals(rpc.ssh, host.name === "canary" ? marker : "", `ssh on ${host.name}`);
      const roots = await fleet.inHost(host.name, `test -d ${APP_ROOT} && test -d ${BUILDS_ROOT}`);
      assertEquals(roots.code, 0);
    }
    // And the controller's own /srv has none of it.
    assert(!(await exists(`${APP_ROOT}/marker`)));
  });
});

async function runBoth(
  fleet: Parameters<Parameters<typeof fleetTest>[1]>[0],
  host: string,
  script: string,
): Promise<{ agent: string; ssh: string }> {
  const step = Step.shell("fleet.read", script);
  const viaAgent = new CollectingSink();
  const viaSsh = new CollectingSink();
  const a = await fleet.rpc(host, "alice", FLEET).runStreaming(step, viaAgent);
  const s = await fleet.ssh(host, FLEET).runStreaming(step, viaSsh);
  assert(a.success && s.success, `${host}: agent exit ${a.exitCode}, ssh exit ${s.exitCode}`);
  return { agent: viaAgent.text("stdout"), ssh: viaSsh.text("stdout") };
}
