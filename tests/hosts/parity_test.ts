// Acceptance 4 of the multi-host issue: the same step to the same host over
// SshExec (its sshd) and over AgentRpc (its agent) gives the same lines and
// the same outcome. Both reach the same host: same hostname, same /srv.

import { assert, assertEquals } from "@deps/assert";
import {
  CapabilitySet,
  CollectingSink,
  type Executor,
  type LogLine,
  type RunOutput,
  Step,
} from "../../mod.ts";
import { APP_ROOT, fleetTest } from "./_fleet.ts";

const FLEET = CapabilitySet.of("fleet.*", "observe");

/** What must be equal over both transports. */
function outcome(out: RunOutput) {
  return {
    exitCode: out.exitCode,
    signal: out.signal,
    success: out.success,
    timedOut: out.timedOut,
    cancelled: out.cancelled,
    lines: out.lines,
  };
}

async function runOn(exec: Executor, step: Step): Promise<{ out: RunOutput; lines: LogLine[] }> {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(step, sink);
  return { out, lines: sink.lines };
}

/** A stream's texts, in order. */
function texts(lines: LogLine[], stream: LogLine["stream"]): string[] {
  return lines.filter((l) => l.stream === stream).map((l) => l.text);
}

// Steps that print on one stream: the whole line sequence (seq included) must match.
const ONE_STREAM: [string, Step][] = [
  [
    "text edge cases and an exit code",
    Step.shell(
      "fleet.lines",
      // Empty lines, tabs and spaces kept, UTF-8, a bad byte, a 1.5 MiB line
      // (split at 1 MiB), the host's own files, and a last line without newline.
      `set -e; cd "${APP_ROOT}"; printf 'first\\n\\n  indented\\ttab  \\n'; echo "grüße ✓"; ` +
        `printf 'bad \\377 byte\\n'; head -c 1572864 /dev/zero | tr '\\0' x; echo; ` +
        `echo "on $(hostname) in $(pwd): $(cat parity.txt)"; echo "env: $GREETING"; ` +
        `printf 'no newline'; exit 7`,
      { env: { GREETING: "hello 'quoted' $NOT_EXPANDED" } },
    ),
  ],
  [
    "an argv with awkward arguments and stdin",
    Step.exec(
      "fleet.argv",
      ["sh", "-c", 'for a in "$@"; do printf "[%s]\\n" "$a"; done; cat', "sh", "a b", "", "'$x'"],
      { stdin: "from stdin\nsecond line" },
    ),
  ],
  ["a step killed by a signal", Step.shell("fleet.signal", "echo before; kill -TERM $$")],
  ["a command that does not exist", Step.exec("fleet.missing", ["no-such-program-xyz"])],
  [
    "a step over its timeout",
    Step.shell("fleet.slow", "echo started; sleep 20", { timeoutMs: 1000, killGraceMs: 300 }),
  ],
];

fleetTest(
  "parity: the same step over SshExec and AgentRpc gives the same result",
  async (fleet, t) => {
    for (const host of ["canary", "mac"]) {
      const marker = `${host}-${crypto.randomUUID()}`;
      assertEquals((await fleet.inHost(host, `echo ${marker} > ${APP_ROOT}/parity.txt`)).code, 0);
      const ssh = fleet.ssh(host, FLEET);
      const agent = fleet.rpc(host, "alice", FLEET);

      for (const [name, step] of ONE_STREAM) {
        await t.step(`${host}: ${name}`, async () => {
          const viaSsh = await runOn(ssh, step);
          const viaAgent = await runOn(agent, step);
          assertEquals(outcome(viaAgent.out), outcome(viaSsh.out));
          assertEquals(viaAgent.lines, viaSsh.lines);
          assert(viaSsh.lines.length > 0);
          if (step.action === "fleet.lines") {
            assertEquals(viaSsh.out.exitCode, 7);
            assertEquals(
              texts(viaSsh.lines, "stdout").at(-2),
              `env: hello 'quoted' $NOT_EXPANDED`,
            );
            assert(texts(viaSsh.lines, "stdout").includes(`on ${host} in ${APP_ROOT}: ${marker}`));
          }
          if (step.action === "fleet.slow") assert(viaSsh.out.timedOut);
        });
      }

      await t.step(`${host}: both streams`, async () => {
        // The order between two pipes depends on scheduling; each stream's own
        // order, the counts and the seq numbering do not.
        const step = Step.shell(
          "fleet.streams",
          "for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; done; exit 3",
        );
        const viaSsh = await runOn(ssh, step);
        const viaAgent = await runOn(agent, step);
        assertEquals(outcome(viaAgent.out), outcome(viaSsh.out));
        assertEquals(viaSsh.out.exitCode, 3);
        for (const stream of ["stdout", "stderr"] as const) {
          assertEquals(texts(viaAgent.lines, stream), texts(viaSsh.lines, stream));
        }
        assertEquals(texts(viaSsh.lines, "stderr"), [1, 2, 3, 4, 5].map((i) => `err ${i}`));
        for (const { lines } of [viaSsh, viaAgent]) {
          assertEquals(lines.map((l) => l.seq), lines.map((_, i) => i));
        }
      });

      await t.step(`${host}: observe() sees the same host`, async () => {
        const [a, s] = [await agent.observe(), await ssh.observe()];
        assertEquals([a.hostname, a.os, a.arch, a.kernel], [
          s.hostname,
          s.os,
          s.arch,
          s.kernel,
        ]);
        assertEquals(a.hostname, host);
      });
    }
  },
);
