// The persistent session's parts that need no sshd: the framing, and the
// real perl supervisor run by a real local /bin/sh in place of the remote
// login shell (tests/ssh_test.ts runs it through a real sshd).

import fc from "@deps/fast-check";
import {
  assert,
  assertEquals,
  assertFalse,
  assertGreater,
  assertLess,
  assertRejects,
} from "@deps/assert";
import { CollectingSink } from "../executor/sinks.ts";
import type { LogSink } from "../executor/types.ts";
import { findProgram } from "../tests/_prereq.ts";
import { ignoredOrBlocked, pidsWithCommandLine, SIGNAL_STATE, waitFor } from "../tests/_procs.ts";
import { timeLimit } from "../tests/_time_limit.ts";
import {
  encodeAck,
  encodeKill,
  encodeRun,
  FrameReader,
  type SessionEnd,
  type SessionRun,
  SshSession,
} from "./_ssh_session.ts";
import { sessionCommand } from "./_ssh_remote.ts";

const PERL = findProgram("/usr/bin/perl", "/usr/local/bin/perl", "/opt/homebrew/bin/perl");
const HAS_PROC = (() => {
  try {
    return Deno.statSync("/proc/self/stat").isFile;
  } catch {
    return false;
  }
})();

class Lost extends Error {
  constructor(readonly end: SessionEnd) {
    super(`session lost: ${JSON.stringify(end)}`);
  }
}

/** A session whose "ssh" is a local shell running the supervisor command, as sshd would. */
function localSession(opts: { window?: number; idleMs?: number } = {}): SshSession {
  return new SshSession({
    argv: ["/bin/sh", "-c", sessionCommand()],
    env: { PATH: "/usr/bin:/bin", HOME: "/tmp", USER: "nobody", LANG: "C.UTF-8" },
    lost: (end) => Promise.resolve(new Lost(end)),
    ...opts,
  });
}

function step(argv: string[], extra: Partial<SessionRun> = {}): SessionRun {
  return { argv, env: {}, killGraceMs: 500, ...extra };
}

async function run(session: SshSession, argv: string[], extra: Partial<SessionRun> = {}) {
  const sink = new CollectingSink();
  const out = await session.run(step(argv, extra), sink);
  return { out, stdout: sink.text("stdout"), stderr: sink.text("stderr") };
}

function perlTest(name: string, fn: (t: Deno.TestContext) => Promise<void>) {
  Deno.test({ name, ignore: !PERL || !HAS_PROC, fn });
}

// ---- framing ---------------------------------------------------------------------

const HELLO = [0x48, 0, 0, 0, 0, 0, 0, 0, 5, ...new TextEncoder().encode("OPSX2")];

function frame(type: string, id: number, payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(9 + payload.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setUint32(1, id);
  new DataView(out.buffer).setUint32(5, payload.length);
  out.set(payload, 9);
  return out;
}

Deno.test("FrameReader: frames cut anywhere come out whole; bytes before the hello are skipped", () => {
  const arbFrame = fc.oneof(
    fc.record({
      type: fc.constantFrom("O", "E"),
      id: fc.integer({ min: 1, max: 3 }),
      payload: fc.uint8Array({ maxLength: 200 }),
    }),
    fc.record({
      type: fc.constantFrom("X", "k"),
      id: fc.integer({ min: 1, max: 3 }),
      payload: fc.constantFrom("x:0", "s:SIGTERM", "").map((s) => new TextEncoder().encode(s)),
    }),
  );
  fc.assert(
    fc.property(
      fc.string({ maxLength: 40 }).filter((s) => !s.includes("H")),
      fc.array(arbFrame, { maxLength: 12 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (junk, frames, points) => {
        const bytes = [
          ...new TextEncoder().encode(junk),
          ...HELLO,
          ...frames.flatMap((f) => [...frame(f.type, f.id, f.payload)]),
        ];
        const all = new Uint8Array(bytes);
        const data = new Map<string, number[]>();
        const controls: string[] = [];
        const reader = new FrameReader({
          data(stream, id, piece) {
            const key = `${stream}:${id}`;
            data.set(key, [...(data.get(key) ?? []), ...piece]);
          },
          control(type, id, payload) {
            controls.push(`${type}:${id}:${new TextDecoder().decode(payload)}`);
          },
        });
        const cuts = [...new Set(points.map((p) => p % (all.length + 1)))].sort((a, b) => a - b);
        let from = 0;
        for (const cut of [...cuts, all.length]) {
          if (cut > from) reader.push(all.slice(from, cut));
          from = Math.max(from, cut);
        }
        const expected = new Map<string, number[]>();
        for (const f of frames.filter((f) => f.type === "O" || f.type === "E")) {
          const key = `${f.type === "O" ? "stdout" : "stderr"}:${f.id}`;
          expected.set(key, [...(expected.get(key) ?? []), ...f.payload]);
        }
        for (const [key, value] of [...expected]) if (value.length === 0) expected.delete(key);
        assertEquals(data, expected);
        assertEquals(controls, [
          "H:0:OPSX2",
          ...frames.filter((f) => f.type === "X" || f.type === "k").map((f) =>
            `${f.type}:${f.id}:${new TextDecoder().decode(f.payload)}`
          ),
        ]);
        assertEquals(reader.junk, junk);
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("FrameReader: a frame no supervisor sends is an error, not data", () => {
  const reader = new FrameReader({ data() {}, control() {} });
  reader.push(new Uint8Array(HELLO));
  let threw = false;
  try {
    reader.push(frame("#", 1, new Uint8Array(1)));
  } catch {
    threw = true;
  }
  assert(threw);
});

Deno.test("encodeRun, encodeKill, encodeAck: the layout the supervisor reads", () => {
  const run = encodeRun(7, {
    argv: ["printf", "a\nb", ""],
    env: { X: "1=2" },
    cwd: "/srv/a b",
    stdin: new Uint8Array([0, 1, 2]),
    killGraceMs: 2500,
  }, 65536);
  const view = new DataView(run.buffer);
  assertEquals([String.fromCharCode(run[0]), view.getUint32(1), view.getUint32(5)], [
    "R",
    7,
    run.length - 9,
  ]);
  assertEquals([view.getUint32(9), view.getUint32(13), view.getUint32(17), view.getUint32(21)], [
    2500,
    1,
    3,
    65536,
  ]);
  const strings = new TextDecoder().decode(run.subarray(25, run.length - 3));
  assertEquals(strings.split("\0"), ["/srv/a b", "X=1=2", "printf", "a\nb", ""]);
  assertEquals([...run.subarray(run.length - 3)], [0, 1, 2]);
  assertEquals([...encodeKill(9)], [0x4b, 0, 0, 0, 9, 0, 0, 0, 0]);
  assertEquals([...encodeAck(1, 256, 2)], [0x41, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 2]);
  let threw = false;
  try {
    encodeRun(1, { argv: ["a\0b"], env: {}, killGraceMs: 0 }, 1);
  } catch {
    threw = true;
  }
  assert(threw, "a NUL byte cannot be framed");
});

perlTest("the session supervisor compiles under strict", async () => {
  const command = sessionCommand();
  const code = command.slice(command.indexOf("'"));
  const check = await new Deno.Command("/bin/sh", {
    args: ["-c", `perl -Mstrict -c -e ${code}`],
  }).output();
  assert(
    new TextDecoder().decode(check.stderr).includes("syntax OK"),
    new TextDecoder().decode(check.stderr),
  );
});

// ---- the supervisor, run locally ---------------------------------------------------

perlTest("a local session: argv, env, cwd, stdin, exact exit and signal statuses", async () => {
  const session = localSession();
  try {
    const echo = await run(session, ["/bin/sh", "-c", 'printf "%s|" "$@" "$X" "$PWD"; cat', "sh"], {
      env: { X: "it's $HOME" },
      cwd: "/tmp",
      stdin: new TextEncoder().encode("in\0put"),
    });
    assertEquals(echo.stdout, "it's $HOME|/tmp|in\0put");
    assertEquals(echo.out.status, { exitCode: 0, signal: null });
    const env = await run(session, ["env"], { env: { MODE: "x" } });
    assertEquals(env.stdout.split("\n").map((l) => l.slice(0, l.indexOf("="))).sort(), [
      "HOME",
      "LANG",
      "MODE",
      "PATH",
      "USER",
    ]);
    const cases: [string, unknown][] = [
      ["exit 42", { exitCode: 42, signal: null }],
      ["exit 143", { exitCode: 143, signal: null }],
      ["kill -TERM $$", { exitCode: null, signal: "SIGTERM" }],
      ["kill -KILL $$", { exitCode: null, signal: "SIGKILL" }],
    ];
    for (const [script, status] of cases) {
      assertEquals((await run(session, ["/bin/sh", "-c", script])).out.status, status, script);
    }
    const missing = await run(session, ["no-such-program-ops-exec"]);
    assertEquals([missing.out.status?.exitCode, missing.stderr], [
      127,
      "ops-exec: no-such-program-ops-exec: command not found",
    ]);
    const cwd = await run(session, ["true"], { cwd: "/no/such/dir" });
    assertEquals([cwd.out.status?.exitCode, cwd.stderr], [
      127,
      "ops-exec: cwd /no/such/dir: no such directory",
    ]);
    const tail = await run(session, ["/bin/sh", "-c", "echo a; printf 'b' >&2; printf 'c'"]);
    assertEquals([tail.stdout, tail.stderr, tail.out.lines], ["a\nc", "b", {
      stdout: 2,
      stderr: 1,
    }]);
  } finally {
    await session.close();
  }
});

perlTest("a local session runs steps at once (one waits for a file the other makes)", async () => {
  const session = localSession();
  const dir = await Deno.makeTempDir();
  try {
    const waiter = run(
      session,
      ["/bin/sh", "-c", `while [ ! -e ${dir}/go ]; do sleep 0.02; done`],
      {
        timeoutMs: 10_000,
      },
    );
    const maker = await run(session, ["touch", `${dir}/go`]);
    assertEquals(maker.out.status?.exitCode, 0);
    const waited = await waiter;
    assertFalse(waited.out.timedOut, "the second step did not run while the first waited");
    assertEquals(waited.out.status?.exitCode, 0);
  } finally {
    await session.close();
    await Deno.remove(dir, { recursive: true });
  }
});

perlTest(
  "per-step backpressure: a stalled sink holds its own step at the window; another step finishes",
  timeLimit(30_000, async () => {
    const window = 64 * 1024;
    const session = localSession({ window });
    const dir = await Deno.makeTempDir();
    const counter = `${dir}/count`;
    try {
      // 20 000 lines of 100 bytes, recording after each how many were written.
      const producer =
        `i=0; while [ $i -lt 20000 ]; do printf '%099d\\n' $i; i=$((i+1)); echo $i >> ${counter}; done`;
      let release!: () => void;
      const stall = new Promise<void>((resolve) => (release = resolve));
      let received = 0;
      const stalled: LogSink = {
        write() {
          if (++received === 1) return stall;
        },
      };
      const slow = session.run(step(["/bin/sh", "-c", producer]), stalled);
      // Appended, not rewritten: dash truncates a `>` target before it flushes the
      // printf still in its buffer into the full pipe, which would read as 0.
      const readCount = async () =>
        (await Deno.readTextFile(counter).catch(() => "")).split("\n").filter(Boolean).length;
      assert(await waitFor(() => received === 1, 5000), "the first line never came");
      // Meanwhile another step on the same session prints 4 MiB and ends.
      let other = 0;
      const fast = await session.run(step(["head", "-c", String(4 << 20), "/dev/zero"]), {
        write(line) {
          other += line.text.length;
        },
      });
      assertEquals([fast.status?.exitCode, other], [0, 4 << 20]);
      let stalledAt = await readCount();
      for (let i = 0; i < 20; i++) {
        await new Promise((r) => setTimeout(r, 250));
        const now = await readCount();
        if (now === stalledAt) break;
        stalledAt = now;
      }
      await new Promise((r) => setTimeout(r, 500));
      assertEquals(
        await readCount(),
        stalledAt,
        "the producer advanced while its sink was stalled",
      );
      // The window filled, and no further than the window, the pipe (64 KiB) and one chunk
      // in the pump: about 2 000 lines of 100 bytes.
      assertGreater(stalledAt, window / 100 - 10, `wrote ${stalledAt} lines`);
      assertLess(stalledAt, (window + 2 * 65536) / 100 + 100, `wrote ${stalledAt} lines`);
      assertEquals(received, 1);
      release();
      const out = await slow;
      assertEquals([out.status?.exitCode, received], [0, 20000]);
    } finally {
      await session.close();
      await Deno.remove(dir, { recursive: true });
    }
  }),
);

perlTest(
  "memory stays bounded while a step prints 1 GiB into a slow-ish sink",
  timeLimit(60_000, async () => {
    const session = localSession();
    try {
      let lines = 0;
      const sink: LogSink = {
        write() {
          lines++;
          if (lines % 100_000 === 0) return new Promise((r) => setTimeout(r, 1));
          if (lines % 10 === 0) return Promise.resolve();
        },
      };
      const before = Deno.memoryUsage().rss;
      let peak = before;
      const probe = setInterval(() => (peak = Math.max(peak, Deno.memoryUsage().rss)), 50);
      const out = await session.run(
        step(["/bin/sh", "-c", `yes ${"x".repeat(99)} | head -c 1073741824`]),
        sink,
      );
      clearInterval(probe);
      assertEquals(out.status?.exitCode, 0);
      assertEquals(lines, Math.ceil(2 ** 30 / 100));
      assertLess(peak - before, 200 * 1024 * 1024, `RSS grew by ${(peak - before) >> 20} MiB`);
    } finally {
      await session.close();
    }
  }),
);

perlTest(
  "a timeout and a cancel kill the step's whole group; a sink that throws does too",
  async () => {
    const session = localSession();
    try {
      const token = `300.${Math.floor(Math.random() * 1e9)}`;
      const timed = await run(
        session,
        ["/bin/sh", "-c", `trap '' TERM; sleep ${token} & sleep ${token}; wait`],
        { timeoutMs: 300, killGraceMs: 300 },
      );
      assertEquals([timed.out.timedOut, timed.out.status?.signal], [true, "SIGKILL"]);
      assert(await waitFor(() => pidsWithCommandLine(token).length === 0, 2000));

      const controller = new AbortController();
      const running = session.run(
        step(["/bin/sh", "-c", `sleep ${token} & sleep ${token}; wait`]),
        new CollectingSink(),
        controller.signal,
      );
      assert(await waitFor(() => pidsWithCommandLine(token).length >= 2, 5000));
      controller.abort();
      const cancelled = await running;
      assertEquals([cancelled.cancelled, cancelled.status?.signal], [true, "SIGTERM"]);
      assert(await waitFor(() => pidsWithCommandLine(token).length === 0, 2000));

      await assertRejects(
        () =>
          session.run(step(["/bin/sh", "-c", `sleep ${token} & echo go; sleep ${token}`]), {
            write(line) {
              if (line.text === "go") throw new Error("sink broke");
            },
          }),
        Error,
        "sink broke",
      );
      assert(await waitFor(() => pidsWithCommandLine(token).length === 0, 2000));
      // The session is still good for the next step.
      assertEquals((await run(session, ["echo", "after"])).stdout, "after");
    } finally {
      await session.close();
    }
  },
);

perlTest(
  "closing the session (stdin EOF) kills running steps' groups; they fail with the session's error",
  async () => {
    const session = localSession();
    const token = `300.${Math.floor(Math.random() * 1e9)}`;
    const running = session.run(
      step(["/bin/sh", "-c", `trap '' TERM; sleep ${token} & sleep ${token}; wait`], {
        killGraceMs: 300,
      }),
      new CollectingSink(),
    );
    running.catch(() => {});
    assert(await waitFor(() => pidsWithCommandLine(token).length >= 2, 5000));
    await session.close();
    const error = await assertRejects(() => running, Lost);
    assert(error.end.closed);
    assertFalse(session.usable);
    assert(await waitFor(() => pidsWithCommandLine(token).length === 0, 2000));
  },
);

/**
 * The pid of the session's supervisor, learnt from a step (the supervisor forks every step, so
 * it is the step's parent). Never a search of the machine's processes by command line: another
 * session on this machine (a concurrent test run, another checkout, tests/ssh_test.ts) looks the
 * same, and freezing that one instead was what made these tests flaky.
 */
async function supervisorPid(session: SshSession): Promise<number> {
  const { stdout } = await run(session, ["/bin/sh", "-c", 'echo "$PPID"']);
  const pid = Number(stdout);
  const cmdline = Deno.readTextFileSync(`/proc/${pid}/cmdline`);
  assert(cmdline.startsWith("perl") && cmdline.includes("OPSX2"), `pid ${pid}: ${cmdline}`);
  return pid;
}

/** The state letter of `pid` in /proc (`T` once stopped), or `null` when it is gone. */
function procState(pid: number): string | null {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
  } catch {
    return null;
  }
}

/** Kills the frozen supervisor if the session did not (a failed test), after checking it is ours. */
function killFrozen(pid: number | undefined): void {
  if (pid === undefined || procState(pid) === null) return;
  try {
    if (Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes("OPSX2")) Deno.kill(pid, "SIGKILL");
  } catch {
    // Gone meanwhile.
  }
}

perlTest(
  "a supervisor that stops answering: the kill request goes unanswered, the session is given up, the step reports timed out",
  timeLimit(15_000, async (_t, limit) => {
    const session = localSession();
    let frozen: number | undefined;
    limit.addEventListener("abort", () => killFrozen(frozen));
    try {
      frozen = await supervisorPid(session);
      // Frozen before the step is sent: the timeout cannot win a race against the freeze (it
      // used to be 200 ms against a /proc scan), so neither the step nor its kill request is
      // ever read, whatever the machine's load.
      Deno.kill(frozen, "SIGSTOP");
      const pid = frozen;
      assert(await waitFor(() => procState(pid) === "T", 2000), "the supervisor did not stop");
      const { out } = await run(session, ["/bin/sh", "-c", "sleep 300"], {
        timeoutMs: 200,
        killGraceMs: 100,
      });
      assertEquals([out.timedOut, out.status], [true, null]);
      assertFalse(session.usable);
    } finally {
      await session.close();
      killFrozen(frozen);
    }
  }),
);

perlTest(
  "a supervisor that stops answering while its step runs: the cancel goes unanswered, the session is given up, the step reports cancelled",
  timeLimit(15_000, async (_t, limit) => {
    const session = localSession();
    const token = `300.${Math.floor(Math.random() * 1e9)}`;
    let frozen: number | undefined;
    limit.addEventListener("abort", () => killFrozen(frozen));
    try {
      frozen = await supervisorPid(session);
      const pid = frozen;
      const controller = new AbortController();
      // The step freezes its own supervisor (its parent), then runs on: the host froze mid-step.
      const running = session.run(
        step(["/bin/sh", "-c", `kill -STOP "$PPID"; exec sleep ${token}`], { killGraceMs: 100 }),
        new CollectingSink(),
        controller.signal,
      );
      assert(await waitFor(() => procState(pid) === "T", 5000), "the supervisor did not stop");
      // Only now is the kill request sent: nothing can answer it.
      controller.abort();
      const out = await running;
      assertEquals([out.cancelled, out.timedOut, out.status], [true, false, null]);
      assertFalse(session.usable);
    } finally {
      await session.close();
      killFrozen(frozen);
      // The frozen supervisor was killed with its step still running: clean up here.
      for (const pid of pidsWithCommandLine(token)) Deno.kill(pid, "SIGKILL");
    }
  }),
);

perlTest("an idle session closes itself; it keeps no process behind", async () => {
  const session = localSession({ idleMs: 200 });
  assertEquals((await run(session, ["echo", "one"])).stdout, "one");
  assert(await waitFor(() => !session.usable, 3000), "the idle session stayed open");
  await session.done;
});

Deno.test("a host that sends beyond a step's window ends the session: a protocol error, memory stays bounded", async () => {
  // A broken "supervisor": it says hello, then pushes 100 bytes of step 1's stdout
  // against a window of 16.
  const octal = (bytes: number[]) =>
    bytes.map((b) => `\\${b.toString(8).padStart(3, "0")}`).join("");
  const flood = [...frame("O", 1, new Uint8Array(100).fill(0x61))];
  const session = new SshSession({
    argv: ["/bin/sh", "-c", `printf '${octal(HELLO)}${octal(flood)}'; exec cat >/dev/null`],
    env: { PATH: "/usr/bin:/bin" },
    window: 16,
    lost: (end) => Promise.resolve(new Lost(end)),
  });
  const sink = new CollectingSink();
  const error = await assertRejects(() => session.run(step(["true"]), sink), Lost);
  assert(error.end.protocolError, JSON.stringify(error.end));
  assertEquals(sink.lines, []);
  await session.close();
});

perlTest(
  "a step starts with default dispositions even when the session inherited SIGINT and SIGQUIT ignored",
  async () => {
    // An asynchronous list of dash: the supervisor inherits SIGINT and SIGQUIT ignored.
    const session = new SshSession({
      argv: ["/usr/bin/dash", "-c", `exec 3<&0; { ${sessionCommand()}; } <&3 & wait`],
      env: { PATH: "/usr/bin:/bin", HOME: "/tmp", USER: "nobody", LANG: "C.UTF-8" },
      lost: (end) => Promise.resolve(new Lost(end)),
    });
    try {
      const { stdout } = await run(session, [...SIGNAL_STATE]);
      assertEquals(ignoredOrBlocked(stdout), { Ign: [], Blk: [] });
      const trapped = await run(session, [
        "/bin/sh",
        "-c",
        "trap 'echo caught; exit 7' INT; kill -INT $$; sleep 5",
      ]);
      assertEquals([trapped.out.status, trapped.stdout], [{ exitCode: 7, signal: null }, "caught"]);
    } finally {
      await session.close();
    }
  },
);
