// The remote wrapper's parts that need no sshd: quoting, the frame, the
// trailer stripper, and the supervisors themselves run by a real local
// perl / sh with a real frame on a pipe (the sshd tests run them remotely).

import fc from "@deps/fast-check";
import { assert, assertEquals, assertStringIncludes } from "@deps/assert";
import { findProgram } from "../tests/_prereq.ts";
import {
  encodeFrame,
  KILL_REQUEST,
  newNonce,
  remoteCommand,
  shellQuote,
  TrailerStripper,
} from "./_ssh_wrapper.ts";

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
    killGraceMs: 2500,
    argv: ["printf", "a\nb", "ü"],
    env: { X: "1\n2" },
    cwd: "/srv/a b",
    stdin: new Uint8Array([0, 1, 2]),
  });
  const text = new TextDecoder().decode(frame);
  const [header] = text.split("\n", 1);
  const [magic, nonce, grace, graceSeconds, setupBytes, setupLines, stdinBytes] = header.split(" ");
  assertEquals([magic, nonce, grace, graceSeconds], ["OPSX1", "ab".repeat(16), "2500", "2.500"]);
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
        const trailer = new TextEncoder().encode(`\0OPSX1:${nonce}:${status}\0`);
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
  const forged = new TextEncoder().encode(`out\0OPSX1:${newNonce()}:x:0\0more`);
  const { out, status } = await strip(newNonce(), [forged]);
  assertEquals([...out], [...forged]);
  assertEquals(status, null);
});

/** Runs a supervisor locally: the frame on a pipe kept open, as ssh would. */
async function supervise(
  kind: "perl" | "sh",
  argv: string[],
  opts: { stdin?: Uint8Array; env?: Record<string, string>; cwd?: string; killAfterMs?: number } =
    {},
) {
  const nonce = newNonce();
  const child = new Deno.Command("/bin/sh", {
    args: ["-c", remoteCommand(kind)],
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
  const [stdout, stderr] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr.pipeThrough(stripper.transform)).text(),
    child.status,
  ]);
  clearTimeout(timer);
  await writer.close().catch(() => {});
  return { stdout, stderr, status: stripper.status };
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
  name: "perl supervisor tells exit 143 from death by SIGTERM (sh cannot)",
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
    const perl = remoteCommand("perl");
    const code = perl.slice(perl.indexOf("'"));
    const check = await new Deno.Command("/bin/sh", {
      args: ["-c", `perl -Mstrict -c -e ${code}`],
    }).output();
    assertStringIncludes(new TextDecoder().decode(check.stderr), "syntax OK");
    const sh = await new Deno.Command("/bin/sh", {
      args: ["-c", remoteCommand("sh").replace("exec /bin/sh -c", "/bin/sh -n -c")],
    }).output();
    assert(sh.success, new TextDecoder().decode(sh.stderr));
  },
});
