// The ops-exec CLI as a process against real remote parts: a private sshd
// on a loopback port (tests/_sshd.ts) and a real ops-agent over real HTTP
// (tests/_agent_process.ts). Each verb's output, exit codes and --json
// shapes on both; a fan-out with one host unreachable; an agent-side denial
// that never starts; Ctrl-C during a step on each transport.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "@deps/assert";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import {
  cli,
  events,
  keys,
  ofType,
  readUntil,
  spawnCli,
  withoutDenoWarnings,
  writeInventory,
} from "./_cli.ts";
import { HAS_PROC, isAlive, waitFor } from "./_procs.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";
import { type Sshd, sshdMissing, startSshd } from "./_sshd.ts";

const skip = sshdMissing() ??
  missing([RSYNC !== null, "rsync"], [HAS_PROC, "/proc (Linux) to watch process trees"]);

const sshd: Sshd | null = skip ? null : await startSshd();
await Deno.mkdir("/tmp/ops-agent", { recursive: true });
/** Scratch space: the ssh account's remote dir, the agent's root, local files. */
const base = skip
  ? ""
  : await Deno.realPath(await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "cli-" }));
const remoteDir = `${base}/ssh`;
const agentRoot = `${base}/agent`;
const agent = skip ? null : await startAgentProcess(
  loopbackConfig({
    ceiling: ["test.*", "observe", `sync.push:${agentRoot}`, `sync.pull:${agentRoot}`],
  }),
);
if (!skip) {
  await Deno.mkdir(remoteDir, { mode: 0o755 });
  await Deno.mkdir(agentRoot);
  await Deno.chmod(base, 0o755);
  if (Deno.uid() === 0) {
    await new Deno.Command("chown", { args: [`${sshd!.user}:`, remoteDir] }).output();
  }
}
const agentPort = agent ? Number(new URL(agent.url).port) : 0;
const closedPort = skip ? 0 : freePort();

const inventory = skip ? "" : await writeInventory(`
[hosts.here]
transport = "local"
allow = ["test.*"]

[hosts.box]
transport = "ssh"
address = "${sshd!.host}"
port = ${sshd!.port}
user = "${sshd!.user}"
identity_file = "${sshd!.clientKey}"
known_hosts_file = "${sshd!.knownHosts}"
allow = ["test.*", "observe", "sync.push:${remoteDir}", "sync.pull:${remoteDir}"]

[hosts.ag]
transport = "agent"
address = "127.0.0.1"
port = ${agentPort}
allow = ["test.*", "observe", "deploy.*", "sync.push:${agentRoot}", "sync.pull:${agentRoot}"]

[hosts.gone]
transport = "agent"
address = "127.0.0.1"
port = ${closedPort}
allow = ["test.*"]

[groups.fleet]
hosts = ["here", "box", "ag", "gone"]
`);

globalThis.addEventListener("unload", () => {
  if (skip) return;
  try {
    agent!.child.kill("SIGKILL");
  } catch {
    // Gone already.
  }
  try {
    Deno.removeSync(base, { recursive: true });
  } catch {
    // Removed already.
  }
});

function remoteTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: skip !== undefined, fn, sanitizeResources: false, sanitizeOps: false });
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

const EXIT_KEYS = [
  "action",
  "cancelled",
  "durationMs",
  "exitCode",
  "host",
  "lines",
  "signal",
  "status",
  "success",
  "timedOut",
  "type",
];

for (const host of ["box", "ag"]) {
  const transport = host === "box" ? "ssh" : "agent";
  const root = host === "box" ? remoteDir : agentRoot;

  remoteTest(
    `cli over ${transport}: run and sh stream prefixed lines; exit and --json shapes`,
    async () => {
      const sh = await cli([
        "sh",
        host,
        "-i",
        inventory,
        "-a",
        "test.echo",
        "-e",
        "WHO=there",
        'echo "hi $WHO"; echo warn >&2; exit 5',
      ]);
      assertEquals(sh.code, 5, sh.stderr);
      assertEquals(sh.stdout, `${host}  out  hi there\n`);
      assertStringIncludes(sh.stderr, `${host}  err  warn\n`);

      const run = await cli([
        "run",
        host,
        "-i",
        inventory,
        "-a",
        "test.args",
        "--json",
        "--stdin",
        "-",
        "--",
        "/bin/sh",
        "-c",
        'printf "%s|" "$@"; cat',
        "sh",
        "two words",
        "$HOME",
      ], { stdin: "in\n" });
      assertEquals(run.code, 0, run.stderr);
      const all = events(run.stdout);
      assertEquals(ofType(all, "line").map((l) => [l.host, l.stream, l.text]), [[
        host,
        "stdout",
        "two words|$HOME|in",
      ]]);
      const [exit] = ofType(all, "exit");
      assertEquals(keys(exit), EXIT_KEYS);
      assertEquals([exit.host, exit.status, exit.exitCode], [host, "ok", 0]);
      assertEquals(all.at(-1)!.type, "summary");
    },
  );

  remoteTest(`cli over ${transport}: observe and caps`, async () => {
    const observe = await cli(["observe", host, "-i", inventory]);
    assertEquals(observe.code, 0, observe.stderr);
    assertMatch(observe.stdout, new RegExp(`^${host} {2}${Deno.hostname()}: linux/`));
    const json = await cli(["observe", host, "-i", inventory, "--json"]);
    const [facts] = ofType(events(json.stdout), "observation");
    assertEquals([facts.host, facts.hostname], [host, Deno.hostname()]);
    assert(
      (facts.disks as { path: string }[]).some((d) => d.path === root),
      JSON.stringify(facts.disks),
    );

    const caps = await cli(["caps", host, "-i", inventory, "--json"]);
    assertEquals(caps.code, 0, caps.stderr);
    const [grant] = ofType(events(caps.stdout), "capabilities");
    assertEquals(grant.source, "inventory");
    if (host === "ag") {
      assertEquals(grant.agent, [
        "observe",
        `sync.pull:${agentRoot}`,
        `sync.push:${agentRoot}`,
        "test.*",
      ]);
      assertEquals(grant.effective, [
        "observe",
        `sync.pull:${agentRoot}`,
        `sync.push:${agentRoot}`,
        "test.*",
      ]);
      assert((grant.caller as string[]).includes("deploy.*"));
      const text = await cli(["caps", host, "-i", inventory]);
      assertStringIncludes(text.stdout, "ag  agent grants this caller: observe, sync.pull:");
    } else {
      assertEquals([grant.agent, grant.effective], [null, null]);
    }
  });

  remoteTest(`cli over ${transport}: push and pull`, async () => {
    const src = await Deno.makeTempDir();
    await Deno.writeTextFile(`${src}/one.txt`, "one\n");
    await Deno.mkdir(`${src}/d`);
    await Deno.writeTextFile(`${src}/d/two.txt`, "two\n");
    const push = await cli(["push", host, "-i", inventory, `${src}/`, `${root}/rel/1/`]);
    assertEquals(push.code, 0, push.stderr);
    assertMatch(push.stdout, new RegExp(`^${host} {2}pushed 2 files, `));
    assertEquals(await Deno.readTextFile(`${root}/rel/1/d/two.txt`), "two\n");
    const back = await Deno.makeTempDir();
    const pull = await cli(["pull", host, "-i", inventory, "--json", `${root}/rel/1/`, `${back}/`]);
    assertEquals(pull.code, 0, pull.stderr);
    const [sync] = ofType(events(pull.stdout), "sync");
    assertEquals([sync.host, sync.action, sync.status, sync.filesTransferred], [
      host,
      "sync.pull",
      "ok",
      2,
    ]);
    assertEquals(await Deno.readTextFile(`${back}/one.txt`), "one\n");
    // Outside the grant: refused here, before rsync starts.
    const outside = await cli(["push", host, "-i", inventory, `${src}/`, `${base}/elsewhere/`]);
    assertEquals(outside.code, 77, outside.stderr);
    assert(!(await exists(`${base}/elsewhere`)));
    await Deno.remove(src, { recursive: true });
    await Deno.remove(back, { recursive: true });
  });

  remoteTest(
    `cli over ${transport}: SIGINT during a step kills its process tree, exit 130`,
    async () => {
      const child = spawnCli([
        "sh",
        host,
        "-i",
        inventory,
        "-a",
        "test.sleep",
        "--grace",
        "1s",
        'sleep 300 & echo "child $!"; echo "shell $$"; wait',
      ]);
      const { text, rest } = await readUntil(child, /child \d+\n.*shell \d+\n/s);
      const pids = [...text.matchAll(/(?:child|shell) (\d+)/g)].map((m) => Number(m[1]));
      assertEquals(pids.length, 2);
      assert(pids.every(isAlive), `not running: ${pids}`);
      child.kill("SIGINT");
      const status = await child.status;
      await rest;
      const stderr = withoutDenoWarnings(await new Response(child.stderr).text());
      // Exited by itself, after cancelling: not killed by the signal.
      assertEquals([status.code, status.signal], [130, null], stderr);
      assertStringIncludes(stderr, "interrupted: cancelling every running step");
      assert(await waitFor(() => !pids.some(isAlive), 5000), `survivors: ${pids.filter(isAlive)}`);
    },
  );
}

remoteTest(
  "cli through an agent: an action the agent refuses never starts (marker), exit 77",
  async () => {
    const marker = `${base}/agent-denied`;
    const result = await cli([
      "sh",
      "ag",
      "-i",
      inventory,
      "--json",
      "-a",
      "deploy.go",
      `touch ${marker}`,
    ]);
    assertEquals(result.code, 77, result.stderr);
    const [error] = ofType(events(result.stdout), "error");
    assertEquals([error.status, error.code, error.scope, error.action], [
      "denied",
      "capability_denied",
      "agent",
      "deploy.go",
    ]);
    assertStringIncludes(error.message as string, "ops-exec caps ag shows what the agent grants");
    assert(!(await exists(marker)), "the step the agent refused ran");
    // A URL target with --allow reaches the same agent.
    const url = await cli([
      "sh",
      `agent://127.0.0.1:${agentPort}`,
      "--allow",
      "test.*",
      "-a",
      "test.hi",
      "echo via url",
    ]);
    assertEquals(url.code, 0, url.stderr);
    assertEquals(url.stdout, `127.0.0.1:${agentPort}  out  via url\n`);
  },
);

remoteTest(
  "cli: an ssh:// target authenticates as ssh does; refused here, it is unreachable (69)",
  async () => {
    // Not the inventory's key or known_hosts: ssh's own defaults, which this sshd does not accept.
    const result = await cli([
      "sh",
      `ssh://${sshd!.user}@${sshd!.host}:${sshd!.port}`,
      "--allow",
      "test.*",
      "-a",
      "test.hi",
      "--json",
      "echo never",
    ]);
    assertEquals(result.code, 69, result.stderr);
    const [error] = ofType(events(result.stdout), "error");
    assertEquals(error.status, "unreachable");
    assertMatch(error.code as string, /^transport_/);
  },
);

remoteTest(
  "cli: a fan-out over a group with --concurrency, one host unreachable: the others' results, exit 69 naming it",
  async () => {
    const result = await cli([
      "sh",
      "fleet",
      "-i",
      inventory,
      "-c",
      "2",
      "-a",
      "test.hi",
      "echo hi from $(id -un)",
    ]);
    assertEquals(result.code, 69, result.stderr);
    assertMatch(result.stdout, /^here {2}out {2}hi from /m);
    assertMatch(result.stdout, new RegExp(`^box {3}out {2}hi from ${sshd!.user}$`, "m"));
    assertMatch(result.stdout, /^ag {4}out {2}hi from /m);
    assertMatch(result.stderr, /^here\s+ok\s+0\s/m);
    assertMatch(result.stderr, /^box\s+ok\s+0\s/m);
    assertMatch(result.stderr, /^ag\s+ok\s+0\s/m);
    assertMatch(result.stderr, /^gone\s+unreachable\s+-\s+\S+\s+.*connection refused/m);
    assertStringIncludes(
      result.stderr,
      "ops-exec: 1 of 4 hosts did not succeed: gone (unreachable)",
    );

    const json = await cli([
      "sh",
      "fleet",
      "-i",
      inventory,
      "-c",
      "2",
      "--json",
      "-a",
      "test.hi",
      "echo hi",
    ]);
    assertEquals(json.code, 69);
    const all = events(json.stdout);
    const [summary] = ofType(all, "summary");
    assertEquals(
      (summary.hosts as Record<string, unknown>[]).map((h) => [h.host, h.status, h.exitCode]),
      [["here", "ok", 0], ["box", "ok", 0], ["ag", "ok", 0], ["gone", "unreachable", null]],
    );
    assertEquals([summary.ok, summary.exitCode], [false, 69]);
    const [error] = ofType(all, "error");
    assertEquals([error.host, error.status, error.code, error.kind], [
      "gone",
      "unreachable",
      "transport_unreachable",
      "unreachable",
    ]);
    // Without an unreachable host, a step that fails on one host (the ssh account is not root) makes it 1.
    const failed = await cli([
      "sh",
      "here",
      "box",
      "ag",
      "-i",
      inventory,
      "-a",
      "test.f",
      'test "$(id -un)" = root',
    ]);
    assertEquals(failed.code, Deno.uid() === 0 ? 1 : 0, failed.stderr);
  },
);
