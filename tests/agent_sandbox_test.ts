// Acceptance 8 of the agent issue: the `agent` permission set of deno.json is
// a second sandbox below the capability check. A probe run under exactly
// that set (`-P=agent`) calls the spawn core directly: a program outside the
// set's run scope is refused by Deno itself (NotCapable), /bin/sh (what the
// agent runs steps with) is allowed, and so are only the listed paths.

import { assert, assertEquals } from "@deps/assert";
import { CapabilitySet, CollectingSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";

const REPO = new URL("../", import.meta.url).pathname;

Deno.test("acceptance 8: under -P=agent, spawning outside the run scope fails in Deno itself", async () => {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      "-P=agent",
      "--config",
      `${REPO}deno.json`,
      `${REPO}tests/_agent_sandbox_probe.ts`,
    ],
    cwd: REPO,
    env: { AWS_SECRET_ACCESS_KEY: "not for the agent" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stderr = new TextDecoder().decode(out.stderr);
  assertEquals(out.code, 0, stderr);
  const report = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(report.all, "prompt", "run is scoped, not granted outright");
  assertEquals(report.spawn["/bin/sh"], { ok: true, exitCode: 0, stdout: "inside" });
  for (const program of ["/usr/bin/id", "id", "/usr/bin/python3"]) {
    assertEquals(report.spawn[program], { ok: false, error: "NotCapable" }, program);
  }
  assertEquals(report.command, "NotCapable");
  assertEquals(report.killGroup, "NotCapable", "group signals need the kill program or the shell");
  assertEquals(report.readShadow, "NotCapable");
  assertEquals(report.readAgentDir, "allowed");
  assertEquals(report.writeEtc, "NotCapable");
  assertEquals(report.envSecret, "NotCapable");
  assertEquals(report.envHome, "allowed");
  assertEquals(report.net, {
    loopback: "granted",
    tailnet: "granted",
    lan: "prompt",
    any: "prompt",
  });
});

Deno.test("acceptance 8: through the agent, exec steps still run any program (via /bin/sh)", async () => {
  await using agent = await startAgentProcess(loopbackConfig());
  await using client = new AgentRpc({ url: agent.url }, CapabilitySet.of("test.*"));
  const sink = new CollectingSink();
  const out = await client.runStreaming(Step.exec("test.id", ["id", "-u"]), sink);
  assertEquals(out.exitCode, 0);
  assertEquals(sink.text(), String(Deno.uid()));
  const missingSink = new CollectingSink();
  const missing = await client.runStreaming(
    Step.exec("test.nope", ["no-such-program-x"]),
    missingSink,
  );
  assertEquals(missing.exitCode, 127);
  assertEquals(missingSink.text("stderr"), "ops-exec: no-such-program-x: command not found");
  const args = new CollectingSink();
  await client.runStreaming(
    Step.exec("test.args", ["printf", "%s|", "a b", "$HOME", "'q'", ""]),
    args,
  );
  assertEquals(args.text(), "a b|$HOME|'q'||");
  assert(agent.auditLines().every((line) => line.decision === "allowed"));
});
