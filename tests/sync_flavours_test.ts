// push/pull for every pair of {rsync 3.x, openrsync} as the local × the
// remote rsync, over SshExec (the private sshd) and through the real agent:
// the rsync of macOS 15+ (openrsync) at either end. The remote host whose
// rsync is openrsync is this machine in a mount namespace where
// /usr/bin/rsync is openrsync (tests/_openrsync.ts): the first rsync on the
// remote account's PATH, and the agent's rsync.

import {
  assert,
  assertEquals,
  assertFalse,
  assertGreater,
  assertLess,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { TransportError } from "../executor/errors.ts";
import type { Executor, SyncProgress, SyncResult } from "../executor/types.ts";
import { SshExec } from "../transports/ssh.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { captureServerVector, OPENRSYNC, openrsyncHost, openrsyncMissing } from "./_openrsync.ts";
import { WsClient, WsHandshakeError } from "../transports/_ws_client.ts";
import { askRsyncVersion } from "../transports/_rsync_flavour.ts";
import { exists, findProgram, missing, RSYNC } from "./_prereq.ts";
import { remoteShellCommand, runRsync } from "../transports/_rsync.ts";
import { sshdMissing, startSshd } from "./_sshd.ts";
import { waitFor } from "./_procs.ts";

const REPO = new URL("../", import.meta.url).pathname;
const skip = sshdMissing() ?? openrsyncMissing();

type Flavour = "rsync 3.x" | "openrsync";
const FLAVOURS: Flavour[] = ["rsync 3.x", "openrsync"];
const program = (flavour: Flavour) => flavour === "openrsync" ? OPENRSYNC! : "/usr/bin/rsync";

const BIG = 3 * 1024 * 1024;
/** The source tree: names with spaces and unicode, an empty file, one to exclude. */
const TREE: Record<string, string | number> = {
  "a b/ünïcödé ファイル.txt": "unicode names",
  "big.bin": BIG,
  "empty": "",
  "deep/er/x.txt": "deep",
  "skip.log": "excluded",
};
const SENT = Object.keys(TREE).filter((name) => !name.endsWith(".log"));

async function write(path: string, data: string | Uint8Array) {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  if (typeof data === "string") await Deno.writeTextFile(path, data);
  else await Deno.writeFile(path, data);
}

async function makeTree(dir: string) {
  for (const [name, content] of Object.entries(TREE)) {
    if (typeof content === "number") {
      const bytes = new Uint8Array(content);
      for (let i = 0; i < bytes.length; i += 65536) {
        crypto.getRandomValues(bytes.subarray(i, i + 65536));
      }
      await write(`${dir}/${name}`, bytes);
    } else {
      await write(`${dir}/${name}`, content);
    }
  }
}

/** Every regular file under `dir`: relative path -> sha-256. */
async function files(dir: string, prefix = ""): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) Object.assign(out, await files(dir, rel));
    else {
      const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(`${dir}/${rel}`));
      out[rel] = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    }
  }
  return out;
}

async function without(dir: string, ...names: string[]): Promise<Record<string, string>> {
  const all = await files(dir);
  for (const name of names) delete all[name];
  return all;
}

/** Bytes of the regular files under `dir`, but `except`. */
async function treeSize(dir: string, except: string[] = [], prefix = ""): Promise<number> {
  let total = 0;
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) total += await treeSize(dir, except, rel);
    else if (!except.includes(rel)) total += (await Deno.stat(`${dir}/${rel}`)).size;
  }
  return total;
}

/** A real transfer of the tree under `source`: every file, all their bytes as literal data. */
async function assertTransferred(result: SyncResult, source: string, what: string) {
  assertEquals(result.filesTransferred, SENT.length, `${what}: filesTransferred`);
  assertEquals(result.totalSize, await treeSize(source, ["skip.log"]), `${what}: totalSize`);
  assertGreater(result.literalBytes, BIG, `${what}: literalBytes`);
  assertGreater(result.bytesSent + result.bytesReceived, BIG, `${what}: bytes on the wire`);
  assertFalse(result.dryRun);
}

/**
 * The scenario of issue 11 acceptance 1 for one pair: push to a new nested
 * remote path, an unchanged re-push, dryRun, delete; pull to a new nested
 * local path, pull with delete and exclude, pull dryRun. `root` is the
 * remote root as seen on this machine (the remote host is this machine).
 */
async function exercise(
  exec: Executor,
  root: string,
  local: Flavour,
  base: string,
  fileIntoNewDirectory: "works" | "fails" = "works",
) {
  const src = `${base}/src`;
  await makeTree(src);
  const dest = `${root}/new dir/ñ/deep/`;
  const progress: SyncProgress[] = [];

  const pushed = await exec.push(`${src}/`, dest, {
    exclude: ["*.log"],
    onProgress: (p) => progress.push(p),
  });
  assertEquals(await files(dest), await without(src, "skip.log"), "push: tree");
  await assertTransferred(pushed, src, "push");
  assertGreater(progress.length, 0, "onProgress was called");
  assertEquals(progress.at(-1)!.percent, 100);
  assertGreater(progress.at(-1)!.bytes, BIG);

  const again = await exec.push(`${src}/`, dest, { exclude: ["*.log"] });
  assertEquals(again.filesTransferred, 0, "unchanged re-push: no file");
  assertEquals(again.literalBytes, 0, "unchanged re-push: no literal data");
  assertLess(again.bytesSent, 10_000, "unchanged re-push: the file list only");

  await write(`${dest}/stale.txt`, "stale");
  await write(`${src}/deep/er/x.txt`, "changed");
  const before = await files(dest);
  const dry = await exec.push(`${src}/`, dest, { exclude: ["*.log"], delete: true, dryRun: true });
  assert(dry.dryRun);
  assertEquals(await files(dest), before, "dryRun changed nothing");

  const deleted = await exec.push(`${src}/`, dest, { exclude: ["*.log"], delete: true });
  assertEquals(await files(dest), await without(src, "skip.log"), "push --delete: tree");
  assertEquals(deleted.filesDeleted, 1, "push --delete: filesDeleted");
  assertEquals(deleted.filesTransferred, 1, "push --delete: the changed file");

  // One file to a new name in a new directory: only its parent is missing.
  const copy = `${root}/files/ñew/copy.bin`;
  if (fileIntoNewDirectory === "works") {
    const single = await exec.push(`${src}/big.bin`, copy);
    assertEquals(single.filesTransferred, 1);
    assertEquals((await Deno.stat(copy)).size, BIG);
  } else {
    const error = await assertRejects(() => exec.push(`${src}/big.bin`, copy), TransportError);
    assertStringIncludes(error.message, "No such file or directory");
  }

  const back = `${base}/back/new/ñ dir/`;
  if (local === "openrsync") {
    // This openrsync build cannot pull: as a receiving client it sends file
    // acknowledgements on a connection that is not multiplexed and asserts.
    // The message says so, and what to do.
    const error = await assertRejects(() => exec.pull(dest, back), TransportError);
    assertEquals(error.kind, "sync_failed");
    assertStringIncludes(error.message, "Assertion");
    assertStringIncludes(error.message, "crashes as a pulling client");
    assertStringIncludes(error.message, "rsyncProgram");
    return;
  }
  const pulled = await exec.pull(dest, back);
  assertEquals(await files(back), await files(dest), "pull: tree");
  await assertTransferred(pulled, dest, "pull");

  await write(`${back}/stale.txt`, "local only");
  await write(`${back}/keep.log`, "excluded from the transfer, so kept");
  const pulledDelete = await exec.pull(dest, back, { delete: true, exclude: ["*.log"] });
  assertEquals(await without(back, "keep.log"), await files(dest), "pull --delete: tree");
  assert(await exists(`${back}/keep.log`), "an excluded file is not deleted");
  assertEquals(pulledDelete.filesDeleted, 1, "pull --delete: filesDeleted");

  await write(`${dest}/deep/er/x.txt`, "changed remotely");
  const local1 = await files(back);
  const dryPull = await exec.pull(dest, back, { dryRun: true });
  assert(dryPull.dryRun);
  assertEquals(await files(back), local1, "pull dryRun changed nothing");
}

function flavourTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void>,
) {
  Deno.test({ name, ignore: skip !== undefined, fn });
}

async function tempBase(prefix: string): Promise<string> {
  return await Deno.realPath(await Deno.makeTempDir({ prefix }));
}

for (const remote of FLAVOURS) {
  flavourTest(`SshExec: push and pull with ${remote} on the remote account`, async (t) => {
    const port = freePort();
    await using sshd = await startSshd(
      remote === "openrsync" ? { port, commandPrefix: openrsyncHost() } : { port },
    );
    for (const local of FLAVOURS) {
      await t.step(`local ${local}`, async () => {
        const base = await tempBase("ops-exec-flavours-");
        await Deno.chmod(base, 0o755); // the remote account goes through it
        const root = `${base}/remote`;
        await Deno.mkdir(root, { mode: 0o755 });
        await chown(root, sshd.user);
        const caps = CapabilitySet.of(`sync.push:${root}`, `sync.pull:${root}`);
        try {
          await using exec = new SshExec({
            host: sshd.host,
            port: sshd.port,
            user: sshd.user,
            identityFile: sshd.clientKey,
            knownHostsFile: sshd.knownHosts,
            rsyncProgram: program(local),
          }, caps);
          await exercise(exec, root, local, base);
        } finally {
          await Deno.remove(base, { recursive: true });
        }
      });
    }
  });

  flavourTest(`AgentRpc: push and pull with ${remote} as the agent's rsync`, async (t) => {
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const hostBase = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "flavours-" }),
    );
    const root = `${hostBase}/root`;
    await Deno.mkdir(root);
    try {
      const config = loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] });
      await using agent = await startAgentProcess(
        // The openrsync host names its rsync by path (agent.rsync); the other finds it on the PATH.
        remote === "openrsync" ? withAgentRsync(config, "/usr/bin/rsync") : config,
        remote === "openrsync" ? { prefix: openrsyncHost() } : {},
      );
      const health = await (await fetch(`${agent.url}/v1/health`)).json();
      assertEquals(health.rsync?.kind, remote === "openrsync" ? "openrsync" : "rsync");
      for (const local of FLAVOURS) {
        await t.step(`local ${local}`, async () => {
          const base = await tempBase("ops-exec-flavours-");
          const caps = CapabilitySet.of(`sync.push:${root}`, `sync.pull:${root}`);
          try {
            await using exec = new AgentRpc({ url: agent.url, rsyncProgram: program(local) }, caps);
            // openrsync as the agent's rsync creates a destination
            // directory with its parents, but not the parent of a file.
            await exercise(
              exec,
              `${root}/${local}`,
              local,
              base,
              remote === "openrsync" ? "fails" : "works",
            );
          } finally {
            await Deno.remove(base, { recursive: true });
          }
        });
      }
    } finally {
      await Deno.remove(hostBase, { recursive: true }).catch(() => {});
    }
  });
}

async function chown(path: string, user: string) {
  if (Deno.uid() !== 0) return;
  const out = await new Deno.Command("chown", { args: [`${user}:`, path] }).output();
  assert(out.success, `chown ${path}`);
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Opens the tunnel by hand with `argv`; resolves to the HTTP status (101 when it opened). */
async function handshake(url: string, argv: string[]): Promise<number> {
  const target = new URL("/v1/sync", url);
  target.searchParams.set("argv", JSON.stringify(argv));
  try {
    const ws = await WsClient.connect(target.href);
    ws.destroy();
    return 101;
  } catch (error) {
    if (error instanceof WsHandshakeError) return error.status;
    throw error;
  }
}

flavourTest(
  "the real agent opens the tunnel for openrsync's own vectors and refuses them with a forbidden option added",
  async () => {
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const hostBase = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "vectors-" }),
    );
    const root = `${hostBase}/root`;
    await Deno.mkdir(root);
    try {
      await using agent = await startAgentProcess(
        loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] }),
        { prefix: openrsyncHost() },
      );
      const local = (await askRsyncVersion(OPENRSYNC!)).flavour!;
      const dest = `${root}/x/`;
      const genuine: string[][] = [];
      for (const action of ["sync.push", "sync.pull"] as const) {
        for (const opts of [{}, { delete: true, dryRun: true, checksum: true, compress: true }]) {
          genuine.push(await captureServerVector(OPENRSYNC!, local, action, opts, dest));
        }
      }
      assertEquals(genuine[0], [
        "rsync",
        "--server",
        "-g",
        "-l",
        "-o",
        "-p",
        "-r",
        "-t",
        ".",
        dest,
      ]);
      assertEquals(genuine[2].slice(0, 3), ["rsync", "--server", "--sender"]);
      for (const argv of genuine) {
        assertEquals(await handshake(agent.url, argv), 101, `opens: ${JSON.stringify(argv)}`);
      }
      const forbidden = [
        ["--rsh=sh -c id"],
        ["-e", "sh"],
        ["--rsync-path=sh -c id"],
        ["--files-from=/etc/passwd"],
        ["--exclude-from=/etc/shadow"],
        ["--filter=merge /etc/rules"],
        ["--backup-dir=/etc"],
        ["--temp-dir=/etc"],
        ["--partial-dir=/etc"],
        ["--log-file=/etc/x"],
        ["--link-dest=/etc"],
        ["-L"],
        ["-k"],
        ["-K"],
        ["--copy-unsafe-links"],
        ["-s"],
        ["--protect-args"],
      ];
      let refused = 0;
      for (const argv of genuine) {
        for (const words of forbidden) {
          // first, in the middle, and just before ". PATH"
          for (const at of [2, Math.floor(argv.length / 2), argv.length - 2]) {
            const hostile = [...argv.slice(0, at), ...words, ...argv.slice(at)];
            assertEquals(await handshake(agent.url, hostile), 400, JSON.stringify(hostile));
            refused++;
          }
        }
      }
      // An opened tunnel's line is written once its rsync has ended.
      // (Its start line, written before rsync starts, is left out.)
      const opened = () =>
        agent.auditLines().filter((l) =>
          l.endpoint === "GET /v1/sync" && l.status === 101 && l.event === "end"
        );
      await waitFor(() => opened().length >= genuine.length, 10_000);
      const audit = agent.auditLines().filter((l) =>
        l.endpoint === "GET /v1/sync" && l.event !== "start"
      );
      assertEquals(audit.filter((l) => l.status === 400).length, refused);
      assertEquals(audit.filter((l) => l.status === 101).length, genuine.length);
      assertFalse(await exists(`${root}/x/etc`));
    } finally {
      await Deno.remove(hostBase, { recursive: true }).catch(() => {});
    }
  },
);

flavourTest(
  "SshExec: a key and known_hosts under paths with spaces reach ssh from every local rsync",
  async (t) => {
    await using sshd = await startSshd({ port: freePort() });
    const base = await tempBase("ops-exec-spaced-");
    await Deno.chmod(base, 0o755);
    try {
      const keys = `${base}/my keys`;
      await Deno.mkdir(keys);
      await Deno.copyFile(sshd.clientKey, `${keys}/client key`);
      await Deno.chmod(`${keys}/client key`, 0o600);
      await Deno.copyFile(sshd.knownHosts, `${keys}/known hosts`);
      const root = `${base}/remote`;
      await Deno.mkdir(root, { mode: 0o755 });
      await chown(root, sshd.user);
      await write(`${base}/src/a.txt`, "alpha");
      const caps = CapabilitySet.of(`sync.push:${root}`, `sync.pull:${root}`);
      for (const local of FLAVOURS) {
        await t.step(`local ${local}`, async () => {
          await using exec = new SshExec({
            host: sshd.host,
            port: sshd.port,
            user: sshd.user,
            identityFile: `${keys}/client key`,
            knownHostsFile: `${keys}/known hosts`,
            sshOptions: [`SetEnv=OPS_EXEC_NOTE="a value with spaces"`],
            rsyncProgram: program(local),
          }, caps);
          const pushed = await exec.push(`${base}/src/`, `${root}/${local}/`);
          assertEquals(pushed.filesTransferred, 1);
          assertEquals(await Deno.readTextFile(`${root}/${local}/a.txt`), "alpha");
        });
      }
    } finally {
      await Deno.remove(base, { recursive: true });
    }
  },
);

flavourTest("SshExec: the remote account's rsync is what the test means it to be", async () => {
  for (const remote of FLAVOURS) {
    const port = freePort();
    await using sshd = await startSshd(
      remote === "openrsync" ? { port, commandPrefix: openrsyncHost() } : { port },
    );
    const out = await new Deno.Command("ssh", {
      args: [...sshd.clientArgs(), sshd.host, "rsync --version"],
      stdin: "null",
    }).output();
    const said = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
    assertStringIncludes(
      said,
      remote === "openrsync" ? "openrsync: protocol version" : "rsync  version 3",
    );
  }
});

/** `toml` with `agent.rsync` set. */
function withAgentRsync(toml: string, rsync: string): string {
  const line = 'audit_log = "{dir}/audit.jsonl"';
  assert(toml.includes(line));
  return toml.replace(line, `${line}\nrsync = ${JSON.stringify(rsync)}`);
}

Deno.test("ops-agent --check: agent.rsync must be a program the agent's permission set may run", async () => {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "check-rsync-" });
  try {
    const check = async (rsync: string) => {
      const path = `${dir}/config.toml`;
      await Deno.writeTextFile(
        path,
        withAgentRsync(loopbackConfig(), rsync).replaceAll("{dir}", dir),
      );
      const out = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-prompt",
          "-P=agent",
          `${REPO}agent/main.ts`,
          "--config",
          path,
          "--check",
        ],
        cwd: REPO,
        stdout: "piped",
        stderr: "piped",
      }).output();
      return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
    };
    const outside = await check("/srv/tools/rsync");
    assertEquals(outside.code, 1);
    assertStringIncludes(outside.stderr, "agent.rsync: /srv/tools/rsync is outside the run scope");
    const homebrew = await check("/opt/homebrew/bin/rsync");
    assertEquals(homebrew.code, 0, homebrew.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the tunnel's swapped stdio (openrsync's case) carries a large pull intact over a non-blocking socket", async () => {
  const needs = missing(
    [RSYNC === "/usr/bin/rsync", "rsync 3.x at /usr/bin/rsync"],
    [findProgram("/usr/bin/perl") !== null, "perl (to make the socket non-blocking)"],
  );
  if (needs) return;
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const hostBase = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "swapped-" }),
  );
  const root = `${hostBase}/root`;
  const local = await tempBase("ops-exec-swapped-");
  try {
    const big = new Uint8Array(48 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
    await write(`${root}/big.bin`, big);
    await using agent = await startAgentProcess(loopbackConfig({ ceiling: [`sync.pull:${root}`] }));
    const flavour = (await askRsyncVersion(RSYNC!)).flavour!;
    // What AgentRpc runs under openrsync, driven here by rsync 3.x (this
    // openrsync cannot pull) with its socket made non-blocking, as
    // openrsync's always is (perl sets O_NONBLOCK on the tunnel's end, then
    // execs it); a pull makes the tunnel write 48 MiB into it faster than
    // rsync reads.
    const nonBlocking = "for my $fh (*STDIN, *STDERR) { " +
      "fcntl($fh, F_SETFL, fcntl($fh, F_GETFL, 0) | O_NONBLOCK) or die $! } " +
      'exec { $ARGV[0] } @ARGV or die "exec: $!"';
    const remoteShell = await remoteShellCommand([
      "/usr/bin/perl",
      "-MFcntl",
      "-e",
      nonBlocking,
      Deno.execPath(),
      "run",
      "--quiet",
      "--no-prompt",
      `--allow-net=${new URL(agent.url).host}`,
      `--config=${REPO}deno.json`,
      new URL("../transports/sync_tunnel.ts", import.meta.url).href,
      `--url=${agent.url}`,
      "--stdio=swapped",
    ], { local: flavour, scriptDir: local, name: "tunnel", swapStdio: true });
    const pulled = await runRsync({
      host: "agent",
      action: "sync.pull",
      localPath: `${local}/back/`,
      remotePath: `${root}/`,
      remotePrefix: "ops-agent:",
      program: RSYNC!,
      local: flavour,
      remote: flavour,
      remoteShell,
      extraArgs: ["--old-args"],
    }, {});
    assertEquals(pulled.literalBytes, big.length);
    assertEquals(await files(`${local}/back`), await files(root), "every byte arrived, once");
  } finally {
    await Deno.remove(hostBase, { recursive: true }).catch(() => {});
    await Deno.remove(local, { recursive: true });
  }
});

flavourTest(
  "AgentRpc under openrsync: concurrent transfers share the tunnel script; close() removes it",
  async () => {
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const hostBase = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "concurrent-" }),
    );
    const root = `${hostBase}/root`;
    await Deno.mkdir(root);
    const base = await tempBase("ops-exec-concurrent-");
    try {
      await write(`${base}/src/a.txt`, "alpha");
      await using agent = await startAgentProcess(
        loopbackConfig({ ceiling: [`sync.push:${root}`, `sync.pull:${root}`] }),
      );
      const caps = CapabilitySet.of(`sync.push:${root}`, `sync.pull:${root}`);
      const exec = new AgentRpc({ url: agent.url, rsyncProgram: OPENRSYNC! }, caps);
      const before = new Set([...Deno.readDirSync("/tmp")].map((e) => e.name));
      const results = await Promise.all(
        Array.from({ length: 4 }, (_, i) => exec.push(`${base}/src/`, `${root}/c${i}/new/`)),
      );
      assertEquals(results.map((r) => r.filesTransferred), [1, 1, 1, 1]);
      const made = [...Deno.readDirSync("/tmp")].map((e) => e.name)
        .filter((name) => !before.has(name) && name.startsWith("oe-rpc-"));
      assertEquals(made.length, 1, "one private directory");
      const scripts = [...Deno.readDirSync(`/tmp/${made[0]}`)].map((e) => e.name);
      assertEquals(scripts.length, 1, `one script for one set of words: ${scripts}`);
      await exec.close();
      assertFalse(await exists(`/tmp/${made[0]}`));
    } finally {
      await Deno.remove(hostBase, { recursive: true }).catch(() => {});
      await Deno.remove(base, { recursive: true });
    }
  },
);
