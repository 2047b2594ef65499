// push/pull through the real agent process and real rsync: rsync's delta
// protocol over the /v1/sync WebSocket, gated like steps, the caller
// identified by whois.

import {
  assert,
  assertEquals,
  assertGreater,
  assertLess,
  assertRejects,
  assertStringIncludes,
} from "@deps/assert";
import { CapabilityDenied, CapabilitySet, TransportError } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { WsClient, WsHandshakeError } from "../transports/_ws_client.ts";
import { loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { missing, RSYNC } from "./_prereq.ts";
import { pidsWithCommandLine, waitFor } from "./_procs.ts";
import { STANDIN_SOCKET, TailnetStandin, whoisText } from "./_tailscale_standin.ts";

const skip = () => missing([RSYNC !== null, "rsync"]) !== undefined;
const ALL = CapabilitySet.of("sync.*");

interface Fixture extends AsyncDisposable {
  base: string;
  root: string;
  outside: string;
  src: string;
  agentUrl: string;
  auditLines(): Record<string, unknown>[];
}

/** A temp tree, and an agent whose ceiling grants push/pull under `root` only. */
async function fixture(extra: { ceiling?: string[] } = {}): Promise<Fixture> {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const base = await Deno.realPath(
    await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "sync-" }),
  );
  const root = `${base}/root`;
  const outside = `${base}/outside`;
  const src = `${base}/src`;
  for (const dir of [root, outside, src]) await Deno.mkdir(dir);
  const agent = await startAgentProcess(
    loopbackConfig({ ceiling: extra.ceiling ?? [`sync.push:${root}`, `sync.pull:${root}`] }),
  );
  return {
    base,
    root,
    outside,
    src,
    agentUrl: agent.url,
    auditLines: () => agent.auditLines(),
    [Symbol.asyncDispose]: async () => {
      await agent[Symbol.asyncDispose]();
      await Deno.remove(base, { recursive: true }).catch(() => {});
    },
  };
}

async function write(path: string, data: string | Uint8Array, mode?: number) {
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  if (typeof data === "string") await Deno.writeTextFile(path, data);
  else await Deno.writeFile(path, data);
  if (mode !== undefined) await Deno.chmod(path, mode);
}

/** Every file under `dir`: relative path -> [sha-256, mode]. */
async function snapshot(dir: string, prefix = ""): Promise<Record<string, [string, number]>> {
  const out: Record<string, [string, number]> = {};
  for await (const entry of Deno.readDir(`${dir}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    const full = `${dir}/${rel}`;
    const info = await Deno.lstat(full);
    if (entry.isDirectory) {
      out[`${rel}/`] = ["dir", info.mode! & 0o7777];
      Object.assign(out, await snapshot(dir, rel));
    } else {
      const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(full));
      out[rel] = [
        [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join(""),
        info.mode! & 0o7777,
      ];
    }
  }
  return out;
}

async function makeTree(src: string) {
  const big = new Uint8Array(50 * 1024 * 1024);
  for (let i = 0; i < big.length; i += 65536) crypto.getRandomValues(big.subarray(i, i + 65536));
  await write(`${src}/big.bin`, big);
  await write(`${src}/empty`, "");
  await write(`${src}/a/b/c/deep.txt`, "deep");
  await write(`${src}/a/empty-too`, "");
  await write(`${src}/ünïcödé/ファイル.txt`, "unicode names");
  await write(`${src}/bin/run.sh`, "#!/bin/sh\necho ok\n", 0o750);
  await write(`${src}/secret.key`, "k", 0o600);
  await write(`${src}/skip.log`, "log");
}

Deno.test("push and pull a tree byte-identical, modes kept; an unchanged re-push sends (almost) nothing", async () => {
  if (skip()) return;
  await using fx = await fixture();
  await makeTree(fx.src);
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  const pushed = await rpc.push(`${fx.src}/`, `${fx.root}/app/`);
  assertEquals(await snapshot(`${fx.root}/app`), await snapshot(fx.src));
  assertEquals(pushed.action, "sync.push");
  assertEquals(pushed.filesTransferred, 8);
  assertGreater(pushed.literalBytes, 50 * 1024 * 1024);

  const again = await rpc.push(`${fx.src}/`, `${fx.root}/app/`);
  assertEquals(again.filesTransferred, 0, "an unchanged tree transfers no file");
  assertEquals(again.literalBytes, 0);
  assertLess(again.bytesSent, 10_000, "only the file list crosses the wire");

  const back = `${fx.base}/back`;
  const pulled = await rpc.pull(`${fx.root}/app/`, `${back}/`);
  assertEquals(pulled.action, "sync.pull");
  assertEquals(await snapshot(back), await snapshot(fx.src));

  const audit = fx.auditLines().filter((l) => l.endpoint === "GET /v1/sync" && l.event !== "start");
  assertEquals(audit.map((l) => [l.action, l.decision, l.exitCode]), [
    ["sync.push", "allowed", 0],
    ["sync.push", "allowed", 0],
    ["sync.pull", "allowed", 0],
  ]);
  assertGreater(audit[0].bytesIn as number, 50 * 1024 * 1024);
});

Deno.test("delete, exclude and dryRun behave as rsync's own options", async () => {
  if (skip()) return;
  await using fx = await fixture();
  await write(`${fx.src}/keep.txt`, "keep");
  await write(`${fx.src}/skip.log`, "log");
  await write(`${fx.root}/app/stale.txt`, "stale");
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);

  const dry = await rpc.push(`${fx.src}/`, `${fx.root}/app/`, { delete: true, dryRun: true });
  assertEquals(dry.dryRun, true);
  assertEquals(dry.filesTransferred, 2);
  assertEquals(dry.filesDeleted, 1);
  assertEquals(
    Object.keys(await snapshot(`${fx.root}/app`)),
    ["stale.txt"],
    "dry run changes nothing",
  );

  await rpc.push(`${fx.src}/`, `${fx.root}/app/`, { exclude: ["*.log"] });
  assertEquals(Object.keys(await snapshot(`${fx.root}/app`)).sort(), ["keep.txt", "stale.txt"]);

  const deleted = await rpc.push(`${fx.src}/`, `${fx.root}/app/`, {
    exclude: ["*.log"],
    delete: true,
  });
  assertEquals(deleted.filesDeleted, 1);
  assertEquals(Object.keys(await snapshot(`${fx.root}/app`)), ["keep.txt"]);

  const back = `${fx.base}/back`;
  await write(`${back}/local-only.txt`, "mine");
  await rpc.pull(`${fx.root}/app/`, `${back}/`, { delete: true, checksum: true, compress: true });
  assertEquals(Object.keys(await snapshot(back)), ["keep.txt"]);
});

Deno.test("outside every root, a .. escape and a symlink out of the root are refused; nothing is written outside", async () => {
  if (skip()) return;
  await using fx = await fixture();
  await write(`${fx.src}/payload.txt`, "payload");
  await Deno.symlink(fx.outside, `${fx.root}/link-out`);
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);

  for (
    const target of [
      `${fx.outside}/`,
      `${fx.root}/../outside/`,
      `${fx.root}/link-out/`,
      `${fx.root}/link-out/deeper/`,
    ]
  ) {
    const error = await assertRejects(() => rpc.push(`${fx.src}/`, target), CapabilityDenied);
    assertEquals(error.scope, "agent", target);
    assertEquals(error.action, "sync.push");
  }
  const pull = await assertRejects(
    () => rpc.pull(`${fx.root}/link-out/`, `${fx.base}/stolen/`),
    CapabilityDenied,
  );
  assertEquals(pull.scope, "agent");

  // A tree whose own entry collides with the symlink: rsync must not follow it out.
  await write(`${fx.base}/tree/link-out/evil.txt`, "evil");
  await rpc.push(`${fx.base}/tree/`, `${fx.root}/`).catch(() => {});
  assertEquals(await snapshot(fx.outside), {}, "nothing may be written outside the root");

  const refusals = fx.auditLines().filter((l) => l.decision === "denied");
  assertEquals(refusals.length, 5);
  assert(refusals.every((l) => l.status === 403));
  assertStringIncludes(String(refusals[2].reason), "outside the granted roots");
});

/** Opens the tunnel by hand with `argv`; resolves to the HTTP status of the refusal. */
async function handshake(url: string, argv: unknown): Promise<number> {
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

Deno.test("hand-crafted tunnels: non-rsync commands, program-running options and the wrong direction are refused", async () => {
  if (skip()) return;
  await using fx = await fixture({ ceiling: [] });
  await using pushOnly = await startAgentProcess(
    loopbackConfig({ ceiling: [`sync.push:${fx.root}`] }),
  );
  await using pullOnly = await startAgentProcess(
    loopbackConfig({ ceiling: [`sync.pull:${fx.root}`] }),
  );
  const flags = "-logtpre.iLsfxCIvu";
  const dest = `${fx.root}/x/`;
  const malformed: unknown[] = [
    ["sh", "-c", "id"],
    ["/bin/sh", "--server", flags, ".", dest],
    ["rsync", "--daemon"],
    ["rsync", "--server", flags, "--rsh=sh -c id", ".", dest],
    ["rsync", "--server", flags, "-e", "sh -c id", ".", dest],
    ["rsync", "--server", flags, "--rsync-path=sh -c id", ".", dest],
    ["rsync", "--server", "-e", "sh", flags, ".", dest],
    ["rsync", "--server", "-Llogtpre.iLsfxCIvu", ".", dest],
    ["rsync", "--server", "-slogtpre.iLsfxCIvu", ".", dest],
    ["rsync", "--server", "-logDtpre.iLsfxCIvu", ".", dest],
    ["rsync", "--server", "--sender", "-logDtpre.iLsfxCIvu", ".", dest],
    ["rsync", "--server", flags, "--log-file=/etc/x", ".", dest],
    ["rsync", "--server", flags, ".", "relative/path"],
    ["rsync", "--server", flags, ".", dest, "/etc/passwd"],
    ["rsync", "--server", "--sender", flags, "--delete", ".", dest],
    "not an array",
  ];
  for (const argv of malformed) {
    assertEquals(await handshake(pushOnly.url, argv), 400, JSON.stringify(argv));
  }
  const receiver = ["rsync", "--server", flags, ".", dest];
  const sender = ["rsync", "--server", "--sender", flags, ".", dest];
  assertEquals(await handshake(pullOnly.url, receiver), 403, "a push where only pull is granted");
  assertEquals(await handshake(pushOnly.url, sender), 403, "a pull where only push is granted");
  assertEquals(await handshake(pushOnly.url, receiver), 101, "the genuine vector opens");
  const audit = pushOnly.auditLines().filter((l) => l.endpoint === "GET /v1/sync");
  assertEquals(audit.filter((l) => l.status === 400).length, malformed.length);
  assertEquals(await snapshot(fx.root), {}, "nothing ran");
});

Deno.test("cancelling a transfer through its signal stops it on both ends", async () => {
  if (skip()) return;
  await using fx = await fixture();
  const big = new Uint8Array(1024 * 1024);
  for (let i = 0; i < 400; i++) {
    crypto.getRandomValues(big.subarray(0, 65536));
    await write(`${fx.src}/f${i}.bin`, big);
  }
  await using rpc = new AgentRpc({ url: fx.agentUrl }, ALL);
  const controller = new AbortController();
  let progressed = 0;
  const pushing = rpc.push(`${fx.src}/`, `${fx.root}/app/`, {
    signal: controller.signal,
    compress: true,
    onProgress: () => {
      if (++progressed === 2) controller.abort(new Error("operator cancelled"));
    },
  });
  await assertRejects(() => pushing, Error, "operator cancelled");
  assert(
    await waitFor(() => pidsWithCommandLine(`${fx.root}/app`).length === 0, 5000),
    `rsync processes left: ${pidsWithCommandLine(`${fx.root}/app`)}`,
  );
  const end = (l: Record<string, unknown>) => l.endpoint === "GET /v1/sync" && l.event === "end";
  await waitFor(() => fx.auditLines().some(end), 3000);
  const line = fx.auditLines().find(end)!;
  assertEquals(line.decision, "allowed");
  assert(line.exitCode !== 0, `the agent's rsync was stopped: ${JSON.stringify(line)}`);
});

Deno.test("an unknown peer cannot open the tunnel (401)", async () => {
  if (skip()) return;
  await using tailnet = await TailnetStandin.start();
  tailnet.set("127.0.0.2", whoisText("user-node"));
  await using fx = await fixture();
  await using agent = await startAgentProcess(`
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
[identity]
provider = "tailscale"
socket = "${STANDIN_SOCKET}"
[ceiling]
allow = ["sync.push:${fx.root}"]
[[grant]]
to = ["user:alice@example.com"]
allow = ["sync.push:${fx.root}"]
`);
  await write(`${fx.src}/a.txt`, "a");
  await using stranger = new AgentRpc({ url: agent.url, localAddress: "127.0.0.9" }, ALL);
  const error = await assertRejects(
    () => stranger.push(`${fx.src}/`, `${fx.root}/app/`),
    TransportError,
  );
  assertEquals(error.kind, "unknown_peer");
  assertEquals(await snapshot(fx.root), {});
  await using alice = new AgentRpc({ url: agent.url, localAddress: "127.0.0.2" }, ALL);
  await alice.push(`${fx.src}/`, `${fx.root}/app/`);
  assertEquals(Object.keys(await snapshot(fx.root)), ["app/", "app/a.txt"]);
  const statuses = agent.auditLines().filter((l) => l.endpoint === "GET /v1/sync").map((l) =>
    l.status
  );
  // The stranger never reached /v1/sync: it was refused at the door (audited as a connection).
  assertEquals(statuses, [101, 101], "alice's transfer: its start and end lines");
  const refused = agent.auditLines().filter((l) => String(l.from).startsWith("127.0.0.9:"));
  assertEquals(refused.map((l) => [l.status, l.decision]), [[401, "denied"]]);
});

Deno.test("a caller-side denial starts no rsync and sends nothing", async () => {
  if (skip()) return;
  await using fx = await fixture();
  await using rpc = new AgentRpc(
    { url: fx.agentUrl },
    CapabilitySet.of(`sync.push:${fx.root}/only-here`),
  );
  const error = await assertRejects(
    () => rpc.push(`${fx.src}/`, `${fx.root}/elsewhere/`),
    CapabilityDenied,
  );
  assertEquals(error.scope, "caller");
  assertEquals(fx.auditLines().filter((l) => l.endpoint === "GET /v1/sync"), []);
});
