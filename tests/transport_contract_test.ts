// What every transport keeps (SPEC §3, §4), checked the same way on each:
// LocalExec, AgentRpc against the real agent process, SshExec against a real
// private sshd in each of its modes (the perl session, a perl supervisor per
// step, the POSIX sh supervisor). Each test here exists because a small,
// plausible bug once passed the whole suite (issue 10); tools/mutants.ts puts
// those bugs back and checks that these tests fail.
//
// - the caller-side gate: a denied run, observe, push or pull throws
//   CapabilityDenied (scope caller) and nothing reaches the host, although
//   the host itself would allow it;
// - a step that ignores SIGTERM dies by SIGKILL within its grace + 1 s;
// - a cancelled step that exits 0 is not a success;
// - a step's environment is the stated base plus step.env, nothing else;
// - the 1 MiB split of a long line never cuts a UTF-16 surrogate pair.

import { assert, assertEquals, assertFalse, assertRejects } from "@deps/assert";
import {
  CapabilityDenied,
  CapabilitySet,
  CollectingSink,
  type Executor,
  LocalExec,
  type LogSink,
  SshExec,
  type SshExecOptions,
  Step,
} from "../mod.ts";
import { MAX_LINE_LENGTH } from "../executor/_lines.ts";
import { STEP_MARKER } from "../executor/_spawn.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { type AgentProcess, loopbackConfig, startAgentProcess } from "./_agent_process.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";
import { HAS_PROC, isAlive, waitFor } from "./_procs.ts";
import { type Sshd, sshdMissing, startSshd } from "./_sshd.ts";
import { timeLimit } from "./_time_limit.ts";

const noProc = missing([HAS_PROC, "/proc (Linux) to watch the step's processes"]);
const noSsh = sshdMissing();
const noRsync = missing([RSYNC !== null, "rsync"]);
const sshd: Sshd | null = noSsh || noProc ? null : await startSshd();

/** A scratch tree: `local/` for this side's files, `host/` for the host's (the ssh account owns it). */
const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "ops-exec-contract-" }));
await Deno.chmod(base, 0o755);
const HOST_DIR = `${base}/host`;
const LOCAL_DIR = `${base}/local`;
await Deno.mkdir(HOST_DIR, { mode: 0o755 });
await Deno.mkdir(LOCAL_DIR);
await Deno.writeTextFile(`${LOCAL_DIR}/payload.txt`, "from this side\n");
await Deno.mkdir(`${HOST_DIR}/source`, { mode: 0o755 });
await Deno.writeTextFile(`${HOST_DIR}/source/remote.txt`, "from the host\n");
if (sshd && Deno.uid() === 0) {
  const chown = await new Deno.Command("chown", { args: ["-R", `${sshd.user}:`, HOST_DIR] })
    .output();
  assert(chown.success, "chown of the host's scratch dir failed");
}
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(base, { recursive: true });
  } catch {
    // Removed by the teardown test already.
  }
});

/** One host reached through one transport, for the length of a test. */
interface Reach extends AsyncDisposable {
  /** An executor scoped to `caps`, to this host. */
  exec(caps: CapabilitySet): Executor;
  /** How many requests or sessions have reached the host so far (`null`: nothing to count). */
  reached(): Promise<number | null>;
  /** Stops a running step from the outside: the caller's cancel, or the agent shutting down. */
  cancel?(controller: AbortController): void;
  /** The host runs steps with the run marker in their environment (the local spawn core). */
  marked: boolean;
}

interface Transport {
  name: string;
  /** Why it cannot run here, or `undefined`. */
  skip: string | undefined;
  open(): Promise<Reach>;
}

/** Everything a test here needs on the host; its own ceiling is never the limit. */
const HOST_ALLOWS = ["test.*", "observe", `sync.push:${HOST_DIR}`, `sync.pull:${HOST_DIR}`];

/** The executors a test made, closed when it ends. */
function tracked(): { add(exec: Executor): Executor } & AsyncDisposable {
  const made: Executor[] = [];
  return {
    add: (exec) => {
      made.push(exec);
      return exec;
    },
    [Symbol.asyncDispose]: async () => {
      for (const exec of made) await exec.close();
    },
  };
}

const local: Transport = {
  name: "LocalExec",
  skip: noProc,
  open: () => {
    const all = tracked();
    return Promise.resolve({
      exec: (caps) => all.add(new LocalExec(caps, { host: "here" })),
      reached: () => Promise.resolve(null),
      marked: true,
      [Symbol.asyncDispose]: () => all[Symbol.asyncDispose](),
    });
  },
};

const agent: Transport = {
  name: "AgentRpc",
  skip: noProc,
  open: async () => {
    const all = tracked();
    const process: AgentProcess = await startAgentProcess(loopbackConfig({ ceiling: HOST_ALLOWS }));
    return {
      exec: (caps) => all.add(new AgentRpc({ url: process.url }, caps)),
      reached: () => Promise.resolve(process.auditLines().length),
      // The agent stopping its steps (shutting down) sends their exit to the client, so the
      // client's RunOutput says how the step ended; a client that cancels learns nothing more.
      cancel: () => void process.stop("SIGTERM"),
      marked: true,
      [Symbol.asyncDispose]: async () => {
        await all[Symbol.asyncDispose]();
        await process[Symbol.asyncDispose]();
      },
    };
  },
};

function ssh(mode: string, opts: Partial<SshExecOptions>): Transport {
  return {
    name: `SshExec (${mode})`,
    skip: noSsh ?? noProc,
    open: () => {
      const all = tracked();
      return Promise.resolve({
        exec: (caps) =>
          all.add(
            new SshExec({
              host: sshd!.host,
              port: sshd!.port,
              user: sshd!.user,
              identityFile: sshd!.clientKey,
              knownHostsFile: sshd!.knownHosts,
              ...opts,
            }, caps),
          ),
        reached: async () => (await sshd!.authenticatedConnections()) + (await sshd!.sessions()),
        marked: false,
        [Symbol.asyncDispose]: () => all[Symbol.asyncDispose](),
      });
    },
  };
}

const TRANSPORTS: Transport[] = [
  local,
  agent,
  ssh("session", {}),
  ssh("per-step perl", { sessionPerStep: true }),
  ssh("sh", { remoteSupervisor: "sh" }),
];

function contractTest(
  what: string,
  fn: (transport: Transport, reach: Reach) => Promise<void>,
  opts: { needs?: string | undefined; limitMs?: number } = {},
): void {
  for (const transport of TRANSPORTS) {
    const skip = transport.skip ?? opts.needs;
    Deno.test({
      name: `${transport.name}: ${what}`,
      ignore: skip !== undefined,
      fn: timeLimit(opts.limitMs ?? 30_000, async () => {
        await using reach = await transport.open();
        await fn(transport, reach);
      }),
    });
  }
}

let counter = 0;
/** A name no other test (nor another run on this machine) uses. */
function unique(prefix: string): string {
  return `${prefix}-${Date.now()}-${++counter}-${crypto.randomUUID().slice(0, 8)}`;
}

// ---- the caller-side gate ---------------------------------------------------------

contractTest(
  "a denied run, observe, push or pull throws CapabilityDenied (caller) and nothing reaches the host",
  async (transport, reach) => {
    const name = unique("gate");
    const marker = `${HOST_DIR}/${name}-ran`;
    const pushed = `${HOST_DIR}/${name}-pushed`;
    const pulled = `${LOCAL_DIR}/${name}-pulled`;
    const narrow = reach.exec(CapabilitySet.of("test.allowed"));
    const before = await reach.reached();
    const calls: [string, () => Promise<unknown>][] = [
      [
        "test.denied",
        () =>
          narrow.runStreaming(Step.shell("test.denied", `touch ${marker}`), new CollectingSink()),
      ],
      ["observe", () => narrow.observe()],
      ["sync.push", () => narrow.push(`${LOCAL_DIR}/payload.txt`, pushed)],
      ["sync.pull", () => narrow.pull(`${HOST_DIR}/source/`, pulled)],
    ];
    for (const [action, call] of calls) {
      const error = await assertRejects(call, CapabilityDenied).catch((failure) => {
        throw new Error(`${transport.name}: ${action} was not refused by the caller: ${failure}`);
      });
      assertEquals([error.scope, error.action], ["caller", action], transport.name);
    }
    assertEquals(await reach.reached(), before, "nothing may reach the host");
    assertFalse(await exists(marker), "the denied step ran");
    assertFalse(await exists(pushed), "the denied push copied");
    assertFalse(await exists(pulled), "the denied pull copied");

    // The host itself allows all four: with the grant, each reaches it and works,
    // so only the caller-side gate stopped them above.
    if (noRsync) return;
    const wide = reach.exec(CapabilitySet.of(...HOST_ALLOWS));
    const ran = await wide.runStreaming(
      Step.shell("test.denied", `touch ${marker}`),
      new CollectingSink(),
    );
    assertEquals(ran.exitCode, 0);
    assert(await exists(marker), "the granted step runs");
    assert((await wide.observe())?.hostname);
    await wide.push(`${LOCAL_DIR}/payload.txt`, pushed);
    assert(await exists(pushed), "the granted push copies");
    await wide.pull(`${HOST_DIR}/source/`, pulled);
    assertEquals(await Deno.readTextFile(`${pulled}/remote.txt`), "from the host\n");
  },
);

// ---- TERM, grace, KILL ------------------------------------------------------------

const GRACE_MS = 1000;

contractTest(
  "a step that ignores SIGTERM dies by SIGKILL within its grace + 1 s (even one the marker sweep cannot find)",
  async (transport, reach) => {
    const exec = reach.exec(CapabilitySet.of("test.*"));
    // The step's main process ignores TERM, and drops the run's marker from its
    // environment: on Linux the local spawn core SIGKILLs every marked process
    // after a stop, which would hide a missing group KILL (that is how TERM-only
    // once passed every test). Unmarked, only the KILL after the grace can end it.
    const token = `300.${Math.floor(Math.random() * 1e9)}`;
    const script =
      `exec env -u ${STEP_MARKER} /bin/sh -c 'trap "" TERM; echo $$; exec sleep ${token}'`;
    let pid = 0;
    let seen!: () => void;
    const started = new Promise<void>((resolve) => (seen = resolve));
    const sink: LogSink = {
      write(line) {
        if (line.stream === "stdout" && pid === 0) {
          pid = Number(line.text);
          seen();
        }
      },
    };
    const controller = new AbortController();
    const running = exec.runStreaming(
      Step.shell("test.stubborn", script, { killGraceMs: GRACE_MS }),
      sink,
      { signal: controller.signal },
    );
    running.catch(() => {});
    await Promise.race([started, running]);
    assert(pid > 0 && isAlive(pid), `the step did not start: pid ${pid}`);
    const environ = Deno.readTextFileSync(`/proc/${pid}/environ`);
    assertFalse(environ.includes(STEP_MARKER), "the step still carries the marker");
    const stopped = performance.now();
    (reach.cancel ?? ((c) => c.abort()))(controller);
    const died = await waitFor(() => !isAlive(pid), GRACE_MS + 1000);
    const after = performance.now() - stopped;
    if (!died) {
      Deno.kill(pid, "SIGKILL"); // ours: the step's own sleep, by the pid it printed
      await running.catch(() => {});
      throw new Error(
        `${transport.name}: the step ignored SIGTERM and was still alive ${Math.round(after)} ms ` +
          `after it was stopped: no SIGKILL came after its ${GRACE_MS} ms grace`,
      );
    }
    assert(
      after >= GRACE_MS - 100,
      `it died ${Math.round(after)} ms after the stop, before its grace: TERM was not ignored`,
    );
    const out = await running;
    assert(out.cancelled, JSON.stringify(out));
    assertFalse(out.success);
    assertEquals(out.signal, "SIGKILL");
  },
);

// ---- a cancelled step is never a success ------------------------------------------

contractTest("a cancelled step that exits 0 is cancelled, not a success", async (_t, reach) => {
  const exec = reach.exec(CapabilitySet.of("test.*"));
  let ready!: () => void;
  const up = new Promise<void>((resolve) => (ready = resolve));
  const controller = new AbortController();
  const running = exec.runStreaming(
    Step.shell("test.polite", "trap 'exit 0' TERM; echo ready; sleep 300 & wait", {
      killGraceMs: 5000,
    }),
    { write: (line) => void (line.text === "ready" && ready()) },
    { signal: controller.signal },
  );
  running.catch(() => {});
  await Promise.race([up, running]);
  (reach.cancel ?? ((c) => c.abort()))(controller);
  const out = await running;
  assertEquals([out.cancelled, out.timedOut], [true, false], JSON.stringify(out));
  assertEquals(out.exitCode, 0, "the step exits 0 on TERM");
  assertFalse(out.success, `a cancelled step is not a success: ${JSON.stringify(out)}`);
});

// ---- the environment ----------------------------------------------------------------

contractTest(
  "a step sees the stated base environment plus step.env, nothing else",
  async (t, reach) => {
    Deno.env.set("OPS_EXEC_CALLER_ONLY", "leaked");
    try {
      const exec = reach.exec(CapabilitySet.of("test.*"));
      const sink = new CollectingSink();
      const out = await exec.runStreaming(
        Step.exec("test.env", ["env"], { env: { STEP_VAR: "a b=c" } }),
        sink,
      );
      assertEquals(out.exitCode, 0, sink.text("stderr"));
      const entries = sink.text("stdout").split("\n").map((line) =>
        line.slice(0, line.indexOf("="))
      );
      const allowed = [
        ...["PATH", "HOME", "USER", "LOGNAME", "SHELL", "TMPDIR", "LANG", "STEP_VAR"],
        // Set by a shell on its way to the program, never taken from anywhere.
        ...["PWD", "SHLVL", "_"],
        ...(reach.marked ? [STEP_MARKER] : []),
      ];
      assertEquals(
        entries.filter((name) => !allowed.includes(name)),
        [],
        `${t.name}:\n${sink.text("stdout")}`,
      );
      assert(sink.lines.some((line) => line.text === "STEP_VAR=a b=c"));
      assert(sink.lines.some((line) => line.text.startsWith("PATH=")));
    } finally {
      Deno.env.delete("OPS_EXEC_CALLER_ONLY");
    }
  },
);

// ---- the 1 MiB split ----------------------------------------------------------------

contractTest("a line split at 1 MiB never cuts a surrogate pair", async (_t, reach) => {
  const exec = reach.exec(CapabilitySet.of("test.*"));
  const sink = new CollectingSink();
  // MAX - 1 ASCII characters, then U+1F600 (two UTF-16 units: a cut at MAX would split it).
  const out = await exec.runStreaming(
    Step.shell(
      "test.long",
      `head -c ${MAX_LINE_LENGTH - 1} /dev/zero | tr '\\0' x; printf '\\360\\237\\230\\200 end\\n'`,
    ),
    sink,
  );
  assertEquals(out.exitCode, 0, sink.text("stderr"));
  const texts = sink.lines.filter((line) => line.stream === "stdout").map((line) => line.text);
  for (const text of texts) {
    assert(text.isWellFormed(), `a piece of ${text.length} units holds half a surrogate pair`);
    assert(text.length <= MAX_LINE_LENGTH);
  }
  assertEquals(texts.join(""), `${"x".repeat(MAX_LINE_LENGTH - 1)}\u{1F600} end`);
  assertEquals(texts.length, 2);
});

Deno.test({
  name: "teardown: the sshd and the scratch tree",
  ignore: sshd === null,
  fn: async () => {
    await sshd?.stop();
    await Deno.remove(base, { recursive: true }).catch(() => {});
  },
});
