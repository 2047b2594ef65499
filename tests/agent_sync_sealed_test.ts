// A sync grant can never reach a byte outside its root (issue 9), shown
// against the real agent process and real rsync: the race between the check
// at the upgrade and rsync's use of the path, filter rules that read files,
// the upload window, idle tunnels, device nodes and fifos, symlinked roots,
// and the legitimate trees that must still sync byte-identical.

import { assert, assertEquals, assertRejects, assertStringIncludes } from "@deps/assert";
import { CapabilityDenied, CapabilitySet, TransportError } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { WsClient } from "../transports/_ws_client.ts";
import { loopbackConfig, rssBytes, startAgentProcess } from "./_agent_process.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";
import { descendantsOf, waitFor } from "./_procs.ts";
import { OPENRSYNC, openrsyncHost } from "./_openrsync.ts";

const skip = () => missing([RSYNC !== null, "rsync"]) !== undefined;
const ALL = CapabilitySet.of("sync.*");
const REPO = new URL("../", import.meta.url).pathname;

interface Fixture extends AsyncDisposable {
  base: string;
  root: string;
  outside: string;
  agentUrl: string;
  agentPid: number;
  auditLines(): Record<string, unknown>[];
}

/** A temp tree, and an agent whose ceiling grants push/pull under `root` only. */
async function fixture(
  extra: { config?: string; maxConcurrent?: number; prefix?: string[] } = {},
): Promise<Fixture> {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const base = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sealed-" }),
  );
  const root = `${base}/root`;
  const outside = `${base}/outside`;
  for (const dir of [root, outside]) await Deno.mkdir(dir);
  const toml = loopbackConfig({
    ceiling: [`sync.push:${root}`, `sync.pull:${root}`],
    maxConcurrent: extra.maxConcurrent,
  }).replace("[identity]", `${extra.config ?? ""}\n[identity]`);
  const agent = await startAgentProcess(toml, { prefix: extra.prefix });
  return {
    base,
    root,
    outside,
    agentUrl: agent.url,
    agentPid: agent.pid,
    auditLines: () => agent.auditLines(),
    [Symbol.asyncDispose]: async () => {
      await agent[Symbol.asyncDispose]();
      await Deno.remove(base, { recursive: true }).catch(() => {});
    },
  };
}

async function write(path: string, data: string) {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  await Deno.writeTextFile(path, data);
}

/** Every entry under `dir`, recursively (links not followed): relative path -> kind or content. */
async function listing(dir: string, prefix = ""): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    const full = `${dir}/${rel}`;
    if (entry.isSymlink) out[rel] = `-> ${await Deno.readLink(full)}`;
    else if (entry.isDirectory) {
      out[`${rel}/`] = "dir";
      Object.assign(out, await listing(dir, rel));
    } else if (entry.isFile) out[rel] = await Deno.readTextFile(full);
    else out[rel] = "special";
  }
  return out;
}

/** The agent's tunnel program as rsync's remote shell (`--rsh`), optionally behind `prefix`. */
function tunnelShell(fx: Fixture, prefix: string[] = []): string {
  const url = new URL(fx.agentUrl);
  return [
    ...prefix,
    Deno.execPath(),
    "run",
    "--quiet",
    "--no-prompt",
    `--allow-net=${url.host}`,
    `--config=${REPO}deno.json`,
    `${REPO}transports/sync_tunnel.ts`,
    `--url=${url.origin}`,
  ].join(" ");
}

/** The local rsync, by hand, with the agent tunnel as its remote shell (`ops-agent:PATH` operands). */
function rsync(args: string[], rsh: string): Promise<Deno.CommandOutput> {
  return new Deno.Command("rsync", {
    args: ["--blocking-io", "--rsh", rsh, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
}

/**
 * rsync run by hand through the agent tunnel, whose bytes from the local
 * rsync are held back until `release()`: the upgrade (and the agent's check)
 * happens at once, rsync's own protocol only after.
 */
function heldTransfer(
  fx: Fixture,
  action: "push" | "pull",
  local: string,
  remote: string,
): { release(): Promise<void>; done: Promise<Deno.CommandOutput> } {
  const gate = `${fx.base}/gate-${crypto.randomUUID()}`;
  const held = `${fx.base}/held.sh`;
  Deno.writeTextFileSync(
    held,
    // rsync's bytes to the tunnel pass through cat once the gate exists.
    'gate=$1; shift; mkfifo "$gate.fifo"; exec 3<&0\n' +
      // (It gives up when the fixture's directory is gone.)
      '{ while [ ! -e "$gate" ] && [ -d "${gate%/*}" ]; do sleep 0.02; done; exec cat <&3; } >"$gate.fifo" &\n' +
      'exec "$@" <"$gate.fifo" 3<&-\n',
  );
  const [source, destination] = action === "push"
    ? [local, `ops-agent:${remote}`]
    : [`ops-agent:${remote}`, local];
  const done = rsync(["-rlpt", "--", source, destination], tunnelShell(fx, ["sh", held, gate]));
  return { release: () => Deno.writeTextFile(gate, ""), done };
}

/** The audit line of the (first) transfer of `action` on `path`, once it is written. */
async function auditLine(
  fx: Fixture,
  action: string,
  path: string,
): Promise<Record<string, unknown>> {
  const find = () =>
    fx.auditLines().find((l) => l.action === action && l.path === path && l.event !== "start");
  await waitFor(() => find() !== undefined, 10_000);
  const line = find();
  assert(line, `no audit line for ${action} ${path}`);
  return line;
}

/** The agent's `rsync --server` processes. */
function agentRsyncs(fx: Fixture): number[] {
  return descendantsOf(fx.agentPid).filter(isAgentRsync);
}

/**
 * Waits until the agent runs an rsync (the upgrade has happened), or has
 * already ended the transfer of `path` (the confinement refused it at once).
 */
async function agentRsyncStarted(fx: Fixture, path: string): Promise<void> {
  const started = () => agentRsyncs(fx).length > 0 || fx.auditLines().some((l) => l.path === path);
  assert(await waitFor(started, 10_000), "the agent's rsync did not start");
}

/** Whether `pid` is an `rsync --server` (the agent's; the local side's tunnel only names one). */
function isAgentRsync(pid: number): boolean {
  try {
    const argv = Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0");
    return /(^|\/)rsync$/.test(argv[0]) && argv[1] === "--server";
  } catch {
    return false;
  }
}

/**
 * The agents the confinement is tried with: [name, [agent] lines, command
 * prefix]. "openrsync agent" runs in a mount namespace whose /usr/bin/rsync is
 * openrsync (none of rsync 3.x's safeguards): the namespace alone confines it.
 */
const MODES: [string, string, string[] | undefined][] = [
  ["namespace", 'sync_confinement = "namespace"', undefined],
  ["none", 'sync_confinement = "none"', undefined],
  ...(OPENRSYNC === null ? [] : [[
    "namespace, openrsync agent",
    'sync_confinement = "namespace"\nrsync = "/usr/bin/rsync"',
    openrsyncHost(),
  ] as [string, string, string[]]]),
];

for (const [mode, config, prefix] of MODES) {
  for (const plant of ["a second allowed push", "ln -s on disk"] as const) {
    Deno.test(`the race (${mode}): a held push to ROOT/new/, ROOT/new -> outside planted by ${plant}, then released: nothing is written outside`, async () => {
      if (skip()) {
        return;
      }
      await using fx = await fixture({ config, prefix });
      await write(`${fx.base}/src/payload.txt`, "payload");
      const held = heldTransfer(fx, "push", `${fx.base}/src/`, `${fx.root}/new/`);
      await agentRsyncStarted(fx, `${fx.root}/new`);

      await plantLink(fx, plant);
      await held.release();
      const out = await held.done;

      assertEquals(await listing(fx.outside), {}, "nothing may be written outside the root");
      // Refused, or confined: the payload landed in a real ROOT/new directory.
      const inside = (await Deno.lstat(`${fx.root}/new`)).isDirectory &&
        await exists(`${fx.root}/new/payload.txt`);
      assert(
        !out.success || inside,
        `refused or confined: ${new TextDecoder().decode(out.stderr)}`,
      );
      const line = await auditLine(fx, "sync.push", `${fx.root}/new`);
      assertEquals([line.resolvedPath, line.root], [`${fx.root}/new`, fx.root]);
    });

    Deno.test(`the race (${mode}): a held pull of ROOT/new/, ROOT/new -> outside planted by ${plant}, then released: nothing is read outside`, async () => {
      if (skip()) return;
      await using fx = await fixture({ config, prefix });
      await write(`${fx.outside}/secret.txt`, "secret");
      const back = `${fx.base}/back`;
      await Deno.mkdir(back);
      const held = heldTransfer(fx, "pull", `${back}/`, `${fx.root}/new/`);
      await agentRsyncStarted(fx, `${fx.root}/new`);

      await plantLink(fx, plant);
      await held.release();
      const out = await held.done;

      assertEquals(await listing(back), {}, "nothing may be read from outside the root");
      assertEquals(out.success, false, "there is nothing to pull inside the root");
    });
  }
}

/** Makes ROOT/new a symlink to the outside directory. */
async function plantLink(fx: Fixture, how: "a second allowed push" | "ln -s on disk") {
  if (how === "ln -s on disk") {
    // What a step would do: an (empty) directory in the way is removed first.
    await Deno.remove(`${fx.root}/new`).catch(() => {});
    await Deno.symlink(fx.outside, `${fx.root}/new`);
    return;
  }
  const tree = `${fx.base}/plant`;
  await Deno.mkdir(tree);
  await Deno.symlink(fx.outside, `${tree}/new`);
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  // The agent may refuse to create a link out of the tree (then nothing is planted).
  await rpc.push(`${tree}/`, `${fx.root}/`).catch(() => {});
}

/** A pull or push by hand; its exit code, what the local side got, and its stderr. */
async function byHand(fx: Fixture, args: string[]) {
  const out = await rsync(args, tunnelShell(fx));
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

// Not with the openrsync agent: rsync 3.x will not send these rules to a
// protocol-27 peer ("filter rules are too modern for remote rsync"). What
// confines an openrsync agent's merge files is the same namespace as above.
for (const [mode, config, prefix] of MODES.filter(([, , prefix]) => prefix === undefined)) {
  Deno.test(`filter rules (${mode}): a dir-merge naming a file above the root, or a merge inside the root naming one outside it, changes nothing and reveals nothing`, async () => {
    if (skip()) return;
    await using fx = await fixture({ config, prefix });
    await write(`${fx.root}/app/a.txt`, "a");
    await write(`${fx.root}/app/b.log`, "b");
    await write(`${fx.base}/.rules`, "- *.txt\n"); // above the root
    await write(`${fx.outside}/rules`, "- *.log\n");
    await write(`${fx.outside}/secret.key`, "TOPSECRET-7f3a\n");

    // Each pull twice: with the rule naming the real file, and naming an absent one.
    const pulls: [string, string][] = [
      [`--filter=dir-merge ${fx.base}/.rules`, `--filter=dir-merge ${fx.base}/.absent`],
    ];
    for (const [real, absent] of pulls) {
      const results = [];
      for (const [i, filter] of [real, absent].entries()) {
        const back = `${fx.base}/back-${i}`;
        const out = await byHand(fx, ["-rlpt", filter, `ops-agent:${fx.root}/app/`, `${back}/`]);
        results.push({ code: out.code, tree: await listing(back).catch(() => ({})) });
      }
      assertEquals(results[0], results[1], `${real} must act as if the file were absent`);
      assertEquals(results[0].tree, { "a.txt": "a", "b.log": "b" });
    }

    // A rules file inside the root (pushed there: the grant allows it) that merges files outside.
    for (const target of ["rules", "secret.key"]) {
      const results = [];
      for (const name of [target, "absent"]) {
        await Deno.writeTextFile(`${fx.root}/app/.rules`, `. ${fx.outside}/${name}\n`);
        const back = `${fx.base}/back-${target}-${name}`;
        const out = await byHand(fx, [
          "-rlpt",
          "--filter=: .rules",
          `ops-agent:${fx.root}/app/`,
          `${back}/`,
        ]);
        assert(!out.stderr.includes("TOPSECRET"), `the file's content leaked: ${out.stderr}`);
        results.push({
          code: out.code,
          tree: await listing(back).catch(() => ({})),
          said: out.stderr.replaceAll(`${fx.outside}/${name}`, "FILE"),
        });
      }
      assertEquals(results[0], results[1], `merging ${target} must act as if it were absent`);
    }

    // A push with --delete: the receiver reads its filter rules, outside files must not protect.
    await write(`${fx.base}/src/keep.txt`, "keep");
    for (const [i, file] of [`${fx.base}/.protect`, `${fx.base}/.absent`].entries()) {
      await write(`${fx.base}/.protect`, "- stale.log\n");
      await write(`${fx.root}/dest-${i}/stale.log`, "stale");
      const out = await byHand(fx, [
        "-rlpt",
        "--delete",
        `--filter=dir-merge ${file}`,
        `${fx.base}/src/`,
        `ops-agent:${fx.root}/dest-${i}/`,
      ]);
      assertEquals(out.code, 0, out.stderr);
      assertEquals(await listing(`${fx.root}/dest-${i}`), { "keep.txt": "keep" }, file);
    }
  });
}

/** A genuine receiver (push) or sender (pull) vector for `path`, as rsync 3.x sends it. */
function vector(action: "push" | "pull", path: string): string[] {
  const flags = "-logtpre.iLsfxCIvu";
  return action === "push"
    ? ["rsync", "--server", flags, ".", path]
    : ["rsync", "--server", "--sender", flags, ".", path];
}

/** Opens a tunnel by hand (no rsync on this side). */
function openTunnel(fx: Fixture, argv: string[]): Promise<WsClient> {
  const url = new URL("/v1/sync", fx.agentUrl);
  url.searchParams.set("argv", JSON.stringify(argv));
  return WsClient.connect(url.href);
}

/** Resolves once the agent has closed `ws` (its messages end), or after `ms` with `false`. */
function closedWithin(ws: WsClient, ms: number): Promise<boolean> {
  const ended = (async () => {
    for await (const _ of ws.messages) { /* drain */ }
    return true;
  })().catch(() => true);
  return Promise.race([ended, new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
}

const MiB = 1024 * 1024;
/**
 * Floods and the most the agent's RSS may grow under each (docs/protocol.md):
 * the 8 MiB window and one message; a message larger than the agent takes is
 * held whole by Deno (about three copies) before the agent can refuse it.
 */
const FLOODS = [
  ["1 MiB messages", MiB, 32 * MiB],
  ["32 MiB messages", 32 * MiB, 128 * MiB],
] as const;

for (const [label, size, bound] of FLOODS) {
  Deno.test(`a client that ignores the ack window (${label}) is cut off: the agent's RSS grows by less than ${bound / MiB} MiB, the transfer ends, the agent keeps serving`, async () => {
    if (skip()) return;
    await using fx = await fixture();
    const ws = await openTunnel(fx, vector("push", `${fx.root}/flood/`));
    await agentRsyncStarted(fx, `${fx.root}/flood`);
    // rsync busy elsewhere (stopped): it takes nothing, so every byte sent queues in the agent.
    const stopped = agentRsyncs(fx);
    for (const pid of stopped) Deno.kill(pid, "SIGSTOP");
    const baseline = rssBytes(fx.agentPid);
    let peak = baseline;
    const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(fx.agentPid))), 10);
    const closing = closedWithin(ws, 30_000);
    let sent = 0;
    const message = new Uint8Array(size);
    const deadline = Date.now() + 20_000;
    try {
      while (sent < 512 * MiB && Date.now() < deadline) {
        await ws.send(message);
        sent += size;
      }
    } catch {
      // The agent closed the connection.
    }
    const closed = await closing;
    clearInterval(sampler);
    for (const pid of stopped) {
      await Promise.resolve().then(() => Deno.kill(pid, "SIGCONT")).catch(() => {});
    }
    ws.destroy();

    assert(closed, `the agent did not end the transfer (${sent / MiB} MiB sent)`);
    assert(sent < 256 * MiB, `the agent took ${sent / MiB} MiB before cutting the client off`);
    assert(
      peak - baseline < bound,
      `RSS grew by ${((peak - baseline) / MiB).toFixed(1)} MiB (bound ${bound / MiB} MiB)`,
    );
    const line = await auditLine(fx, "sync.push", `${fx.root}/flood`);
    assertStringIncludes(String(line.reason), "cut off: the client sent");
    assert(await waitFor(() => agentRsyncs(fx).length === 0, 10_000), "the agent's rsync is gone");

    await write(`${fx.base}/src/ok.txt`, "ok");
    await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
    await rpc.push(`${fx.base}/src/`, `${fx.root}/after/`);
    assertEquals(await listing(`${fx.root}/after`), { "ok.txt": "ok" }, "the agent keeps serving");
  });
}

Deno.test("an idle tunnel ends within sync_idle_timeout and frees its slot", async () => {
  if (skip()) return;
  await using fx = await fixture({ config: "sync_idle_timeout = 2", maxConcurrent: 1 });
  const started = performance.now();
  const ws = await openTunnel(fx, vector("push", `${fx.root}/idle/`)); // and then: nothing
  const closed = await closedWithin(ws, 20_000);
  const after = (performance.now() - started) / 1000;
  ws.destroy();
  assert(closed, "the idle tunnel is still open after 20 s");
  // rsync's --timeout=2 fires after 2 s of silence; the rest is start-up and the kill.
  assert(after < 12, `the idle tunnel took ${after.toFixed(1)} s to end`);
  const line = await auditLine(fx, "sync.push", `${fx.root}/idle`);
  assertEquals(line.exitCode, 30, `rsync's own timeout ended it: ${JSON.stringify(line)}`);

  await write(`${fx.base}/src/ok.txt`, "ok");
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  await rpc.push(`${fx.base}/src/`, `${fx.root}/after/`); // max_concurrent = 1: the slot is free
  assertEquals(await listing(`${fx.root}/after`), { "ok.txt": "ok" });
});

Deno.test("no device node or fifo is created by a push, and a vector asking for them (-D) is refused", async () => {
  if (skip()) return;
  await using fx = await fixture();
  const src = `${fx.base}/src`;
  await write(`${src}/plain.txt`, "plain");
  const mk = (args: string[]) => new Deno.Command(args[0], { args: args.slice(1) }).output();
  assert((await mk(["mkfifo", `${src}/fifo`])).success, "mkfifo");
  const asRoot = Deno.uid() === 0;
  if (asRoot) assert((await mk(["mknod", `${src}/null`, "c", "1", "3"])).success, "mknod");
  else missing([false, "root (for the device node half)"]);

  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  await rpc.push(`${src}/`, `${fx.root}/app/`);
  assertEquals(await listing(`${fx.root}/app`), { "plain.txt": "plain" });

  // A client that asks for devices and specials (rsync -a sends -D) is refused before anything runs.
  const out = await byHand(fx, ["-a", `${src}/`, `ops-agent:${fx.root}/app2/`]);
  assert(out.code !== 0, "rsync -a is refused");
  assertStringIncludes(out.stderr, "refused rsync option(s) -D");
  assertEquals(await exists(`${fx.root}/app2`), false);
});

Deno.test("a symlinked root is resolved once at start and compared by where it led; re-pointing it later leads nowhere", async () => {
  if (skip()) return;
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const base = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sealed-link-" }),
  );
  for (const dir of ["real", "outside"]) await Deno.mkdir(`${base}/${dir}`);
  await Deno.symlink(`${base}/real`, `${base}/link-root`);
  const root = `${base}/link-root`;
  await using agent = await startAgentProcess(
    loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] }),
  );
  try {
    await write(`${base}/src/a.txt`, "a");
    await using rpc = new AgentRpc({ url: agent.url }, ALL);
    await rpc.push(`${base}/src/`, `${root}/x/`);
    assertEquals(await listing(`${base}/real`), { "x/": "dir", "x/a.txt": "a" });
    const first = agent.auditLines().find((l) => l.path === `${root}/x` && l.event === "end")!;
    assertEquals([first.resolvedPath, first.root], [`${base}/real/x`, `${base}/real`]);

    // Whoever can change the link now (a broader grant, a step) cannot move the root.
    await Deno.remove(`${base}/link-root`);
    await Deno.symlink(`${base}/outside`, `${base}/link-root`);
    for (const target of [`${root}/y/`, `${root}/`]) {
      const error = await assertRejects(() => rpc.push(`${base}/src/`, target), CapabilityDenied);
      assertEquals(error.scope, "agent", target);
    }
    await assertRejects(() => rpc.pull(`${root}/`, `${base}/back/`), CapabilityDenied);
    assertEquals(await listing(`${base}/outside`), {});
  } finally {
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

/** Every entry under `dir`: relative path -> "dir MODE", "-> TARGET" or "SHA-256 MODE". */
async function tree(dir: string, prefix = ""): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    const full = `${dir}/${rel}`;
    const mode = ((await Deno.lstat(full)).mode! & 0o7777).toString(8);
    if (entry.isSymlink) out[rel] = `-> ${await Deno.readLink(full)}`;
    else if (entry.isDirectory) {
      out[`${rel}/`] = `dir ${mode}`;
      Object.assign(out, await tree(dir, rel));
    } else {
      const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(full));
      out[rel] = `${
        [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("")
      } ${mode}`;
    }
  }
  return out;
}

/** A macOS-style framework, nested new dirs, unicode names, an in-tree relative link. */
async function legitimateTree(src: string) {
  const binary = crypto.getRandomValues(new Uint8Array(65_536));
  const fw = `${src}/Foo.framework`;
  await Deno.mkdir(`${fw}/Versions/A/Resources`, { recursive: true });
  await Deno.writeFile(`${fw}/Versions/A/Foo`, binary, { mode: 0o755 });
  await Deno.chmod(`${fw}/Versions/A/Foo`, 0o755);
  await write(`${fw}/Versions/A/Resources/Info.plist`, "<plist/>");
  await Deno.symlink("A", `${fw}/Versions/Current`);
  await Deno.symlink("Versions/Current/Foo", `${fw}/Foo`);
  await Deno.symlink("Versions/Current/Resources", `${fw}/Resources`);
  await write(`${src}/a/b/c/d/e.txt`, "deep");
  await write(`${src}/ünïcödé/ファイル.txt`, "unicode names");
  await write(`${src}/docs/old.txt`, "old");
  await Deno.symlink("../a/b", `${src}/docs/latest`);
}

for (const [mode, config, prefix] of MODES) {
  Deno.test(`legitimate trees (${mode}) still sync byte-identical: a .framework with Versions/Current -> A, nested new dirs, unicode names, delete`, async () => {
    if (skip()) return;
    await using fx = await fixture({ config, prefix });
    const src = `${fx.base}/src`;
    await legitimateTree(src);
    await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);

    await rpc.push(`${src}/`, `${fx.root}/deep/new/app/`);
    assertEquals(await tree(`${fx.root}/deep/new/app`), await tree(src));
    await rpc.pull(`${fx.root}/deep/new/app/`, `${fx.base}/back/`);
    assertEquals(await tree(`${fx.base}/back`), await tree(src));
    // Without the slash: the directory itself; a single file to a new name.
    await rpc.pull(`${fx.root}/deep/new/app`, `${fx.base}/back2/`);
    assertEquals(await tree(`${fx.base}/back2/app`), await tree(src));
    await write(`${fx.base}/single.txt`, "single");
    await rpc.push(`${fx.base}/single.txt`, `${fx.root}/deep/renamed.txt`);
    assertEquals(await Deno.readTextFile(`${fx.root}/deep/renamed.txt`), "single");

    await Deno.remove(`${src}/docs/old.txt`);
    await Deno.remove(`${src}/a/b/c`, { recursive: true });
    const deleted = await rpc.push(`${src}/`, `${fx.root}/deep/new/app/`, { delete: true });
    assertEquals(deleted.filesDeleted, 4);
    assertEquals(await tree(`${fx.root}/deep/new/app`), await tree(src));
  });
}

Deno.test("an unprivileged agent (not root) confines its rsync through a user namespace, as the agent's own account", async () => {
  if (skip()) return;
  const setpriv = Deno.uid() === 0 ? "/usr/bin/setpriv" : null;
  if (
    missing([
      setpriv !== null && (await exists(setpriv)),
      "root and setpriv (to start the agent as nobody)",
    ])
  ) return;
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const base = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sealed-nobody-" }),
  );
  try {
    // The agent runs as nobody with its own copy of Deno's npm cache (root's is private).
    const denoDir = `${base}/deno-dir`;
    const cache = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
    await Deno.mkdir(denoDir);
    const copied = await new Deno.Command("cp", { args: ["-r", `${cache}/npm`, `${denoDir}/npm`] })
      .output();
    assert(copied.success, new TextDecoder().decode(copied.stderr));
    const dir = `${base}/agent`;
    const root = `${base}/root`;
    const outside = `${base}/outside`;
    for (const d of [dir, root, outside]) await Deno.mkdir(d);
    await Deno.chmod(base, 0o755);
    await Deno.chmod(dir, 0o777);
    // The agent's account owns the root and another directory of its own, outside the root.
    await new Deno.Command("chown", { args: ["-R", "65534:65534", root, outside] }).output();
    await new Deno.Command("chmod", { args: ["-R", "a+rX", denoDir] }).output();
    await using agent = await startAgentProcess(
      loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] }),
      {
        dir,
        prefix: [setpriv!, "--reuid=65534", "--regid=65534", "--clear-groups"],
        env: { DENO_DIR: denoDir, HOME: dir },
      },
    );
    assertStringIncludes(agent.output(), "user namespace");
    await write(`${base}/src/a.txt`, "a");
    await using rpc = new AgentRpc({ url: agent.url }, ALL);
    await rpc.push(`${base}/src/`, `${root}/app/`);
    assertEquals(
      (await Deno.stat(`${root}/app/a.txt`)).uid,
      65534,
      "written as the agent's account",
    );
    await rpc.pull(`${root}/app/`, `${base}/back/`);
    assertEquals(await listing(`${base}/back`), { "a.txt": "a" });

    // The race, with the link planted on disk by the agent's account (as one of its steps would).
    const fx: Fixture = {
      base,
      root,
      outside,
      agentUrl: agent.url,
      agentPid: agent.pid,
      auditLines: () => agent.auditLines(),
      [Symbol.asyncDispose]: () => Promise.resolve(),
    };
    const held = heldTransfer(fx, "push", `${base}/src/`, `${root}/new/`);
    await agentRsyncStarted(fx, `${root}/new`);
    const asNobody = [setpriv!, "--reuid=65534", "--regid=65534", "--clear-groups"];
    const planted = await new Deno.Command(asNobody[0], {
      args: [
        ...asNobody.slice(1),
        "sh",
        "-c",
        'rmdir "$1" 2>/dev/null; ln -s "$2" "$1"',
        "sh",
        `${root}/new`,
        outside,
      ],
    }).output();
    assert(planted.success, "planting the link as the agent's account");
    await held.release();
    await held.done;
    assertEquals(await listing(outside), {}, "nothing written outside the root");
    const line = await auditLine(fx, "sync.push", `${root}/new`);
    assertEquals(line.confinement, "namespace");
  } finally {
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

Deno.test('an agent that cannot make a mount namespace refuses to start under sync_confinement = "namespace", naming the fix; "none" starts', async () => {
  if (skip()) return;
  if (missing([await exists("/proc/sys/user/max_mnt_namespaces"), "Linux namespace limits"])) {
    return;
  }
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const root = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sealed-nons-" }),
  );
  // A user namespace of its own in which no further namespace may be made.
  const noNamespaces = [
    "unshare",
    "--user",
    "--map-root-user",
    "sh",
    "-c",
    'echo 0 >/proc/sys/user/max_user_namespaces && echo 0 >/proc/sys/user/max_mnt_namespaces && exec "$@"',
    "sh",
  ];
  const toml = (confinement: string) =>
    loopbackConfig({ ceiling: [`sync.push:${root}`] }).replace(
      "[identity]",
      `sync_confinement = "${confinement}"\n[identity]`,
    );
  try {
    const error = await assertRejects(() =>
      startAgentProcess(toml("namespace"), { prefix: noNamespaces })
    );
    assertStringIncludes(error.message, "agent.sync_confinement");
    assertStringIncludes(error.message, 'sync_confinement = "none"');

    await using agent = await startAgentProcess(toml("none"), { prefix: noNamespaces });
    assertStringIncludes(agent.output(), 'not confined by the OS (sync_confinement = "none")');
    await write(`${root}-src/a.txt`, "a");
    await using rpc = new AgentRpc({ url: agent.url }, ALL);
    await rpc.push(`${root}-src/`, `${root}/app/`);
    assertEquals(await listing(`${root}/app`), { "a.txt": "a" });
    const line = await auditLine(
      { auditLines: () => agent.auditLines() } as Fixture,
      "sync.push",
      `${root}/app`,
    );
    assertEquals(line.confinement, "none");
  } finally {
    await Deno.remove(root, { recursive: true }).catch(() => {});
    await Deno.remove(`${root}-src`, { recursive: true }).catch(() => {});
  }
});

Deno.test("a pushed link that leads out of the tree (absolute, or climbing above it) is not created (rsync 3.x --safe-links)", async () => {
  if (skip()) return;
  await using fx = await fixture();
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  const out = `${fx.base}/out-links`;
  await write(`${out}/kept.txt`, "kept");
  await Deno.symlink("/etc", `${out}/abs`);
  await Deno.symlink("../../outside", `${out}/up`);
  await Deno.symlink("kept.txt", `${out}/inside`);
  await rpc.push(`${out}/`, `${fx.root}/links/`);
  assertEquals(await listing(`${fx.root}/links`), { "kept.txt": "kept", inside: "-> kept.txt" });
});

for (const [mode, config, prefix] of MODES) {
  Deno.test(`a first push creates a granted root that does not exist yet (${mode}); a pull of it is refused`, async () => {
    if (skip()) return;
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const base = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sealed-new-root-" }),
    );
    const root = `${base}/not/yet`;
    const toml = loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] })
      .replace("[identity]", `${config}\n[identity]`);
    await using agent = await startAgentProcess(toml, { prefix });
    try {
      await write(`${base}/src/a.txt`, "a");
      await using rpc = new AgentRpc({ url: agent.url }, ALL);
      await assertRejects(() => rpc.pull(`${root}/`, `${base}/back/`), TransportError);
      await rpc.push(`${base}/src/`, `${root}/`);
      assertEquals(await listing(root), { "a.txt": "a" });
    } finally {
      await Deno.remove(base, { recursive: true }).catch(() => {});
    }
  });
}

for (const [mode, config, prefix] of MODES) {
  Deno.test(`the race below the target (${mode}): a directory of the tree replaced by a link out while the push is held: nothing is written outside`, async () => {
    if (skip()) return;
    await using fx = await fixture({ config, prefix });
    await write(`${fx.base}/src/sub/payload.txt`, "payload");
    await Deno.mkdir(`${fx.root}/app/sub`, { recursive: true });
    const held = heldTransfer(fx, "push", `${fx.base}/src/`, `${fx.root}/app/`);
    await agentRsyncStarted(fx, `${fx.root}/app`);
    await Deno.remove(`${fx.root}/app/sub`);
    await Deno.symlink(fx.outside, `${fx.root}/app/sub`);
    await held.release();
    await held.done;
    assertEquals(await listing(fx.outside), {}, "nothing may be written outside the root");
  });
}
