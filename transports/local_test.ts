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
import { CapabilityDenied } from "../executor/errors.ts";
import { CollectingSink } from "../executor/sinks.ts";
import type { LogLine, LogSink } from "../executor/types.ts";
import { Step } from "../step/mod.ts";
import { groupMembers, HAS_PROC, isAlive, waitFor } from "../tests/_procs.ts";
import { exists, missing } from "../tests/_prereq.ts";
import { LocalExec } from "./local.ts";
import { timeLimit } from "../tests/_time_limit.ts";

const caps = CapabilitySet.of("test.*", "observe");
const exec = new LocalExec(caps, { host: "here" });

async function run(step: Step, sink: LogSink = new CollectingSink(), signal?: AbortSignal) {
  const out = await exec.runStreaming(step, sink, { signal });
  return { out, sink };
}

Deno.test("a denied action throws CapabilityDenied (caller) and starts no process", async () => {
  const dir = await Deno.makeTempDir();
  const marker = `${dir}/marker`;
  const narrow = new LocalExec(CapabilitySet.of("bento.build"), { host: "mac-1" });
  const error = await assertRejects(
    () => narrow.runStreaming(Step.shell("bento.sign", `touch ${marker}`), new CollectingSink()),
    CapabilityDenied,
  );
  assertEquals(error.scope, "caller");
  assertEquals(error.action, "bento.sign");
  assertEquals(error.host, "mac-1");
  assertEquals(error.code, "capability_denied");
  await new Promise((r) => setTimeout(r, 200));
  assertFalse(await exists(marker), "the script must not have run");
  // The same script under a granting set does create it: the check above can fail.
  await new LocalExec(CapabilitySet.of("bento.*")).runStreaming(
    Step.shell("bento.sign", `touch ${marker}`),
    new CollectingSink(),
  );
  assert(await exists(marker));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("interleaved stdout/stderr keep their stream and a strictly increasing seq", async () => {
  const script = "for i in 1 2 3 4 5; do echo out$i; sleep 0.02; echo err$i >&2; sleep 0.02; done";
  const { out, sink } = await run(Step.shell("test.lines", script));
  assert(out.success);
  const lines = (sink as CollectingSink).lines;
  assertEquals(
    lines.map((l) => `${l.stream}:${l.text}`),
    [1, 2, 3, 4, 5].flatMap((i) => [`stdout:out${i}`, `stderr:err${i}`]),
  );
  lines.forEach((line, i) => assertEquals(line.seq, i));
  assertEquals(out.lines, { stdout: 5, stderr: 5 });
});

Deno.test("a final line without newline arrives; empty lines are kept", async () => {
  const { sink } = await run(
    Step.shell("test.lines", "printf 'a\\n\\nb\\n'; printf 'tail' >&2; printf 'end'"),
  );
  const lines = (sink as CollectingSink).lines;
  assertEquals(lines.filter((l) => l.stream === "stdout").map((l) => l.text), [
    "a",
    "",
    "b",
    "end",
  ]);
  assertEquals(lines.filter((l) => l.stream === "stderr").map((l) => l.text), ["tail"]);
});

Deno.test("a 5 MiB line arrives split into pieces of at most 1 MiB, nothing lost", async () => {
  const sizes: number[] = [];
  let total = 0;
  const sink: LogSink = {
    write(line) {
      if (line.stream !== "stdout") return;
      sizes.push(line.text.length);
      total += line.text.length;
      if (line.text !== "short") assert(/^x+$/.test(line.text), "pieces hold only the x's");
    },
  };
  await run(
    Step.shell("test.long", "head -c 5242880 /dev/zero | tr '\\0' x; echo; echo short"),
    sink,
  );
  assertEquals(total, 5 * 1024 * 1024 + "short".length);
  assertGreater(sizes.length, 5, "the long line must be split");
  assert(sizes.every((n) => n <= 1024 * 1024), `pieces: ${sizes}`);
  assertEquals(sizes.at(-1), 5);
});

Deno.test("invalid UTF-8 is replaced, never fatal; multibyte characters split across reads survive", async () => {
  const { out, sink } = await run(
    Step.shell(
      "test.utf8",
      "printf 'bad \\377\\376 end\\n'; printf 'caf\\303'; sleep 0.05; printf '\\251\\n'",
    ),
  );
  assert(out.success);
  assertEquals((sink as CollectingSink).lines.map((l) => l.text), ["bad \uFFFD\uFFFD end", "café"]);
});

Deno.test("exit codes are faithful and a non-zero exit is a result", async () => {
  for (const code of [0, 1, 7, 127, 255]) {
    const { out } = await run(Step.shell("test.exit", `exit ${code}`));
    assertEquals(out.exitCode, code);
    assertEquals(out.signal, null);
    assertEquals(out.success, code === 0);
  }
});

Deno.test("death by signal sets signal and no exit code", async () => {
  const { out } = await run(Step.shell("test.signal", "kill -KILL $$"));
  assertEquals(out.exitCode, null);
  assertEquals(out.signal, "SIGKILL");
  assertFalse(out.success);
});

Deno.test("a missing program reports exit 127 on stderr, as a shell would", async () => {
  const { out, sink } = await run(Step.exec("test.exec", ["definitely-not-a-program-xyz"]));
  assertEquals(out.exitCode, 127);
  assertStringIncludes((sink as CollectingSink).text("stderr"), "definitely-not-a-program-xyz");
  const missingCwd = await run(Step.exec("test.exec", ["true"], { cwd: "/no/such/dir" }));
  assertEquals(missingCwd.out.exitCode, 127);
  assertStringIncludes((missingCwd.sink as CollectingSink).text("stderr"), "/no/such/dir");
});

/** A sink that reports the step's pgid (the first line the script prints). */
function pgidSink(): LogSink & { pgid: Promise<number> } {
  let resolve!: (n: number) => void;
  const pgid = new Promise<number>((r) => (resolve = r));
  return {
    pgid,
    write(line: LogLine) {
      if (line.seq === 0) resolve(Number(line.text));
    },
  };
}

const TREE = "echo $$; sleep 300 & sleep 300; wait";

async function treeOf(pgid: number): Promise<number[]> {
  // Both sleeps and the shell: three members once the tree is up.
  await waitFor(() => groupMembers(pgid).length >= 3, 5000);
  const members = groupMembers(pgid);
  assertEquals(members.length, 3, `group ${pgid}: ${members}`);
  return members;
}

Deno.test("timeout kills the whole tree within timeout + grace + 1 s", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  const sink = pgidSink();
  const started = performance.now();
  const running = exec.runStreaming(
    Step.shell("test.tree", TREE, { timeoutMs: 500, killGraceMs: 1000 }),
    sink,
  );
  const members = await treeOf(await sink.pgid);
  const out = await running;
  const elapsed = performance.now() - started;
  assert(out.timedOut);
  assertFalse(out.cancelled);
  assertFalse(out.success);
  assertEquals(out.signal, "SIGTERM");
  assertLess(elapsed, 500 + 1000 + 1000);
  assertEquals(members.filter(isAlive), [], "no process of the tree may survive");
});

Deno.test("timeout escalates to SIGKILL after the grace when TERM is ignored", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  const sink = pgidSink();
  const running = exec.runStreaming(
    Step.shell("test.tree", `trap '' TERM; ${TREE}`, { timeoutMs: 300, killGraceMs: 300 }),
    sink,
  );
  const members = await treeOf(await sink.pgid);
  const out = await running;
  assert(out.timedOut);
  assertEquals(out.signal, "SIGKILL");
  assertEquals(members.filter(isAlive), []);
});

Deno.test("an AbortSignal cancels: cancelled is set and no process of the tree survives", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  const sink = pgidSink();
  const controller = new AbortController();
  const running = exec.runStreaming(Step.shell("test.tree", TREE, { killGraceMs: 1000 }), sink, {
    signal: controller.signal,
  });
  const members = await treeOf(await sink.pgid);
  const started = performance.now();
  controller.abort();
  const out = await running;
  assert(out.cancelled);
  assertFalse(out.timedOut);
  assertFalse(out.success);
  assertLess(performance.now() - started, 1000 + 1000);
  assertEquals(members.filter(isAlive), []);
});

Deno.test("an already-aborted signal starts nothing", async () => {
  const dir = await Deno.makeTempDir();
  const out = await exec.runStreaming(
    Step.shell("test.abort", `touch ${dir}/marker`),
    new CollectingSink(),
    { signal: AbortSignal.abort() },
  );
  assert(out.cancelled);
  assertEquals(out.exitCode, null);
  await new Promise((r) => setTimeout(r, 100));
  assertFalse(await exists(`${dir}/marker`));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("background processes a step leaves behind are swept when it exits", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  const sink = new CollectingSink();
  await run(Step.shell("test.tree", "sleep 300 >/dev/null 2>&1 & echo $!"), sink);
  const pid = Number(sink.text("stdout"));
  assert(await waitFor(() => !isAlive(pid), 2000), `background pid ${pid} survived`);
});

Deno.test("a sink that throws ends the run: the group is killed and the error propagates", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  let pgid = 0;
  const sink: LogSink = {
    write(line) {
      if (line.seq === 0) pgid = Number(line.text);
      if (line.seq === 1) throw new Error("sink is full");
    },
  };
  await assertRejects(
    () =>
      exec.runStreaming(
        Step.shell("test.tree", "echo $$; echo two; sleep 300 & sleep 300; wait", {
          killGraceMs: 500,
        }),
        sink,
      ),
    Error,
    "sink is full",
  );
  assert(pgid > 0);
  assertEquals(groupMembers(pgid), []);
});

Deno.test("a sink whose promise rejects also ends the run", async () => {
  const sink: LogSink = {
    write: () => Promise.reject(new Error("remote log store down")),
  };
  await assertRejects(
    () =>
      exec.runStreaming(
        Step.shell("test.tree", "while :; do echo y; done", { killGraceMs: 200 }),
        sink,
      ),
    Error,
    "remote log store down",
  );
});

Deno.test(
  "backpressure: while the sink's write is pending the producer is blocked on its pipe",
  timeLimit(30_000, async () => {
    const dir = await Deno.makeTempDir();
    const counter = `${dir}/count`;
    // Writes 20 000 lines of 100 bytes, appending a mark after each: the marks
    // count the lines the pipe has taken. (Appending, not overwriting: dash
    // truncates a `>` target before flushing a blocked write, so an overwritten
    // counter would read empty while the producer is stalled.)
    const producer =
      `i=0; while [ $i -lt 20000 ]; do printf '%099d\\n' $i; i=$((i+1)); echo >> ${counter}; done`;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let received = 0;
    const sink: LogSink = {
      write() {
        received++;
        if (received === 1) return gate; // stall on the first line
      },
    };
    const running = exec.runStreaming(Step.shell("test.pressure", producer), sink);
    const readCount = async () => (await Deno.readTextFile(counter).catch(() => "")).length;
    await new Promise((r) => setTimeout(r, 1500));
    const stalledAt = await readCount();
    assert(stalledAt > 100, `the producer must have written something first (${stalledAt})`);
    await new Promise((r) => setTimeout(r, 500));
    const later = await readCount();
    assertEquals(later, stalledAt, "the producer must not advance while the sink is pending");
    // Pipe (64 KiB) plus one read chunk (64 KiB) hold about 1 300 lines of 100 bytes.
    assertLess(stalledAt, 2000, `producer wrote ${stalledAt} lines while stalled`);
    assertEquals(received, 1);
    release();
    const out = await running;
    assert(out.success);
    assertEquals(received, 20000);
    await Deno.remove(dir, { recursive: true });
  }),
);

Deno.test(
  "memory stays flat while a step prints 1 GiB into a slow-ish sink",
  timeLimit(60_000, async () => {
    let lines = 0;
    const sink: LogSink = {
      write() {
        lines++;
        // Asynchronous now and then, and a macrotask pause every 100 000 lines:
        // the pipe, not memory, must carry the pressure.
        if (lines % 100_000 === 0) return new Promise((r) => setTimeout(r, 1));
        if (lines % 10 === 0) return Promise.resolve();
      },
    };
    const before = Deno.memoryUsage().rss;
    let peak = before;
    const probe = setInterval(() => (peak = Math.max(peak, Deno.memoryUsage().rss)), 50);
    const out = await exec.runStreaming(
      Step.shell("test.flood", `yes ${"x".repeat(99)} | head -c 1073741824`),
      sink,
    );
    clearInterval(probe);
    assert(out.success);
    assertEquals(lines, Math.ceil(2 ** 30 / 100));
    assertLess(peak - before, 200 * 1024 * 1024, `RSS grew by ${(peak - before) >> 20} MiB`);
  }),
);

Deno.test("the step sees the base environment plus step.env, not the caller's own variables", async () => {
  Deno.env.set("OPS_EXEC_CALLER_ONLY", "leaked");
  try {
    const sink = new CollectingSink();
    await run(Step.exec("test.env", ["env"], { env: { STEP_VAR: "a b=c", LANG: "C" } }), sink);
    const env = Object.fromEntries(
      sink.text("stdout").split("\n").map((
        l,
      ) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
    );
    assertEquals(env.STEP_VAR, "a b=c");
    assertEquals(env.LANG, "C", "step.env overrides the base");
    assert(env.PATH?.includes("/usr/bin"), "PATH is in the base environment");
    assertEquals(env.HOME, Deno.env.get("HOME"));
    assertEquals(env.OPS_EXEC_CALLER_ONLY, undefined, "the caller's environment must not leak");
    const allowed = new Set([
      "PATH",
      "HOME",
      "USER",
      "LOGNAME",
      "SHELL",
      "TMPDIR",
      "LANG",
      "STEP_VAR",
      "PWD",
      "SHLVL",
      "_",
      "OPS_EXEC_STEP_ID",
    ]);
    assertEquals(Object.keys(env).filter((k) => !allowed.has(k)), []);
  } finally {
    Deno.env.delete("OPS_EXEC_CALLER_ONLY");
  }
});

Deno.test("cwd and stdin reach the step", async () => {
  const dir = await Deno.realPath(await Deno.makeTempDir());
  const sink = new CollectingSink();
  const out = await exec.runStreaming(
    Step.shell("test.io", "pwd; wc -c; cat /dev/stdin", { cwd: dir, stdin: "12345\n" }),
    sink,
  );
  assert(out.success);
  assertEquals(sink.text("stdout").split("\n").map((s) => s.trim()), [dir, "6"]);
  const binary = new CollectingSink();
  await exec.runStreaming(
    Step.exec("test.io", ["od", "-An", "-tx1"], { stdin: new Uint8Array([0, 255, 10]) }),
    binary,
  );
  assertEquals(binary.text("stdout").trim(), "00 ff 0a");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("observe() reports this machine's facts, gated by observe", async () => {
  const observation = await exec.observe();
  assertEquals(observation.host, "here");
  assertEquals(observation.hostname, Deno.hostname());
  assertEquals(observation.os, Deno.build.os);
  assertEquals(observation.kernel, Deno.osRelease());
  assertGreater(observation.memory.totalBytes, 0);
  assertEquals(observation.loadAverage.length, 3);
  assertEquals(observation.disks.map((d) => d.path), ["/"]);
  assertGreater(observation.disks[0].totalBytes, 0);
  const rooted = new LocalExec(CapabilitySet.of("observe", "sync.push:/tmp"));
  assertEquals((await rooted.observe()).disks.map((d) => d.path), ["/tmp"]);
  await assertRejects(() => new LocalExec(CapabilitySet.of("test.*")).observe(), CapabilityDenied);
});

Deno.test("a process that escaped the group with setsid is swept on timeout (by the run's marker)", async () => {
  if (!HAS_PROC && missing([false, "/proc (Linux) to inspect the process tree"])) return;
  const sink = new CollectingSink();
  const out = await exec.runStreaming(
    Step.shell("test.escape", "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $!; sleep 300", {
      timeoutMs: 500,
      killGraceMs: 200,
    }),
    sink,
  );
  assert(out.timedOut);
  const escaped = Number(sink.text("stdout"));
  assert(escaped > 0);
  assert(await waitFor(() => !isAlive(escaped), 2000), `escaped pid ${escaped} survived`);
});

Deno.test("the step's marker is in its environment, unique per run", async () => {
  const a = new CollectingSink();
  const b = new CollectingSink();
  await run(Step.shell("test.marker", 'echo "$OPS_EXEC_STEP_ID"'), a);
  await run(Step.shell("test.marker", 'echo "$OPS_EXEC_STEP_ID"'), b);
  assert(/^[0-9a-f-]{36}$/.test(a.text()), a.text());
  assert(a.text() !== b.text());
});

Deno.test("issue 13: a step's escapee that dropped the marker (env -u) and made its own session is swept on timeout", async () => {
  if (missing([HAS_PROC, "/proc (Linux)"])) return;
  const token = `300.${Math.floor(Math.random() * 1e9)}`;
  await using exec = new LocalExec(CapabilitySet.of("test.*"));
  const out = await exec.runStreaming(
    Step.shell(
      "test.escape",
      `env -u OPS_EXEC_STEP_ID setsid sleep ${token} >/dev/null 2>&1 </dev/null & sleep 300`,
      { timeoutMs: 500, killGraceMs: 200 },
    ),
    new CollectingSink(),
  );
  assert(out.timedOut);
  const alive = () =>
    [...Deno.readDirSync("/proc")].filter((e) => /^\d+$/.test(e.name)).filter((e) => {
      try {
        return Deno.readTextFileSync(`/proc/${e.name}/cmdline`).includes(token) &&
          isAlive(Number(e.name));
      } catch {
        return false;
      }
    }).map((e) => Number(e.name));
  const gone = await waitFor(() => alive().length === 0, 2000);
  for (const pid of alive()) Deno.kill(pid, "SIGKILL");
  assert(gone, "the escapee outlived its step");
});
