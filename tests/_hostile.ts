// Hostile strings for the byte-exact checks of a transport: argv, env values,
// cwd and stdin that a shell would interpret if anything ever quoted them
// wrongly, each planting a bait file if it ran as shell.

import fc from "@deps/fast-check";
import { assertEquals, assertFalse } from "@deps/assert";
import { CollectingSink } from "../executor/sinks.ts";
import type { Executor } from "../executor/types.ts";
import { Step } from "../step/mod.ts";
import { exists } from "./_prereq.ts";

/** Strings a shell would love to interpret. Each would create `bait` if it ever ran as shell. */
export function nasty(bait: string): fc.Arbitrary<string> {
  const pieces = fc.constantFrom(
    "'",
    '"',
    "$",
    "`",
    ";",
    "\n",
    "\\",
    "-",
    "--",
    "-n",
    "-e",
    "*",
    "?",
    "~",
    "#",
    "&",
    "|",
    "<",
    ">",
    "(",
    ")",
    "{}",
    " ",
    "\t",
    "\r",
    "é",
    "日本",
    "🦕",
    "$HOME",
    "${IFS}",
    `$(touch ${bait})`,
    `\`touch ${bait}\``,
    `; touch ${bait}`,
    `'; touch ${bait}; '`,
    `"; touch ${bait}; "`,
    `\n touch ${bait}\n`,
    "OPSX1",
  );
  const free = fc.string({ unit: "binary", maxLength: 12 }).filter((s) => !s.includes("\0"));
  return fc.array(fc.oneof(pieces, free), { maxLength: 6 }).map((parts) => parts.join(""));
}

/** A directory name: any bytes but `/` and NUL, not `.` or `..`, short enough. */
export function dirName(bait: string): fc.Arbitrary<string> {
  return nasty(bait)
    .map((s) => s.replaceAll("/", "_"))
    .filter((s) => s !== "" && s !== "." && s !== ".." && new TextEncoder().encode(s).length < 200);
}

export const ECHO_ALL = [
  "/bin/sh",
  "-c",
  // A fixed script: the generated values are only ever its positional
  // parameters, its environment, its cwd and its stdin.
  '[ $# -eq 0 ] || printf "%s\\0" "$@"; printf "%s\\0" "$PWD"; env -0; printf "\\001"; od -An -tx1 -v',
  "sh",
];

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Hostile values that always run (fast-check adds random ones). */
export const FIXED_HOSTILE: readonly string[] = [
  "",
  "'",
  '"',
  'it\'s "quoted"',
  "$HOME",
  "${IFS}",
  "`id`",
  "$(id)",
  "a;b",
  "line\nbreak",
  "\ttab\r",
  "-n",
  "--",
  "-e",
  "--help",
  "é 日本 🦕",
  "\\",
  "\\'",
  "*",
  "~",
  "!",
  "#",
];

async function run(exec: Executor, step: Step) {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(step, sink);
  return { out, sink };
}

/** Runs one echo step and checks that argv, env, cwd and stdin came back byte-exact. */
export async function assertEchoes(
  exec: Executor,
  value: { args: string[]; env: Record<string, string>; cwd: string; stdin: Uint8Array },
): Promise<void> {
  const { args, env, cwd, stdin } = value;
  const mkdir = await run(exec, Step.exec("test.mkdir", ["mkdir", "-p", "--", cwd]));
  assertEquals(mkdir.out.exitCode, 0, mkdir.sink.text("stderr"));
  const { out, sink } = await run(
    exec,
    Step.exec("test.echo", [...ECHO_ALL, ...args], { env, cwd, stdin }),
  );
  assertEquals(out.exitCode, 0, sink.text("stderr"));
  assertEquals(sink.text("stderr"), "", "nothing on stderr (no rc-file output)");
  const text = sink.lines.filter((l) => l.stream === "stdout").map((l) => l.text).join("\n");
  const [nulPart, odPart] = [
    text.slice(0, text.lastIndexOf("\x01")),
    text.slice(text.lastIndexOf("\x01") + 1),
  ];
  const fields = nulPart.split("\0");
  fields.pop(); // after the last NUL
  assertEquals(fields.slice(0, args.length), args);
  assertEquals(fields[args.length], cwd);
  const seenEnv = Object.fromEntries(
    fields.slice(args.length + 1).map((entry) => {
      const at = entry.indexOf("=");
      return [entry.slice(0, at), entry.slice(at + 1)];
    }),
  );
  for (const [name, value] of Object.entries(env)) assertEquals(seenEnv[name], value);
  assertEquals(odPart.replace(/\s+/g, ""), hex(stdin));
}

/**
 * The byte-exact property on `exec`: the fixed hostile values, then
 * `numRuns` generated ones; no generated string may ever run as shell.
 *
 * @param scratch A directory on the host, writable by the account.
 */
export async function assertByteExact(
  exec: Executor,
  scratch: string,
  numRuns: number,
): Promise<void> {
  const bait = `${scratch}/bait`;
  await assertEchoes(exec, {
    args: [...FIXED_HOSTILE],
    env: Object.fromEntries(FIXED_HOSTILE.map((value, i) => [`T_${i}`, value])),
    cwd: `${scratch}/${FIXED_HOSTILE.filter((v) => !v.includes("/")).join("_")}`.slice(0, 200),
    stdin: new TextEncoder().encode(FIXED_HOSTILE.join("\0")),
  });
  await fc.assert(
    fc.asyncProperty(
      fc.array(nasty(bait), { maxLength: 6 }),
      fc.dictionary(fc.stringMatching(/^[A-Za-z_][A-Za-z0-9_]{0,8}$/), nasty(bait), {
        maxKeys: 4,
      }),
      dirName(bait),
      fc.uint8Array({ maxLength: 64 }),
      async (args, rawEnv, dir, stdin) => {
        // Prefixed names: the value is what is generated; a name like PATH or
        // LD_PRELOAD would only change what runs, not test the transfer.
        const env = Object.fromEntries(
          Object.entries(rawEnv).map(([name, value]) => [`T_${name}`, value]),
        );
        await assertEchoes(exec, { args, env, cwd: `${scratch}/${dir}`, stdin });
      },
    ),
    { numRuns },
  );
  assertFalse(await exists(bait), "a generated string ran as shell");
}
