// The remote wrapper's parts that need no sshd: quoting, the frame, the
// trailer stripper, and the supervisors themselves run by a real local
// perl / sh with a real frame on a pipe (the sshd tests run them remotely).

import fc from "@deps/fast-check";
import { assert, assertEquals, assertStringIncludes } from "@deps/assert";
import { findProgram } from "../tests/_prereq.ts";
import { HAS_PROC, ignoredOrBlocked, SIGNAL_STATE } from "../tests/_procs.ts";
import { shellsMissing } from "../tests/_shells.ts";
import { shellQuote, stepCommand, type Waiter } from "./_ssh_remote.ts";
import { encodeFrame, KILL_REQUEST, newNonce, StartGate, TrailerStripper } from "./_ssh_wrapper.ts";

const PERL = findProgram("/usr/bin/perl", "/usr/local/bin/perl", "/opt/homebrew/bin/perl");
const SETSID = findProgram("/usr/bin/setsid", "/bin/setsid");

const noNul = fc.string({ unit: "binary" }).filter((s) => !s.includes("\0"));

Deno.test("shellQuote: a real /bin/sh reads any string back as one word", async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(noNul, { maxLength: 6 }), async (words) => {
      const script = `printf '%s\\0' ${words.map(shellQuote).join(" ")}`;
      const out = await new Deno.Command("/bin/sh", { args: ["-c", script] }).output();
      const expected = words.map((w) => `${w}\0`).join("");
      assertEquals(new TextDecoder().decode(out.stdout), words.length ? expected : "\0");
    }),
    { numRuns: 60 },
  );
});

Deno.test("encodeFrame: the header counts the setup's bytes and lines and the stdin", () => {
  const frame = encodeFrame({
    nonce: "ab".repeat(16),
    waiter: "time",
    killGraceMs: 2500,
    argv: ["printf", "a\nb", "ü"],
    env: { X: "1\n2" },
    cwd: "/srv/a b",
    stdin: new Uint8Array([0, 1, 2]),
  });
  const text = new TextDecoder().decode(frame);
  const [header] = text.split("\n", 1);
  const [magic, nonce, waiter, grace, graceSeconds, setupBytes, setupLines, stdinBytes] = header
    .split(" ");
  assertEquals(
    [magic, nonce, waiter, grace, graceSeconds],
    ["OPSX3", "ab".repeat(16), "time", "2500", "2.500"],
  );
  const setup = frame.subarray(header.length + 1, header.length + 1 + Number(setupBytes));
  const setupText = new TextDecoder().decode(setup);
  assertEquals(setupText, `'/srv/a b' '1' 'X=1\n2' 'printf' 'a\nb' 'ü'\n`);
  assertEquals(Number(setupLines), 3);
  assertEquals(Number(stdinBytes), 3);
  assertEquals([...frame.subarray(frame.length - 3)], [0, 1, 2]);
});

/** Runs `chunks` through a stripper and returns what came out and the status. */
async function strip(nonce: string, chunks: Uint8Array[]) {
  const stripper = new TrailerStripper(nonce);
  const out = await new Response(
    ReadableStream.from(chunks).pipeThrough(stripper.transform),
  ).arrayBuffer();
  return { out: new Uint8Array(out), status: stripper.status };
}

function cut(bytes: Uint8Array, points: number[]): Uint8Array[] {
  const sorted = [...new Set(points.map((p) => p % (bytes.length + 1)))].sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const point of [...sorted, bytes.length]) {
    if (point > from) chunks.push(bytes.slice(from, point));
    from = Math.max(from, point);
  }
  return chunks;
}

Deno.test("TrailerStripper: removes the trailer wherever the chunks split, keeps every other byte", async () => {
  const nonce = newNonce();
  await fc.assert(
    fc.asyncProperty(
      fc.uint8Array({ maxLength: 300 }),
      fc.uint8Array({ maxLength: 40 }),
      fc.oneof(fc.integer({ min: 0, max: 255 }).map((c) => `x:${c}`), fc.constant("s:SIGTERM")),
      fc.array(fc.nat(), { maxLength: 8 }),
      async (before, after, status, points) => {
        const trailer = new TextEncoder().encode(`\0OPSX3:${nonce}:${status}\0`);
        const whole = new Uint8Array([...before, ...trailer, ...after]);
        const { out, status: seen } = await strip(nonce, cut(whole, points));
        assertEquals([...out], [...before, ...after]);
        assert(seen !== null);
        const [kind, value] = status.split(":");
        assertEquals(
          seen,
          kind === "x"
            ? { exitCode: Number(value), signal: null }
            : { exitCode: null, signal: value },
        );
      },
    ),
    { numRuns: 300 },
  );
});

Deno.test("TrailerStripper: a trailer with another nonce (a step forging one) passes through untouched", async () => {
  const forged = new TextEncoder().encode(`out\0OPSX3:${newNonce()}:x:0\0more`);
  const { out, status } = await strip(newNonce(), [forged]);
  assertEquals([...out], [...forged]);
  assertEquals(status, null);
});

/** Runs a supervisor locally: the frame on a pipe kept open, as ssh would. */
async function supervise(
  kind: "perl" | "sh",
  argv: string[],
  opts: {
    stdin?: Uint8Array;
    env?: Record<string, string>;
    cwd?: string;
    killAfterMs?: number;
    /** The shell that runs the sh supervisor (the host's /bin/sh), as argv before `-c`. */
    shell?: string[];
    waiter?: Waiter;
    /** Printed by the "login shell" before the supervisor starts, as an rc file would. */
    rcNoise?: boolean;
    /** Start the supervisor as an asynchronous list (SIGINT and SIGQUIT ignored). */
    asAsyncList?: boolean;
  } = {},
) {
  const nonce = newNonce();
  const [shell, ...shellArgs] = opts.shell ?? ["/bin/sh"];
  const supervisor = stepCommand(kind);
  const command = opts.asAsyncList ? `exec 3<&0; { ${supervisor}; } <&3 & wait` : supervisor;
  const child = new Deno.Command(shell, {
    args: [
      ...shellArgs,
      "-c",
      opts.rcNoise ? `echo rc-out; echo rc-err >&2; ${command}` : command,
    ],
    env: { PATH: "/usr/bin:/bin", HOME: "/", USER: "nobody", LANG: "C.UTF-8" },
    clearEnv: true,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(
    encodeFrame({
      nonce,
      waiter: opts.waiter ?? "setsid",
      killGraceMs: 500,
      argv,
      env: opts.env ?? {},
      cwd: opts.cwd,
      stdin: opts.stdin,
    }),
  );
  const timer = opts.killAfterMs === undefined
    ? undefined
    : setTimeout(() => writer.write(KILL_REQUEST).catch(() => {}), opts.killAfterMs);
  const stripper = new TrailerStripper(nonce);
  const gates = { stdout: new StartGate(nonce), stderr: new StartGate(nonce) };
  const [stdout, stderr] = await Promise.all([
    new Response(child.stdout.pipeThrough(gates.stdout.transform)).text(),
    new Response(
      child.stderr.pipeThrough(gates.stderr.transform).pipeThrough(stripper.transform),
    ).text(),
    child.status,
  ]);
  clearTimeout(timer);
  await writer.close().catch(() => {});
  return { stdout, stderr, status: stripper.status, junk: gates.stderr.junk + gates.stdout.junk };
}

for (const kind of ["perl", "sh"] as const) {
  const absent = kind === "perl" ? !PERL : !SETSID;
  Deno.test({
    name: `${kind} supervisor (local): argv, env, cwd, stdin, exit and signal`,
    ignore: absent,
    fn: async () => {
      const env = await supervise(kind, [
        "/bin/sh",
        "-c",
        'printf "%s|" "$@" "$X" "$PWD"; cat',
        "sh",
        "a b",
        "",
      ], {
        env: { X: "it's $HOME" },
        cwd: "/tmp",
        stdin: new TextEncoder().encode("in\0put"),
      });
      assertEquals(env.stdout, "a b||it's $HOME|/tmp|in\0put");
      assertEquals(env.status, { exitCode: 0, signal: null });
      const exit = await supervise(kind, ["/bin/sh", "-c", "echo e >&2; exit 42"]);
      assertEquals(exit.status, { exitCode: 42, signal: null });
      assertEquals(exit.stderr, "e\n");
      const killed = await supervise(kind, ["/bin/sh", "-c", "kill -KILL $$"]);
      assertEquals(killed.status, { exitCode: null, signal: "SIGKILL" });
      const missing = await supervise(kind, ["no-such-program-ops-exec"]);
      assertEquals(missing.status, { exitCode: 127, signal: null });
      // A program named like an assignment is still a program (env(1) would take it for one).
      const assignment = await supervise(kind, ["A=b", "x"]);
      assertEquals(assignment.status, { exitCode: 127, signal: null });
      assertStringIncludes(assignment.stderr, "A=b");
      const asked = await supervise(kind, ["sleep", "30"], { killAfterMs: 200 });
      assertEquals(asked.status, { exitCode: null, signal: "SIGTERM" });
    },
  });
}

Deno.test({
  name: "perl supervisor tells exit 143 from death by SIGTERM",
  ignore: !PERL,
  fn: async () => {
    const exit = await supervise("perl", ["/bin/sh", "-c", "exit 143"]);
    assertEquals(exit.status, { exitCode: 143, signal: null });
    const term = await supervise("perl", ["/bin/sh", "-c", "kill -TERM $$"]);
    assertEquals(term.status, { exitCode: null, signal: "SIGTERM" });
  },
});

Deno.test({
  name: "the perl supervisor compiles under strict; the sh one parses",
  ignore: !PERL,
  fn: async () => {
    const perl = stepCommand("perl");
    const code = perl.slice(perl.indexOf("'"));
    const check = await new Deno.Command("/bin/sh", {
      args: ["-c", `perl -Mstrict -c -e ${code}`],
    }).output();
    assertStringIncludes(new TextDecoder().decode(check.stderr), "syntax OK");
    const sh = await new Deno.Command("/bin/sh", {
      args: ["-c", stepCommand("sh").replace("exec /bin/sh -c", "/bin/sh -n -c")],
    }).output();
    assert(sh.success, new TextDecoder().decode(sh.stderr));
  },
});

/** The shells a host's /bin/sh may be, as argv before `-c`. */
const SYSTEM_SHELLS: Record<string, string[]> = {
  dash: ["/usr/bin/dash"],
  "busybox ash": ["/usr/bin/busybox", "ash"],
  bash: ["/usr/bin/bash", "--posix"],
  ksh93: ["/usr/bin/ksh93"],
  mksh: ["/usr/bin/mksh"],
  yash: ["/usr/bin/yash"],
  posh: ["/usr/bin/posh"],
  zsh: ["/usr/bin/zsh", "--emulate", "sh"],
};
const systemShellsMissing = SETSID === null ? "setsid" : shellsMissing();

Deno.test({
  name:
    "sh supervisor under every /bin/sh and waiter: default dispositions, exact exits, signals, INT traps, rc output dropped",
  ignore: systemShellsMissing !== undefined || !HAS_PROC,
  fn: async () => {
    await Promise.all(
      Object.entries(SYSTEM_SHELLS).map(async ([name, shell]) => {
        for (const waiter of ["setsid", "time", "none"] as const) {
          const where = `${name}, waiter ${waiter}`;
          const run = (argv: string[], opts: Parameters<typeof supervise>[2] = {}) =>
            supervise("sh", argv, { shell, waiter, ...opts });
          const state = await run([...SIGNAL_STATE], { rcNoise: true });
          assertEquals(ignoredOrBlocked(state.stdout), { Ign: [], Blk: [] }, where);
          assertEquals(state.stderr, "", `${where}: rc output reached the step`);
          assertStringIncludes(state.junk, "rc-out", where);
          const exact = waiter !== "none";
          for (const code of [0, 1, 126, 127, 143, 200, 255, 160, 192]) {
            const { status } = await run(["sh", "-c", `exit ${code}`]);
            const expected = !exact && code === 143
              ? { exitCode: null, signal: "SIGTERM" } // sh alone cannot tell these apart
              : { exitCode: code, signal: null };
            assertEquals(status, expected, `${where}: exit ${code}`);
          }
          for (const signal of ["TERM", "KILL", "INT", "QUIT", "USR1"]) {
            const { status } = await run(["sh", "-c", `kill -${signal} $$; sleep 5`]);
            assertEquals(status, { exitCode: null, signal: `SIG${signal}` }, where);
          }
          const trapped = await run([
            "sh",
            "-c",
            "trap 'echo caught; exit 7' INT; kill -INT $$; sleep 5; echo missed",
          ]);
          assertEquals([trapped.status, trapped.stdout], [
            { exitCode: 7, signal: null },
            "caught\n",
          ]);
          const asked = await run(["sleep", "30"], { killAfterMs: 100 });
          assertEquals(asked.status, { exitCode: null, signal: "SIGTERM" }, where);
        }
      }),
    );
  },
});

Deno.test({
  name: "perl supervisor: default dispositions whatever it inherited; rc output dropped",
  ignore: !PERL || !HAS_PROC,
  fn: async () => {
    // Started as an asynchronous list of dash: perl inherits SIGINT and SIGQUIT ignored.
    const state = await supervise("perl", [...SIGNAL_STATE], { asAsyncList: true });
    assertEquals(ignoredOrBlocked(state.stdout), { Ign: [], Blk: [] });
    const noisy = await supervise("perl", ["echo", "step"], { rcNoise: true });
    assertEquals([noisy.stdout, noisy.stderr], ["step\n", ""]);
  },
});
