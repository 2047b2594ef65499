// Run under the agent's own permission set (see agent_sandbox_test.ts):
//   deno run --no-prompt -P=agent --config deno.json tests/_agent_sandbox_probe.ts
// It reaches the spawn layer directly, below any capability check, and
// reports what Deno itself allowed, as one JSON object on stdout.

import { CollectingSink } from "../executor/sinks.ts";
import { runProcess } from "../executor/_spawn.ts";

type Outcome = { ok: true; exitCode: number | null; stdout: string } | { ok: false; error: string };

async function spawn(argv: string[]): Promise<Outcome> {
  const sink = new CollectingSink();
  try {
    const result = await runProcess(
      { argv, env: { PATH: "/usr/bin:/bin" }, killGraceMs: 100 },
      sink,
    );
    return { ok: true, exitCode: result.exitCode, stdout: sink.text("stdout") };
  } catch (error) {
    return { ok: false, error: error instanceof Error ? error.name : String(error) };
  }
}

async function attempt(fn: () => unknown): Promise<string> {
  try {
    await fn();
    return "allowed";
  } catch (error) {
    return error instanceof Error ? error.name : String(error);
  }
}

const report = {
  spawn: {
    "/bin/sh": await spawn(["/bin/sh", "-c", "echo inside"]),
    "/usr/bin/id": await spawn(["/usr/bin/id", "-u"]),
    "id": await spawn(["id", "-u"]),
    "/usr/bin/python3": await spawn(["/usr/bin/python3", "-c", "print(1)"]),
  },
  command: await attempt(() => new Deno.Command("/usr/bin/id").outputSync()),
  killGroup: await attempt(() => Deno.kill(-Deno.pid, "SIGCONT")),
  readShadow: await attempt(() => Deno.readTextFile("/etc/shadow")),
  readAgentDir: await attempt(() => Deno.readDir("/tmp/ops-agent")),
  writeEtc: await attempt(() => Deno.writeTextFile("/etc/ops-agent-probe", "x")),
  envSecret: await attempt(() => Deno.env.get("AWS_SECRET_ACCESS_KEY")),
  envHome: await attempt(() => Deno.env.get("HOME")),
  net: {
    loopback: Deno.permissions.querySync({ name: "net", host: "127.0.0.1:7070" }).state,
    tailnet: Deno.permissions.querySync({ name: "net", host: "100.101.102.103:7070" }).state,
    lan: Deno.permissions.querySync({ name: "net", host: "192.168.1.10:7070" }).state,
    any: Deno.permissions.querySync({ name: "net", host: "0.0.0.0:7070" }).state,
  },
  all: Deno.permissions.querySync({ name: "run" }).state,
};
console.log(JSON.stringify(report));
