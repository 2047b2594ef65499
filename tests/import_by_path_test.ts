// A script outside the clone imports the library by path, with no import map
// of its own (`--no-config`): library modules must use full specifiers
// (`node:`, `npm:`), never the project's `@deps/...` aliases.

import { assertEquals } from "@deps/assert";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

const SCRIPT = `
import { CapabilitySet, CollectingSink, LocalExec, Step } from "${ROOT}mod.ts";
import { AgentRpc } from "${ROOT}transports/rpc.ts";
import { parseConfig } from "${ROOT}agent/mod.ts";

const exec = new LocalExec(CapabilitySet.of("demo.*"));
const sink = new CollectingSink();
const out = await exec.runStreaming(Step.exec("demo.echo", ["echo", "by path"]), sink);
console.log(JSON.stringify({
  exit: out.exitCode,
  text: sink.text("stdout"),
  rpc: typeof AgentRpc,
  agent: typeof parseConfig,
}));
`;

async function deno(args: string[], cwd: string): Promise<Deno.CommandOutput> {
  return await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    env: { DENO_NO_UPDATE_CHECK: "1" },
    stdin: "null",
  }).output();
}

Deno.test("a script outside the clone imports mod.ts, ./rpc and ./agent by path with no import map", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-outside-" });
  try {
    const script = `${dir}/use.ts`;
    await Deno.writeTextFile(script, SCRIPT);
    const check = await deno(["check", "--no-config", script], dir);
    const checkErr = new TextDecoder().decode(check.stderr);
    assertEquals(check.code, 0, `deno check failed:\n${checkErr}`);
    const run = await deno(["run", "--no-config", "--allow-all", script], dir);
    const runErr = new TextDecoder().decode(run.stderr);
    assertEquals(run.code, 0, `deno run failed:\n${runErr}`);
    const result = JSON.parse(new TextDecoder().decode(run.stdout).trim().split("\n").at(-1)!);
    assertEquals(result, { exit: 0, text: "by path", rpc: "function", agent: "function" });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
