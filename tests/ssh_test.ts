// SshExec against a real, private sshd on a loopback port (tests/_sshd.ts):
// the acceptance points of issue 3, each with real ssh, real processes on
// the "remote" side (this machine, as the sshd's own test account), real
// rsync. Without sshd the tests skip with a printed reason (fail under CI=true).

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
import { CapabilityDenied, TransportError } from "../executor/errors.ts";
import { CollectingSink } from "../executor/sinks.ts";
import type { LogLine, LogSink } from "../executor/types.ts";
import { Step } from "../step/mod.ts";
import { SshExec, type SshExecOptions } from "../transports/ssh.ts";
import { HAS_PROC, pidsWithCommandLine, waitFor } from "./_procs.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";
import { type Sshd, sshdMissing, startSshd } from "./_sshd.ts";
import { assertByteExact } from "./_hostile.ts";
import { timeLimit } from "./_time_limit.ts";

const skip = sshdMissing() ?? missing([HAS_PROC, "/proc (Linux) to watch the remote processes"]);
const sshd: Sshd | null = skip ? null : await startSshd();
/** A scratch directory on the "remote" host, owned by the test account. */
const remoteDir = sshd ? await makeRemoteDir(sshd) : "";
if (sshd) {
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(remoteDir, { recursive: true });
    } catch {
      // Removed by the teardown test already.
    }
  });
}

const CAPS = CapabilitySet.of(
  "test.*",
  "observe",
  `sync.push:${remoteDir}`,
  `sync.pull:${remoteDir}`,
);

function target(extra: Partial<SshExecOptions> = {}): SshExecOptions {
  return {
    host: sshd!.host,
    port: sshd!.port,
    user: sshd!.user,
    identityFile: sshd!.clientKey,
    knownHostsFile: sshd!.knownHosts,
    ...extra,
  };
}

function sshTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void>,
  opts: { needs?: [boolean, string][] } = {},
) {
  const reason = skip ?? (opts.needs ? missing(...opts.needs) : undefined);
  Deno.test({ name, ignore: reason !== undefined, fn });
}

/**
 * How the host side runs steps: the default (one long-lived session with the
 * perl supervisor, each step a request on it), a perl supervisor in an ssh
 * session per step, and the POSIX sh supervisor (always a session per step).
 */
const MODES = {
  session: {},
  "per-step perl": { sessionPerStep: true },
  sh: { remoteSupervisor: "sh" },
} as const satisfies Record<string, Partial<SshExecOptions>>;
type Mode = keyof typeof MODES;
const ALL_MODES = Object.keys(MODES) as Mode[];

/** One SshExec shared by the tests that need no fresh master. */
const shared = sshd ? new SshExec(target(), CAPS) : null;

async function run(step: Step, exec = shared!, signal?: AbortSignal) {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(step, sink, { signal });
  return { out, sink, stdout: sink.text("stdout"), stderr: sink.text("stderr") };
}

async function makeRemoteDir(s: Sshd): Promise<string> {
  const dir = `/tmp/ops-exec-ssh-test-${crypto.randomUUID().slice(0, 8)}`;
  await Deno.mkdir(dir, { mode: 0o755 });
  const chown = await new Deno.Command("chown", { args: [`${s.user}:`, dir] }).output();
  assert(chown.success || Deno.uid() !== 0, "chown of the remote scratch dir failed");
  return dir;
}

/** A unique token for a remote process tree, visible in its command lines. */
function marker(): string {
  return `300.${Math.floor(Math.random() * 1e9)}`;
}

/** Pids on the remote host (this machine) whose command line holds `token`. */
function survivors(token: string): number[] {
  return pidsWithCommandLine(token).filter((pid) => pid !== Deno.pid);
}

/**
 * The local ssh clients this process started to run steps: per-step clients
 * and long-lived sessions (both carry a supervisor's magic, OPSX1 or OPSX2).
 */
function localStepClients(): number[] {
  const pids: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      const cmdline = Deno.readTextFileSync(`/proc/${entry.name}/cmdline`);
      if (ppid === Deno.pid && cmdline.includes("ssh\0") && cmdline.includes("OPSX")) {
        pids.push(Number(entry.name));
      }
    } catch {
      // Gone while we looked.
    }
  }
  return pids;
}

// ---- 1. byte-exact argv, env, cwd, stdin ------------------------------------

for (const mode of ALL_MODES) {
  sshTest(
    `1. argv, env, cwd and stdin arrive byte-exact; nothing generated runs as shell (${mode})`,
    async () => {
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      const scratch = `${remoteDir}/exact-${mode.replace(" ", "-")}`;
      await Deno.mkdir(scratch);
      await Deno.chown(scratch, (await Deno.stat(remoteDir)).uid, null);
      await assertByteExact(exec, scratch, mode === "session" ? 60 : 25);
    },
  );
}

sshTest(
  "1. a step sees exactly the base environment plus step.env (not the caller's, not sshd's)",
  async () => {
    Deno.env.set("OPS_EXEC_CALLER_SECRET", "leak");
    try {
      const { out, stdout } = await run(
        Step.exec("test.env", ["env"], { env: { MODE: "release", LANG: "C" } }),
      );
      assertEquals(out.exitCode, 0);
      const names = stdout.split("\n").map((line) => line.slice(0, line.indexOf("="))).sort();
      const allowed = ["HOME", "LANG", "LOGNAME", "MODE", "PATH", "SHELL", "TMPDIR", "USER"];
      assertEquals(names.filter((n) => !allowed.includes(n)), [], stdout);
      const lines = stdout.split("\n");
      for (const entry of ["MODE=release", "LANG=C", `USER=${sshd!.user}`]) {
        assert(lines.includes(entry), `${entry} missing from:\n${stdout}`);
      }
      assertFalse(stdout.includes("SSH_CONNECTION"), "sshd's session variables leaked");
      assertFalse(stdout.includes("OPS_EXEC_CALLER_SECRET"));
    } finally {
      Deno.env.delete("OPS_EXEC_CALLER_SECRET");
    }
  },
);

// ---- 2. denial before any ssh process ------------------------------------

sshTest(
  "2. an ungranted action throws CapabilityDenied before any ssh process starts",
  async () => {
    // Aimed at a closed port: had ssh started, this would be a TransportError.
    const closed = closedPort();
    const narrow = new SshExec(target({ port: closed }), CapabilitySet.of("bento.build"));
    const denied = await assertRejects(
      () => narrow.runStreaming(Step.shell("bento.sign", "true"), new CollectingSink()),
      CapabilityDenied,
    );
    assertEquals(denied.scope, "caller");
    assertEquals(denied.host, sshd!.host);
    await assertRejects(() => narrow.observe(), CapabilityDenied);
    await assertRejects(() => narrow.push("/tmp", "/srv/app"), CapabilityDenied);
    // The granted action on the same executor does try ssh, and fails as ssh.
    const error = await assertRejects(
      () => narrow.runStreaming(Step.shell("bento.build", "true"), new CollectingSink()),
      TransportError,
    );
    assertEquals(error.kind, "unreachable");
    await narrow.close();

    // Against the live sshd: a fresh executor's denied step opens no connection.
    const before = await sshd!.authenticatedConnections();
    const clients = localStepClients();
    const live = new SshExec(target(), CapabilitySet.of("bento.build"));
    await assertRejects(
      () => live.runStreaming(Step.shell("bento.sign", "true"), new CollectingSink()),
      CapabilityDenied,
    );
    assertEquals(await sshd!.authenticatedConnections(), before);
    assertEquals(localStepClients(), clients);
    await live.close();
  },
);

// ---- 3. timeout, cancel, dropped connection kill the whole remote group -----

const TREE = (token: string) => `trap '' TERM; sleep ${token} & sleep ${token}; wait`;

for (const mode of ALL_MODES) {
  sshTest(
    `3. a timeout kills the remote step's whole group within grace + 2 s (${mode})`,
    async () => {
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      const token = marker();
      const started = performance.now();
      const { out } = await run(
        Step.shell("test.tree", TREE(token), { timeoutMs: 800, killGraceMs: 1000 }),
        exec,
      );
      assert(out.timedOut);
      assertFalse(out.cancelled);
      assertEquals(out.signal, "SIGKILL"); // the shell ignored SIGTERM: the grace ran out
      assertLess(performance.now() - started, 800 + 1000 + 2000);
      assert(await waitFor(() => survivors(token).length === 0, 2000), `left: ${survivors(token)}`);
    },
  );

  sshTest(
    `3. an AbortSignal cancel kills the remote step's whole group (${mode})`,
    async () => {
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      const token = marker();
      const controller = new AbortController();
      const running = run(
        Step.shell("test.tree", `sleep ${token} & sleep ${token}; wait`, { killGraceMs: 1000 }),
        exec,
        controller.signal,
      );
      assert(await waitFor(() => survivors(token).length >= 2, 5000), "the tree never started");
      controller.abort();
      const { out } = await running;
      assert(out.cancelled);
      assertFalse(out.timedOut);
      assertEquals(out.signal, "SIGTERM");
      assert(
        await waitFor(() => survivors(token).length === 0, 1000 + 2000),
        `left: ${survivors(token)}`,
      );
    },
  );

  sshTest(
    `3. killing the local ssh client (a dropped connection) kills the remote group (${mode})`,
    async () => {
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      const token = marker();
      const others = localStepClients();
      const running = run(Step.shell("test.tree", TREE(token), { killGraceMs: 1000 }), exec);
      running.catch(() => {});
      assert(await waitFor(() => survivors(token).length >= 2, 5000), "the tree never started");
      // The step's own client, or the session it runs on.
      const clients = localStepClients().filter((pid) => !others.includes(pid));
      assertEquals(clients.length, 1);
      Deno.kill(clients[0], "SIGKILL");
      const error = await assertRejects(() => running, TransportError);
      assertEquals(error.kind, "connection_lost");
      assert(
        await waitFor(() => survivors(token).length === 0, 1000 + 2000),
        `left: ${survivors(token)}`,
      );
    },
  );
}

sshTest("3. an AbortSignal already aborted starts nothing", async () => {
  const before = await sshd!.sessions();
  const controller = new AbortController();
  controller.abort();
  const { out } = await run(Step.shell("test.never", "true"), shared!, controller.signal);
  assert(out.cancelled);
  assertEquals(out.exitCode, null);
  assertEquals(await sshd!.sessions(), before);
});

sshTest(
  "3. a cancel while the master opens returns cancelled; other callers still get the master",
  async () => {
    await using exec = new SshExec(target(), CAPS);
    const controller = new AbortController();
    const other = run(Step.exec("test.other", ["echo", "other"]), exec);
    const cancelled = run(Step.exec("test.never", ["echo", "never"]), exec, controller.signal);
    setTimeout(() => controller.abort(), 20); // a cold connection takes far longer
    const [mine, theirs] = await Promise.all([cancelled, other]);
    assert(mine.out.cancelled);
    assertEquals([mine.out.exitCode, mine.stdout], [null, ""]);
    assertEquals([theirs.out.exitCode, theirs.stdout], [0, "other"]);
  },
);

sshTest(
  "3. a sink that throws ends the run: the remote group is killed, the error propagates",
  async () => {
    const token = marker();
    const sink: LogSink = {
      write(line: LogLine) {
        if (line.text === "go") throw new Error("sink broke");
      },
    };
    await assertRejects(
      () =>
        shared!.runStreaming(
          Step.shell("test.tree", `sleep ${token} & echo go; sleep ${token}; wait`, {
            killGraceMs: 500,
          }),
          sink,
        ),
      Error,
      "sink broke",
    );
    assert(
      await waitFor(() => survivors(token).length === 0, 500 + 2000),
      `left: ${survivors(token)}`,
    );
  },
);

// ---- the long-lived session: per-step flow control, its death, its idle end --------

sshTest(
  "session: a stalled sink holds back its own step only; a concurrent step on the same session finishes",
  timeLimit(30_000, async () => {
    await using exec = new SshExec(target(), CAPS);
    const sessions = await sshd!.sessions();
    const counter = `${remoteDir}/count-${marker()}`;
    // 30 000 lines of 100 bytes (3 MB, more than the 2 MiB window), recording after each how many.
    const producer =
      `i=0; while [ $i -lt 30000 ]; do printf '%099d\\n' $i; i=$((i+1)); echo $i >> ${counter}; done`;
    let release!: () => void;
    const stall = new Promise<void>((resolve) => (release = resolve));
    let received = 0;
    const stalled: LogSink = {
      write() {
        if (++received === 1) return stall;
      },
    };
    const slow = exec.runStreaming(Step.shell("test.pressure", producer), stalled);
    slow.catch(() => {});
    assert(await waitFor(() => received === 1, 10_000), "the first line never came");
    // Meanwhile another step on the same session prints 8 MiB and ends.
    let other = 0;
    const fast = await exec.runStreaming(
      Step.exec("test.fast", ["head", "-c", "8388608", "/dev/zero"]),
      {
        write(line: LogLine) {
          other += line.text.length;
        },
      },
    );
    assertEquals([fast.exitCode, other], [0, 8 << 20]);
    // Appended, not rewritten: dash truncates a `>` target before it flushes the
    // printf still in its buffer into the full pipe, which would read as 0.
    const readCount = async () =>
      (await Deno.readTextFile(counter).catch(() => "")).split("\n").filter(Boolean).length;
    const stalledAt = await settled(readCount, 10_000);
    await new Promise((r) => setTimeout(r, 700));
    assertEquals(await readCount(), stalledAt, "the producer advanced while its sink was stalled");
    // The 2 MiB window filled (the step ran ahead of its sink that far), and no further than
    // the window, the step's pipe and a read chunk: about 23 000 lines of 100 bytes.
    assertGreater(stalledAt, (2 * 1024 * 1024) / 100 - 100, `wrote ${stalledAt} lines`);
    assertLess(stalledAt, (2 * 1024 * 1024 + 3 * 65536) / 100 + 100, `wrote ${stalledAt} lines`);
    assertEquals(received, 1);
    release();
    const out = await slow;
    assertEquals([out.exitCode, received], [0, 30000]);
    // Both steps rode one session: the connect probe and the session are all sshd saw.
    assertEquals(await sshd!.sessions(), sessions + 2);
    await Deno.remove(counter).catch(() => {});
  }),
);

sshTest(
  "session: killed mid-step, its running steps fail with connection_lost and their groups die; the next step opens a new session",
  async () => {
    await using exec = new SshExec(target(), CAPS);
    const others = localStepClients();
    await run(Step.exec("test.warm", ["true"]), exec);
    const mine = localStepClients().filter((pid) => !others.includes(pid));
    assertEquals(mine.length, 1, "one session client");
    const connections = await sshd!.authenticatedConnections();
    const sessions = await sshd!.sessions();
    const tokens = [marker(), marker()];
    const running = tokens.map((token) =>
      run(Step.shell("test.tree", TREE(token), { killGraceMs: 1000 }), exec)
    );
    running.forEach((r) => r.catch(() => {}));
    assert(
      await waitFor(() => tokens.every((token) => survivors(token).length >= 2), 5000),
      "the trees never started",
    );
    const killed = performance.now();
    Deno.kill(mine[0], "SIGKILL");
    for (const r of running) {
      const error = await assertRejects(() => r, TransportError);
      assertEquals(error.kind, "connection_lost", error.message);
    }
    // Promptly (a bound on a hang, not a speed): ssh gone, no wait on the master's pipes.
    assertLess(performance.now() - killed, 5000);
    for (const token of tokens) {
      assert(
        await waitFor(() => survivors(token).length === 0, 1000 + 2000),
        `left: ${survivors(token)}`,
      );
    }
    const next = await run(Step.exec("test.after", ["echo", "after"]), exec);
    assertEquals([next.out.exitCode, next.stdout], [0, "after"]);
    assertEquals(await sshd!.authenticatedConnections(), connections, "the master survived");
    assertEquals(await sshd!.sessions(), sessions + 1, "one new session");
  },
);

sshTest(
  "session: the connection dropped on the host's side mid-step: connection_lost, the group dies, the next step opens a new master",
  async () => {
    await using exec = new SshExec(target(), CAPS);
    const before = childrenOf(sshd!.pid);
    await run(Step.exec("test.warm", ["true"]), exec);
    // sshd's per-connection process (and what it forked): this executor's connection.
    const connection = childrenOf(sshd!.pid).filter((pid) => !before.includes(pid));
    assertEquals(connection.length, 1, "one new connection");
    const connections = await sshd!.authenticatedConnections();
    const token = marker();
    const running = run(Step.shell("test.tree", TREE(token), { killGraceMs: 1000 }), exec);
    running.catch(() => {});
    assert(await waitFor(() => survivors(token).length >= 2, 5000), "the tree never started");
    // sshd's processes of the connection go (not the supervisor and the step they started).
    const sshdProcesses = [connection[0], ...descendantsOf(connection[0])].filter((pid) =>
      commandName(pid) === "sshd"
    );
    assertGreater(sshdProcesses.length, 1, "sshd's monitor and its session process");
    for (const pid of sshdProcesses) Deno.kill(pid, "SIGKILL");
    const error = await assertRejects(() => running, TransportError);
    assertEquals(error.kind, "connection_lost", error.message);
    assert(
      await waitFor(() => survivors(token).length === 0, 1000 + 2000),
      `left: ${survivors(token)}`,
    );
    const next = await run(Step.exec("test.after", ["echo", "after"]), exec);
    assertEquals([next.out.exitCode, next.stdout], [0, "after"]);
    assertEquals(await sshd!.authenticatedConnections(), connections + 1, "a new master");
  },
);

sshTest(
  "session: idle for persistSeconds, it closes (the master's own clock then runs); the next step opens a new one",
  async () => {
    await using exec = new SshExec(target({ persistSeconds: 1 }), CAPS);
    const others = localStepClients();
    await run(Step.exec("test.one", ["true"]), exec);
    const mine = localStepClients().filter((pid) => !others.includes(pid));
    assertEquals(mine.length, 1);
    assert(
      await waitFor(() => !localStepClients().includes(mine[0]), 4000),
      "the idle session stayed open",
    );
    const next = await run(Step.exec("test.two", ["echo", "two"]), exec);
    assertEquals([next.out.exitCode, next.stdout], [0, "two"]);
  },
);

// ---- 4. streams, order, exit codes, signals --------------------------------

sshTest("4. stdout and stderr stay separate, ordered by one seq", async () => {
  const script = "for i in 1 2 3 4 5; do echo out$i; sleep 0.02; echo err$i >&2; sleep 0.02; done";
  const { out, sink } = await run(Step.shell("test.lines", script));
  assert(out.success);
  assertEquals(
    sink.lines.map((l) => `${l.stream}:${l.text}`),
    [1, 2, 3, 4, 5].flatMap((i) => [`stdout:out${i}`, `stderr:err${i}`]),
  );
  sink.lines.forEach((line, i) => assertEquals(line.seq, i));
  assertEquals(out.lines, { stdout: 5, stderr: 5 });
});

for (const mode of ALL_MODES) {
  sshTest(
    `4. remote exit codes and signal deaths are reported faithfully (${mode})`,
    async () => {
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      for (const code of [0, 1, 42, 127, 255]) {
        const { out } = await run(Step.shell("test.exit", `exit ${code}`), exec);
        assertEquals([out.exitCode, out.signal, out.success], [code, null, code === 0]);
      }
      for (const signal of ["TERM", "KILL", "SEGV", "USR1"]) {
        const { out } = await run(Step.shell("test.signal", `kill -${signal} $$`), exec);
        assertEquals([out.exitCode, out.signal, out.success], [null, `SIG${signal}`, false]);
      }
      const last = await run(Step.shell("test.tail", "printf 'no newline' >&2; exit 3"), exec);
      assertEquals([last.out.exitCode, last.stderr], [3, "no newline"]);
      // Every supervisor tells an exit status above 128 from a death by signal
      // (the sh one through util-linux `setsid -f -w` here).
      const high = await run(Step.shell("test.exit", "exit 143"), exec);
      assertEquals([high.out.exitCode, high.out.signal], [143, null]);
    },
  );
}

sshTest("4. a missing program or cwd reads as a shell would report it (127)", async () => {
  const program = await run(Step.exec("test.missing", ["ops-exec-no-such-program"]));
  assertEquals(program.out.exitCode, 127);
  assertStringIncludes(program.stderr, "ops-exec-no-such-program");
  const cwd = await run(Step.exec("test.missing", ["true"], { cwd: "/no/such/dir" }));
  assertEquals(cwd.out.exitCode, 127);
  assertStringIncludes(cwd.stderr, "cwd /no/such/dir: no such directory");
  // Without a cwd, a step starts in the account's home.
  const home = await run(Step.shell("test.pwd", 'printf "%s %s" "$PWD" "$HOME"'));
  const [pwd, homeDir] = home.stdout.split(" ");
  assertEquals(pwd, homeDir);
});

// ---- 5. ssh's own failures -------------------------------------------------

async function failure(opts: Partial<SshExecOptions>): Promise<TransportError> {
  await using exec = new SshExec(target(opts), CAPS);
  const error = await assertRejects(
    () => exec.runStreaming(Step.shell("test.never", "exit 255"), new CollectingSink()),
    TransportError,
  );
  // The same executor's observe() fails the same way: never a step result.
  await assertRejects(() => exec.observe(), TransportError);
  return error;
}

sshTest("5. port closed: TransportError unreachable", async () => {
  const error = await failure({ port: closedPort() });
  assertEquals(error.kind, "unreachable");
  assertEquals(error.code, "transport_unreachable");
  assertStringIncludes(error.message, "Connection refused");
});

sshTest("5. wrong key: TransportError auth_refused", async () => {
  const error = await failure({ identityFile: sshd!.wrongKey });
  assertEquals(error.kind, "auth_refused");
  assertStringIncludes(error.detail ?? "", "Permission denied");
});

sshTest("5. wrong known_hosts: TransportError host_key_changed", async () => {
  const error = await failure({ knownHostsFile: sshd!.wrongKnownHosts });
  assertEquals(error.kind, "host_key_changed");
  assertStringIncludes(error.message, sshd!.wrongKnownHosts);
});

sshTest("5. host not in known_hosts: TransportError host_key_unknown", async () => {
  const error = await failure({
    knownHostsFile: sshd!.emptyKnownHosts,
    sshOptions: ["GlobalKnownHostsFile=/dev/null"],
  });
  assertEquals(error.kind, "host_key_unknown");
});

sshTest("5. a missing ssh client: TransportError spawn_failed", async () => {
  const error = await failure({ sshProgram: "/nonexistent/ssh" });
  assertEquals(error.kind, "spawn_failed");
  assertStringIncludes(error.message, "/nonexistent/ssh");
});

sshTest("5. a step's own exit 255 is a result, not an ssh failure", async () => {
  const { out, stderr } = await run(Step.shell("test.exit", "echo 'ssh: fake' >&2; exit 255"));
  assertEquals([out.exitCode, out.signal, stderr], [255, null, "ssh: fake"]);
});

// ---- 6. one master -----------------------------------------------------------

for (const mode of ["session", "per-step perl"] as const) {
  sshTest(
    `6. 20 sequential steps open exactly one ssh master (one authenticated connection) (${mode})`,
    async () => {
      const connections = await sshd!.authenticatedConnections();
      const sessions = await sshd!.sessions();
      const masters = muxMasters();
      const exec = new SshExec(target(MODES[mode]), CAPS);
      for (let i = 0; i < 20; i++) {
        const { out, stdout } = await run(Step.exec("test.seq", ["echo", String(i)]), exec);
        assertEquals([out.exitCode, stdout], [0, String(i)]);
      }
      assertEquals(await sshd!.authenticatedConnections(), connections + 1);
      // The connect probe, then one long-lived session for every step, or one session per step.
      assertEquals(await sshd!.sessions(), sessions + (mode === "session" ? 2 : 21));
      const mine = muxMasters().filter((pid) => !masters.includes(pid));
      assertEquals(mine.length, 1, "exactly one new master process");
      await exec.close();
      assert(
        await waitFor(() => muxMasters().every((pid) => pid !== mine[0]), 3000),
        "close() ends the master",
      );
    },
  );
}

sshTest("6. concurrent steps share the one master", async () => {
  const connections = await sshd!.authenticatedConnections();
  await using exec = new SshExec(target(), CAPS);
  const outs = await Promise.all(
    Array.from({ length: 8 }, (_, i) => run(Step.shell("test.par", `sleep 0.2; echo ${i}`), exec)),
  );
  assertEquals(outs.map((o) => o.stdout), ["0", "1", "2", "3", "4", "5", "6", "7"]);
  assertEquals(await sshd!.authenticatedConnections(), connections + 1);
});

// ---- 7. push / pull ------------------------------------------------------------

sshTest(
  "7. push and pull a tree with delete and exclude, through the master",
  async () => {
    const local = await Deno.makeTempDir({ prefix: "ops-exec-ssh-sync-" });
    const back = await Deno.makeTempDir({ prefix: "ops-exec-ssh-pull-" });
    try {
      await Deno.mkdir(`${local}/sub dir`, { recursive: true });
      await Deno.writeTextFile(`${local}/a.txt`, "alpha");
      await Deno.writeTextFile(`${local}/sub dir/b.txt`, "beta ü");
      await Deno.writeTextFile(`${local}/skip.log`, "excluded");
      const dest = `${remoteDir}/pushed`;
      await using exec = new SshExec(target(), CAPS);
      await run(Step.exec("test.mkdir", ["mkdir", "-p", `${dest}/stale`]), exec);
      await run(Step.exec("test.touch", ["touch", `${dest}/stale/old.txt`]), exec);
      const connections = await sshd!.authenticatedConnections();

      const pushed = await exec.push(`${local}/`, `${dest}/`, { delete: true, exclude: ["*.log"] });
      assertEquals(pushed.action, "sync.push");
      assertEquals(pushed.filesTransferred, 2);
      assertGreater(pushed.filesDeleted, 0);
      const listing = await run(
        Step.exec("test.ls", ["sh", "-c", 'cd "$1" && find . -type f | sort', "sh", dest]),
        exec,
      );
      assertEquals(listing.stdout.split("\n"), ["./a.txt", "./sub dir/b.txt"]);

      const pulled = await exec.pull(`${dest}/`, `${back}/`);
      assertEquals(pulled.action, "sync.pull");
      assertEquals(await Deno.readTextFile(`${back}/sub dir/b.txt`), "beta ü");
      assertFalse(await exists(`${back}/skip.log`));
      assertEquals(await sshd!.authenticatedConnections(), connections, "rsync rode the master");
    } finally {
      await Deno.remove(local, { recursive: true });
      await Deno.remove(back, { recursive: true });
    }
  },
  { needs: [[RSYNC !== null, "rsync"]] },
);

sshTest("7. a path outside the granted root is refused before rsync starts", async () => {
  const sessions = await sshd!.sessions();
  const outside = [`${remoteDir}/../elsewhere`, "/etc", `${remoteDir}-sibling/x`];
  for (const path of outside) {
    const push = await assertRejects(() => shared!.push("/tmp/nothing", path), CapabilityDenied);
    assertEquals(push.action, "sync.push");
    await assertRejects(() => shared!.pull(path, "/tmp/nothing"), CapabilityDenied);
  }
  assertEquals(await sshd!.sessions(), sessions, "no rsync (or any session) started");
});

// ---- 8. observe -----------------------------------------------------------------

sshTest("8. observe() returns the sshd host's real hostname, kernel, load and memory", async () => {
  const facts = await shared!.observe();
  assertEquals(facts.host, sshd!.host);
  assertEquals(facts.hostname, Deno.hostname());
  assertEquals(facts.os, Deno.build.os);
  assertEquals(facts.arch, Deno.build.arch);
  assertEquals(facts.kernel, Deno.osRelease());
  assertEquals(facts.memory.totalBytes, Deno.systemMemoryInfo().total);
  assert(facts.memory.availableBytes > 0 && facts.memory.availableBytes <= facts.memory.totalBytes);
  const [one] = Deno.loadavg();
  assertLess(Math.abs(facts.loadAverage[0] - one), 2);
  assertLess(Math.abs(facts.uptimeSeconds - Deno.osUptime()), 10);
  assertEquals(facts.disks.map((d) => d.path), [remoteDir]);
  assert(facts.disks[0].totalBytes > 0);
});

// ---- agent and teardown -----------------------------------------------------------

sshTest(
  "ssh-agent keys work as for plain ssh (SSH_AUTH_SOCK reaches ssh, not the step)",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "ops-exec-agent-" });
    const socket = `${dir}/agent.sock`;
    const agent = new Deno.Command("ssh-agent", {
      args: ["-D", "-a", socket],
      stdout: "null",
      stderr: "null",
    })
      .spawn();
    const old = Deno.env.get("SSH_AUTH_SOCK");
    try {
      assert(await waitFor(() => existsSync(socket), 5000), "ssh-agent did not start");
      const add = await new Deno.Command("ssh-add", {
        args: [sshd!.clientKey],
        env: { SSH_AUTH_SOCK: socket },
        stderr: "piped",
      }).output();
      assert(add.success, new TextDecoder().decode(add.stderr));
      Deno.env.set("SSH_AUTH_SOCK", socket);
      await using exec = new SshExec(target({ identityFile: undefined }), CAPS);
      const { out, stdout } = await run(Step.exec("test.env", ["env"]), exec);
      assertEquals(out.exitCode, 0);
      assertFalse(stdout.includes("SSH_AUTH_SOCK"));
    } finally {
      if (old === undefined) Deno.env.delete("SSH_AUTH_SOCK");
      else Deno.env.set("SSH_AUTH_SOCK", old);
      agent.kill("SIGTERM");
      await agent.status;
      await Deno.remove(dir, { recursive: true });
    }
  },
  { needs: [[existsSync("/usr/bin/ssh-agent"), "ssh-agent"]] },
);

sshTest(
  "close() ends the master and removes its private directory; a later call reconnects",
  async () => {
    const exec = new SshExec(target(), CAPS);
    const before = muxMasters();
    await run(Step.exec("test.one", ["true"]), exec);
    const mine = muxMasters().filter((pid) => !before.includes(pid));
    assertEquals(mine.length, 1);
    const dir = controlDirOf(mine[0]);
    assert(dir.startsWith("/tmp/oe-") && Deno.statSync(dir).mode! % 0o1000 === 0o700, dir);
    assertLess(`${dir}/m`.length, 104, "fits macOS' sun_path");
    await exec.close();
    assert(await waitFor(() => !muxMasters().includes(mine[0]), 3000));
    assertFalse(existsSync(dir));
    await exec.close(); // idempotent
    const again = await run(Step.exec("test.two", ["echo", "again"]), exec);
    assertEquals(again.stdout, "again");
    await exec.close();
  },
);

Deno.test({
  name: "teardown: the shared executor and sshd",
  ignore: skip !== undefined,
  fn: async () => {
    await shared?.close();
    await sshd?.stop();
    await Deno.remove(remoteDir, { recursive: true }).catch(() => {});
  },
});

// ---- helpers ---------------------------------------------------------------------

function closedPort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/**
 * Pids of ssh mux masters (`ssh: /tmp/oe-XXXX/m [mux]`) connected to this file's sshd. Only
 * those: every SshExec on the machine (a concurrent test run, another checkout) has a master
 * that looks the same, and counting theirs made the "exactly one new master" checks flaky.
 */
function muxMasters(): number[] {
  const sockets = socketsTo(sshd!.port);
  return pidsWithCommandLine("[mux]").filter((pid) => {
    try {
      if (!Deno.readTextFileSync(`/proc/${pid}/cmdline`).startsWith("ssh: /tmp/oe-")) return false;
      for (const fd of Deno.readDirSync(`/proc/${pid}/fd`)) {
        const link = Deno.readLinkSync(`/proc/${pid}/fd/${fd.name}`);
        if (sockets.has(/^socket:\[(\d+)\]$/.exec(link)?.[1] ?? "")) return true;
      }
    } catch {
      // Gone while we looked.
    }
    return false;
  });
}

/** The inodes of this namespace's TCP sockets whose remote end is port `port`. */
function socketsTo(port: number): Set<string> {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const inodes = new Set<string>();
  for (const table of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try {
      text = Deno.readTextFileSync(table);
    } catch {
      continue;
    }
    for (const row of text.split("\n").slice(1)) {
      const columns = row.trim().split(/\s+/);
      if (columns.length > 9 && columns[2].endsWith(`:${hex}`)) inodes.add(columns[9]);
    }
  }
  return inodes;
}

/** Live children of `pid`. */
function childrenOf(pid: number): number[] {
  const found: number[] = [];
  for (const entry of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(entry.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${entry.name}/stat`);
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (Number(ppid) === pid && state !== "Z") found.push(Number(entry.name));
    } catch {
      // Gone while we looked.
    }
  }
  return found;
}

/** Reads `value` every 500 ms until it stops changing (or `ms` pass); returns it. */
async function settled(value: () => Promise<number>, ms: number): Promise<number> {
  const end = Date.now() + ms;
  let last = await value();
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 500));
    const now = await value();
    if (now === last) return now;
    last = now;
  }
  return last;
}

/** The command name of `pid` (`comm`), or "" when it is gone. */
function commandName(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch {
    return "";
  }
}

/** Every live descendant of `pid`. */
function descendantsOf(pid: number): number[] {
  const children = childrenOf(pid);
  return [...children, ...children.flatMap(descendantsOf)];
}

function controlDirOf(pid: number): string {
  const title = Deno.readTextFileSync(`/proc/${pid}/cmdline`);
  const path = title.slice("ssh: ".length, title.indexOf(" [mux]"));
  return path.slice(0, path.lastIndexOf("/"));
}

function existsSync(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}
