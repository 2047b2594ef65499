// Issue 13, item 3 and acceptance 2 (SshExec): a step is a child of the perl
// supervisor that runs every step of an executor on one ssh session. The
// supervisor's stdout is that session's channel; a step that could open
// /proc/$PPID/fd/1 could write raw frames for a concurrent step's id and
// change its output and exit status. Against a real sshd, logged in as its
// unprivileged test account (root could open any process's fds whatever it
// does).

import { assert, assertEquals, assertStringIncludes } from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { CollectingSink } from "../executor/sinks.ts";
import { Step } from "../step/mod.ts";
import { SshExec } from "../transports/ssh.ts";
import { HAS_PROC } from "./_procs.ts";
import { isRoot, missing } from "./_prereq.ts";
import { sshdMissing, startSshd } from "./_sshd.ts";
import { timeLimit } from "./_time_limit.ts";

const CAPS = CapabilitySet.of("test.*");

/**
 * A shell step that writes, on its supervisor's stdout, an `O` frame saying
 * "all clear" and an `X` frame saying "exit 0" for each step id 1..8 but its
 * own, then reports whether it could.
 */
const FORGER = `
frame() { # type id payload
  n=\${#3}
  printf "$1\\\\000\\\\000\\\\000\\\\$(printf %03o "$2")\\\\000\\\\000\\\\000\\\\$(printf %03o "$n")%s" "$3"
}
i=1
while [ $i -le 8 ]; do
  { frame O $i "all clear
"; frame X $i x:0; } >/proc/$PPID/fd/1 2>/dev/null && echo "forged $i" || echo "refused $i"
  i=$((i + 1))
done
`;

Deno.test({
  name:
    "3. a step cannot write frames on the perl supervisor's channel: another step's output and status stay its own",
  ignore: sshdMissing() !== undefined ||
    missing([HAS_PROC, "/proc (Linux)"], [
        isRoot(),
        "root (to log in as an unprivileged account)",
      ]) !==
      undefined,
  fn: timeLimit(60_000, async () => {
    await using sshd = await startSshd();
    await using exec = new SshExec({
      host: sshd.host,
      port: sshd.port,
      user: sshd.user,
      identityFile: sshd.clientKey,
      knownHostsFile: sshd.knownHosts,
    }, CAPS);
    // The session opens with a first step (id 1), so that the two below share it.
    assertEquals(
      (await exec.runStreaming(Step.shell("test.warm", "true"), new CollectingSink()))
        .exitCode,
      0,
    );
    const checkSink = new CollectingSink();
    const check = exec.runStreaming(
      Step.shell("test.check", 'sleep 1.5; echo "CVE found"; exit 1'),
      checkSink,
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    const forgerSink = new CollectingSink();
    const forger = await exec.runStreaming(Step.shell("test.forge", FORGER), forgerSink);
    const result = await check;
    assertEquals(forger.exitCode, 0, forgerSink.text());
    // The forger never reached the channel...
    assertEquals(
      forgerSink.lines.filter((line) => line.text.startsWith("forged")).map((line) => line.text),
      [],
      `the step wrote frames on its supervisor's channel:\n${forgerSink.text()}`,
    );
    // ...and the check's own result stands.
    assertEquals([result.exitCode, result.success], [1, false], JSON.stringify(result));
    assertEquals(checkSink.text("stdout"), "CVE found");
    // The session is still sound: the next step runs.
    const after = new CollectingSink();
    assertEquals((await exec.runStreaming(Step.shell("test.after", "echo ok"), after)).exitCode, 0);
    assertStringIncludes(after.text(), "ok");
    // A step's own processes are still its own to look at (exec made them dumpable again).
    const own = new CollectingSink();
    await exec.runStreaming(
      Step.shell("test.own", "cat /proc/$$/environ | tr '\\0' '\\n' | grep -c ."),
      own,
    );
    assert(Number(own.text()) > 0, own.text());
  }),
});
