// Issue 18.6: one rule for where a step starts, on every transport. A step
// without `cwd` starts in the home directory of the account it runs as —
// the caller's account for LocalExec, the remote account over ssh (where
// sshd starts every session), the agent's account for AgentRpc — never in
// whatever directory the caller or the agent happened to be started from.
// A step with `cwd` starts there.

import { assertEquals, assertNotEquals } from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { CollectingSink } from "../executor/sinks.ts";
import type { Executor } from "../executor/types.ts";
import { Step } from "../step/mod.ts";
import { LocalExec } from "../transports/local.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { SshExec } from "../transports/ssh.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { type Sshd, sshdMissing, startSshd } from "./_sshd.ts";

const caps = CapabilitySet.of("test.*");
/** Where the step is, and where its account's home is (both with symlinks resolved). */
const WHERE = Step.shell("test.where", 'pwd -P; cd "$HOME" && pwd -P');

async function where(exec: Executor, step = WHERE): Promise<[string, string]> {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(step, sink);
  assertEquals(out.exitCode, 0, sink.text());
  const [cwd, home] = sink.text("stdout").split("\n");
  return [cwd, home];
}

async function checkRule(exec: Executor): Promise<void> {
  const [cwd, home] = await where(exec);
  assertEquals(cwd, home, `${exec.host}: a step without cwd starts in its account's home`);
  const [explicit] = await where(exec, Step.shell("test.where", "pwd -P", { cwd: "/" }));
  assertEquals(explicit, "/");
}

// The callers below are started from the repository, not from a home directory.
const here = Deno.realPathSync(Deno.cwd());

Deno.test("18.6 LocalExec: a step without cwd starts in the home directory, not the caller's cwd", async () => {
  assertNotEquals(here, Deno.realPathSync(Deno.env.get("HOME")!));
  await checkRule(new LocalExec(caps, { host: "local" }));
});

Deno.test("18.6 LocalExec: with no home directory on disk, a step starts in / (as sshd does)", async () => {
  const home = Deno.env.get("HOME")!;
  Deno.env.set("HOME", "/nonexistent/ops-exec-home");
  try {
    const [cwd] = await where(new LocalExec(caps), Step.shell("test.where", "pwd -P"));
    assertEquals(cwd, "/");
  } finally {
    Deno.env.set("HOME", home);
  }
});

Deno.test("18.6 AgentRpc: a step without cwd starts in the agent account's home, not the agent's cwd", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  // The agent was started from the repository.
  await using rpc = new AgentRpc({ url: agent.url, host: "agent" }, caps);
  await checkRule(rpc);
});

const sshSkip = sshdMissing();
Deno.test({
  name: "18.6 SshExec: a step without cwd starts in the remote account's home, in every supervisor",
  ignore: sshSkip !== undefined,
  fn: async () => {
    const sshd: Sshd = await startSshd();
    try {
      for (const mode of [{}, { sessionPerStep: true }, { remoteSupervisor: "sh" as const }]) {
        await using ssh = new SshExec({
          host: sshd.host,
          port: sshd.port,
          user: sshd.user,
          identityFile: sshd.clientKey,
          knownHostsFile: sshd.knownHosts,
          ...mode,
        }, caps);
        await checkRule(ssh);
      }
    } finally {
      await sshd.stop();
    }
  },
});
