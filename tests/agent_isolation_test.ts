// Issue 13, item 2 and acceptance 2 (the agent), and item 7's setsid
// escapees: against the real agent process. A caller holding only
// `bento.build` runs a step beside a concurrent `sando.promote` step of
// another caller and tries what the agent's one account lets it: read the
// other step's environment (/proc/PID/environ) and stdin (/proc/PID/fd/0),
// write a line into its stdout (/proc/PID/fd/1), signal the agent. With
// `step_isolation = "none"` each of these works (the test shows it, so that
// it can fail); with `"namespace"` none does.

import { assert, assertEquals, assertFalse, assertStringIncludes } from "@deps/assert";
import { CapabilitySet, CollectingSink, Step } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { type AgentProcess, startAgentProcess } from "./_agent_process.ts";
import { HAS_PROC, pidsWithCommandLine, sleepToken, waitFor } from "./_procs.ts";
import { exists, isRoot, missing } from "./_prereq.ts";
import { TailnetStandin, whoisText } from "./_tailscale_standin.ts";
import { timeLimit } from "./_time_limit.ts";

const SANDO = "127.0.0.2";
const BENTO = "127.0.0.3";
const skip = () =>
  missing([HAS_PROC, "/proc (Linux)"], [Deno.build.os === "linux", "Linux namespaces"]);

function config(isolation: string): string {
  return `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/log/audit.jsonl"
step_isolation = "${isolation}"

[identity]
provider = "tailscale"
cli = "tailscale"

[ceiling]
allow = ["bento.*", "sando.*"]

[[grant]]
to = ["tag:sando"]
allow = ["sando.promote"]

[[grant]]
to = ["tag:bento"]
allow = ["bento.build"]
`;
}

/** Reads another step's secrets, writes into its output, signals the agent; says what worked. */
const ATTACK = `
victim=
for p in /proc/[0-9]*; do
  tr '\\0' '\\n' <"$p/environ" 2>/dev/null | grep -q '^DEPLOY_TOKEN=' && victim=$p
done
if [ -n "$victim" ]; then
  echo "env: $(tr '\\0' '\\n' <"$victim/environ" | grep '^DEPLOY_TOKEN=')"
  echo "stdin: $(timeout 2 head -c 64 "$victim/fd/0" 2>/dev/null)"
  echo "FORGED by bento" >"$victim/fd/1" 2>/dev/null && echo "wrote into its stdout"
else
  echo "no other step in sight"
fi
kill -0 "$AGENT_PID" 2>/dev/null && echo "can signal the agent"
ls -A "$AUDIT_DIR" 2>/dev/null | grep -q . && echo "sees the audit log"
exit 0
`;

/** The audit lines of an agent of `config()` (its log is in a directory of its own). */
function auditLines(agent: AgentProcess): Record<string, unknown>[] {
  return Deno.readTextFileSync(`${agent.dir}/log/audit.jsonl`).split("\n").filter(Boolean)
    .map((line) => JSON.parse(line));
}

async function withAgent(
  isolation: string,
  fn: (agent: AgentProcess) => Promise<void>,
): Promise<void> {
  await using tailnet = await TailnetStandin.start({ sockets: [] });
  tailnet.set(SANDO, whoisText("tagged-node", { tags: ["tag:sando"] }));
  tailnet.set(BENTO, whoisText("tagged-node", { tags: ["tag:bento"], stableId: "nBento1CNTRL" }));
  await using agent = await startAgentProcess(config(isolation), {
    env: { PATH: `${tailnet.binDir}:${Deno.env.get("PATH")}` },
  });
  await fn(agent);
}

/** sando's step (a secret in env and stdin) and bento's attack beside it. */
async function attack(agent: AgentProcess) {
  const token = sleepToken();
  const secret = `s3cr3t-${crypto.randomUUID()}`;
  await using sando = new AgentRpc({ url: agent.url, localAddress: SANDO }, CapabilitySet.of("*"));
  await using bento = new AgentRpc({ url: agent.url, localAddress: BENTO }, CapabilitySet.of("*"));
  const victimSink = new CollectingSink();
  // The step does not read its stdin: the secret waits in the pipe.
  const victim = sando.runStreaming(
    Step.shell("sando.promote", `echo promoting; sleep ${token}; echo promoted`, {
      env: { DEPLOY_TOKEN: secret },
      stdin: `stdin-${secret}\n`,
    }),
    victimSink,
  );
  assert(await waitFor(() => pidsWithCommandLine(token).length > 0, 10_000), "sando's step runs");
  const attackSink = new CollectingSink();
  const out = await bento.runStreaming(
    Step.shell("bento.build", ATTACK, {
      env: { AGENT_PID: String(agent.pid), AUDIT_DIR: `${agent.dir}/log` },
    }),
    attackSink,
  );
  assertEquals(out.exitCode, 0, attackSink.text());
  for (const pid of pidsWithCommandLine(token)) Deno.kill(pid, "SIGTERM");
  const result = await victim;
  return { secret, said: attackSink.text("stdout"), victim: victimSink.text("stdout"), result };
}

Deno.test({
  name:
    'without isolation (step_isolation = "none") a step reads, writes and signals across callers',
  ignore: skip() !== undefined,
  fn: timeLimit(60_000, () =>
    withAgent("none", async (agent) => {
      const { secret, said, victim } = await attack(agent);
      assertStringIncludes(said, `env: DEPLOY_TOKEN=${secret}`);
      assertStringIncludes(said, `stdin: stdin-${secret}`);
      assertStringIncludes(said, "wrote into its stdout");
      assertStringIncludes(victim, "FORGED by bento");
      assertStringIncludes(said, "can signal the agent");
      assertStringIncludes(said, "sees the audit log");
    })),
});

Deno.test({
  name:
    '2. with step_isolation = "namespace" a step cannot read another caller\'s environment or stdin, write into its output, or signal the agent',
  ignore: skip() !== undefined,
  fn: timeLimit(60_000, () =>
    withAgent("namespace", async (agent) => {
      await waitFor(() => agent.output().includes("ops-agent: audit copy:"), 5000);
      assertStringIncludes(agent.output(), "PID and mount namespaces of its own");
      const { secret, said, victim, result } = await attack(agent);
      assertEquals(said.trim(), "no other step in sight", said);
      assertFalse(said.includes(secret));
      assertEquals(victim, "promoting", "sando's output is its own");
      assertEquals(result.signal, "SIGTERM", JSON.stringify(result));
      // The agent is alive and serving.
      await using bento = new AgentRpc(
        { url: agent.url, localAddress: BENTO },
        CapabilitySet.of("*"),
      );
      const sink = new CollectingSink();
      const check = await bento.runStreaming(
        Step.shell("bento.build", "echo $$; ls /proc | grep -c '^[0-9]'; id -u"),
        sink,
      );
      assertEquals(check.exitCode, 0, sink.text());
      assertEquals(
        sink.text("stdout").split("\n")[0],
        "2",
        "the step is pid 2 of its own namespace",
      );
      // The audit lines say so.
      const lines = auditLines(agent).filter((l) => l.action === "bento.build");
      assert(
        lines.length > 0 && lines.every((l) => l.isolation === "namespace"),
        JSON.stringify(lines),
      );
    })),
});

Deno.test({
  name: '7. a step\'s setsid escapee is swept through the agent (step_isolation = "namespace")',
  ignore: skip() !== undefined,
  fn: timeLimit(60_000, async () => {
    for (const isolation of ["none", "namespace"]) {
      await withAgent(isolation, async (agent) => {
        const token = sleepToken();
        await using bento = new AgentRpc(
          { url: agent.url, localAddress: BENTO },
          CapabilitySet.of("*"),
        );
        const out = await bento.runStreaming(
          // (The half second lets the escapee make its session before the step ends.)
          Step.shell(
            "bento.build",
            `setsid sleep ${token} >/dev/null 2>&1 </dev/null & sleep 0.5; echo left`,
          ),
          new CollectingSink(),
        );
        assertEquals(out.exitCode, 0);
        const gone = await waitFor(() => pidsWithCommandLine(token).length === 0, 3000);
        if (isolation === "none") {
          // What the agent cannot do without isolation: its permission set cannot read /proc.
          assertFalse(gone, "without isolation the escapee survives (the case the test guards)");
          for (const pid of pidsWithCommandLine(token)) Deno.kill(pid, "SIGKILL");
        } else {
          assert(gone, `the escapee survived its step: ${pidsWithCommandLine(token)}`);
        }
      });
    }
  }),
});

Deno.test({
  name:
    "2. an unprivileged agent isolates its steps through a user namespace; they still run as its account",
  ignore: skip() !== undefined ||
    missing([isRoot() && await exists("/usr/bin/setpriv"), "root and setpriv"]) !== undefined,
  fn: timeLimit(90_000, async () => {
    await Deno.mkdir("/tmp/ops-agent", { recursive: true });
    const base = await Deno.realPath(
      await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "iso-nobody-" }),
    );
    try {
      const denoDir = `${base}/deno-dir`;
      const cache = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
      await Deno.mkdir(denoDir);
      const copied = await new Deno.Command("cp", {
        args: ["-r", `${cache}/npm`, `${denoDir}/npm`],
      })
        .output();
      assert(copied.success);
      await new Deno.Command("chmod", { args: ["-R", "a+rX", denoDir] }).output();
      const dir = `${base}/agent`;
      await Deno.mkdir(dir);
      await Deno.chmod(base, 0o755);
      await Deno.chmod(dir, 0o777);
      await using agent = await startAgentProcess(
        `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/log/audit.jsonl"
step_isolation = "namespace"
[identity]
provider = "loopback"
loopback_identity = "user:dev@localhost"
[ceiling]
allow = ["test.*"]
[[grant]]
to = ["user:dev@localhost"]
allow = ["test.*"]
`,
        {
          dir,
          prefix: ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"],
          env: { DENO_DIR: denoDir, HOME: dir },
        },
      );
      await waitFor(() => agent.output().includes("ops-agent: audit copy:"), 5000);
      assertStringIncludes(agent.output(), "inside a user namespace");
      await using rpc = new AgentRpc({ url: agent.url }, CapabilitySet.of("test.*"));
      const sink = new CollectingSink();
      const out = await rpc.runStreaming(
        Step.shell("test.who", "echo $$; id -u; ls /proc | grep -c '^[0-9]'"),
        sink,
      );
      assertEquals(out.exitCode, 0, sink.text());
      const [pid, uid] = sink.text("stdout").split("\n");
      assertEquals([pid, uid], ["2", "65534"], sink.text());
    } finally {
      await Deno.remove(base, { recursive: true }).catch(() => {});
      await Deno.remove("/tmp/ops-agent/iso-2-probe").catch(() => {});
    }
  }),
});
