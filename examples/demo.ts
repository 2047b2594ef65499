// `deno task demo`: ops-exec end to end on this machine, with nothing to
// configure. A capability set grants the demo's actions; a step streams its
// output through a console sink; an ungranted action is refused before any
// process starts; the host is observed. Then the same through a real
// ops-agent on loopback: its ceiling refuses what the caller would allow,
// and a push goes through its rsync tunnel.

import { CapabilityDenied, CapabilitySet, ConsoleSink, LocalExec, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { exampleArgs } from "./_args.ts";

exampleArgs(
  "demo.ts",
  `Usage: deno task demo   (or: deno run -A examples/demo.ts)

Runs ops-exec end to end on this machine, with nothing to configure: a gated
step streamed line by line, an ungranted action refused before any process
starts, an observation of the host; then the same through a real ops-agent on
loopback, whose ceiling refuses what the caller would allow, and a push through
its rsync tunnel. Takes no options.

Options:
  -h, --help   this help`,
  {},
);

const caps = CapabilitySet.of("demo.*", "observe");
await using exec = new LocalExec(caps, { host: "local" });
console.log(`granted: ${caps.toJSON().join(", ")}\n`);

console.log("1. a gated step, output streamed as it runs:");
const build = Step.shell(
  "demo.build",
  'set -e; for part in fetch compile link; do echo "$part ok"; sleep 0.1; done; echo "1 warning" >&2',
  { timeoutMs: 10_000, label: "build" },
);
const out = await exec.runStreaming(build, new ConsoleSink({ host: exec.host }));
console.log(`   -> exit ${out.exitCode} in ${out.durationMs.toFixed(0)} ms\n`);

console.log("2. an action the set does not grant never starts:");
try {
  await exec.runStreaming(
    Step.shell("release.publish", "echo this never runs"),
    new ConsoleSink({ host: exec.host }),
  );
  throw new Error("the denied step ran: this is a bug");
} catch (error) {
  if (!(error instanceof CapabilityDenied)) throw error;
  // An ops-exec error prints as one line: `${error}` is "CapabilityDenied: <message>".
  console.log(`   -> refused (${error.scope}): ${error}\n`);
}

console.log("3. observing the host:");
const facts = await exec.observe();
console.log(
  `   -> ${facts.hostname}: ${facts.os}/${facts.arch}, kernel ${facts.kernel}, ` +
    `load ${facts.loadAverage.map((n) => n.toFixed(2)).join(" ")}, ` +
    `${(facts.memory.availableBytes / 2 ** 30).toFixed(1)} of ${
      (facts.memory.totalBytes / 2 ** 30).toFixed(1)
    } GiB free, up ${(facts.uptimeSeconds / 3600).toFixed(1)} h`,
);

// --- the same, through ops-agent -----------------------------------------

console.log("\n4. an ops-agent on loopback, in its sandbox (deno run -P=agent):");
await Deno.mkdir("/tmp/ops-agent", { recursive: true });
const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "demo-" });
await Deno.writeTextFile(
  `${dir}/config.toml`,
  `[agent]
listen = "127.0.0.1:0"
audit_log = "${dir}/audit.jsonl"

[identity]
provider = "loopback"               # development only: every loopback peer is this identity
loopback_identity = "user:dev@localhost"

[ceiling]                           # the most anyone may do on this host
allow = ["demo.*", "observe", "sync.push:${dir}/releases"]

[[grant]]
to = ["user:dev@localhost"]
allow = ["demo.*", "observe", "sync.push:${dir}/releases", "release.*"]
`,
);
const agent = new Deno.Command(Deno.execPath(), {
  args: [
    "run",
    "--quiet",
    "--no-prompt",
    "-P=agent",
    new URL("../agent/main.ts", import.meta.url).pathname,
    "--config",
    `${dir}/config.toml`,
  ],
  cwd: new URL("..", import.meta.url).pathname,
  stdin: "null",
  stdout: "piped",
  stderr: "inherit",
}).spawn();
const url = await listeningUrl(agent.stdout);
console.log(`   -> listening on ${url}`);
try {
  // The caller's own set allows more than the host does: the agent's ceiling decides.
  await using remote = new AgentRpc({ url, host: "agent" }, CapabilitySet.of("*"));
  console.log(
    `   -> the agent grants this caller: ${
      (await remote.remoteCapabilities()).toJSON().join(", ")
    }`,
  );
  const viaAgent = await remote.runStreaming(
    Step.exec("demo.hello", ["uname", "-sr"]),
    new ConsoleSink({ host: remote.host }),
  );
  console.log(`   -> exit ${viaAgent.exitCode} through the agent`);
  try {
    await remote.runStreaming(Step.shell("release.publish", "echo never"), new ConsoleSink());
    throw new Error("the agent ran a step above its ceiling: this is a bug");
  } catch (error) {
    if (!(error instanceof CapabilityDenied)) throw error;
    console.log(`   -> refused (${error.scope}): ${error}`);
  }
  const artifact = await Deno.makeTempDir();
  await Deno.writeTextFile(`${artifact}/app.txt`, "release 1.0.0\n");
  const sync = await remote.push(`${artifact}/`, `${dir}/releases/1.0.0/`);
  console.log(`   -> pushed ${sync.filesTransferred} file with rsync through the agent's tunnel`);
  await Deno.remove(artifact, { recursive: true });
} finally {
  agent.kill("SIGTERM");
  await agent.status;
}
const audit = (await Deno.readTextFile(`${dir}/audit.jsonl`)).trim().split("\n")
  .map((line) => JSON.parse(line) as AuditRecord);
console.log(
  `   -> the agent wrote ${audit.length} audit lines (one JSON object each); the refusal:`,
);
const refusal = audit.find((record) => record.decision === "denied");
if (refusal) {
  const who = `${refusal.who?.provider}:${refusal.who?.user ?? refusal.who?.node ?? "?"}`;
  console.log(`      ${refusal.time}  ${refusal.endpoint}  from ${refusal.from} (${who})`);
  console.log(
    `      ${refusal.action}: ${refusal.decision}, ${refusal.status}, "${refusal.reason}"`,
  );
  console.log(`      fields: ${Object.keys(refusal).join(", ")}`);
}
await Deno.remove(dir, { recursive: true });

/** The audit fields the demo prints (docs/protocol.md lists them all). */
interface AuditRecord {
  time: string;
  endpoint: string;
  from: string;
  who?: { provider: string; user?: string; node?: string };
  action?: string;
  decision: string;
  reason?: string;
  status: number;
}

/** Reads the agent's stdout until it says where it listens. */
async function listeningUrl(stdout: ReadableStream<Uint8Array>): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stdout) {
    text += decoder.decode(chunk, { stream: true });
    const match = / listening on (http:\/\/\S+)/.exec(text);
    if (match) {
      stdout.pipeTo(new WritableStream()).catch(() => {});
      return match[1];
    }
  }
  throw new Error(`the agent did not start:\n${text}`);
}
