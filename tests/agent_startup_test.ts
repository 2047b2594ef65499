// Issue 18.4: the agent's start-up output holds only its own lines. Deno's
// "Permissions in the config file is an experimental feature" warning and its
// "Failed to resolve 'tailscale' for allow-run" note (a bare name of the run
// list not on this PATH) are Deno's diagnostics, which `--quiet` in the task
// silences; `deno task` echoes the command it runs unless given -q itself.

import { assert, assertEquals, assertMatch } from "@deps/assert";
import { loopbackConfig } from "./_agent_process.ts";

const REPO = new URL("../", import.meta.url).pathname;

/** Runs `deno task [-q] agent --config FILE` until it listens, stops it, returns every line. */
async function taskOutput(taskFlags: string[]): Promise<string[]> {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "startup-" });
  try {
    await Deno.writeTextFile(`${dir}/config.toml`, loopbackConfig().replaceAll("{dir}", dir));
    const child = new Deno.Command(Deno.execPath(), {
      args: ["task", ...taskFlags, "agent", "--config", `${dir}/config.toml`],
      cwd: REPO,
      // A PATH without tailscale, as on most servers: the run list's bare name does not resolve.
      env: { NO_COLOR: "1", PATH: "/usr/bin:/bin" },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let text = "";
    const decoder = new TextDecoder();
    const reading = Promise.all([child.stdout, child.stderr].map(async (stream) => {
      for await (const chunk of stream) text += decoder.decode(chunk, { stream: true });
    }));
    const deadline = Date.now() + 30_000;
    while (!text.includes(" listening on ") && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert(text.includes(" listening on "), `the agent did not start:\n${text}`);
    child.kill("SIGTERM");
    const status = await child.status;
    await reading;
    assertEquals(status.code, 0, text);
    return text.trimEnd().split("\n");
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test("18.4 the agent's start-up output is its own lines only (deno task -q agent)", async () => {
  const lines = await taskOutput(["-q"]);
  for (const line of lines) assertMatch(line, /^ops-agent[: ]/, lines.join("\n"));
  assertMatch(lines[0], /^ops-agent \S+ listening on http:\/\/127\.0\.0\.1:\d+ /);
  assertEquals(lines.at(-1), "ops-agent: stopped");
});

Deno.test("18.4 without -q, deno task adds only its echo of the command", async () => {
  const lines = await taskOutput([]);
  const others = lines.filter((line) => !/^ops-agent[: ]/.test(line));
  assertEquals(others.length, 1, lines.join("\n"));
  assertMatch(others[0], /^Task agent deno run --quiet /);
});
