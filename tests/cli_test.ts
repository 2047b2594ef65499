// The ops-exec CLI as a process, on this machine: each verb's output, exit
// codes and --json shapes against `local`; help and usage errors; the
// inventory's strictness; a denied step that never starts; Ctrl-C; the
// progress bar on a pseudo-terminal and not on a pipe; the documented
// install command.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "@deps/assert";
import { isAlive, waitFor } from "./_procs.ts";
import { exists, findProgram, missing, RSYNC } from "./_prereq.ts";
import {
  cli,
  CLI_ARGV,
  cliEnv,
  events,
  keys,
  ofType,
  readUntil,
  spawnCli,
  withoutDenoWarnings,
  writeInventory,
} from "./_cli.ts";

const REPO = new URL("../", import.meta.url).pathname;
const SCRIPT = findProgram("/usr/bin/script");

const EXIT_KEYS = [
  "action",
  "cancelled",
  "durationMs",
  "exitCode",
  "host",
  "lines",
  "signal",
  "status",
  "success",
  "timedOut",
  "type",
];

Deno.test("cli: --help on every verb (with examples), --version, and no verb", async () => {
  const top = await cli(["--help"]);
  assertEquals(top.code, 0);
  for (const verb of ["run", "sh", "observe", "caps", "push", "pull", "hosts"]) {
    assertStringIncludes(top.stdout, `  ${verb} `);
    const help = await cli([verb, "--help"]);
    assertEquals(help.code, 0, `${verb} --help: ${help.stderr}`);
    assertStringIncludes(help.stdout, `Usage: ops-exec ${verb}`);
    assertStringIncludes(help.stdout, "Examples:");
  }
  const version = await cli(["--version"]);
  assertEquals(version.code, 0);
  const meta = JSON.parse(await Deno.readTextFile(`${REPO}deno.json`));
  assertEquals(version.stdout.trim(), `ops-exec ${meta.version}`);
  const none = await cli([]);
  assertEquals(none.code, 64);
  assertStringIncludes(none.stderr, "no verb given");
});

Deno.test("cli: usage errors are one line naming the cause, exit 64, no stack", async () => {
  const cases: [string[], RegExp][] = [
    [["frobnicate"], /unknown verb "frobnicate"/],
    [["rn", "local"], /did you mean "run"/],
    [
      ["run", "local", "--allow", "t.x", "-a", "t.x", "--bogus", "--", "true"],
      /Unknown option '--bogus'/,
    ],
    [["run", "local", "--allow", "t.x", "-a", "t.x", "/bin/sh"], /put -- before the command/],
    [["run", "local", "--allow", "t.x", "--", "/bin/sh"], /--action A is required/],
    [
      ["sh", "local", "-a", "t.x", "--timeout", "soon", "true"],
      /--timeout "soon": write a duration/,
    ],
    [
      ["sh", "local", "-a", "t.x", "--env", "NOEQUALS", "true"],
      /--env "NOEQUALS": write NAME=VALUE/,
    ],
    [["sh", "local", "-a", "t.x", "--cwd", "relative", "true"], /cwd/],
    [["sh", "local", "-a", "Bad Action", "true"], /action/],
    [["sh", "local", "-a", "t.x", "--allow", "Not A Grant", "true"], /--allow/],
    [["sh", "-a", "t.x", "true"], /give the TARGETs, then the script/],
    [["observe", "--allow", "observe"], /name at least one TARGET/],
    [["observe", "ssh://-oProxyCommand=x"], /is not a host name/],
    [["observe", "web-9"], /there is no inventory to look it up in/],
    [["push", "local", "a"], /give TARGET SRC DST/],
    [["sh", "local", "-a", "t.x", "-c", "0", "true"], /--concurrency "0"/],
  ];
  for (const [args, pattern] of cases) {
    const result = await cli(args);
    assertEquals(result.code, 64, `${args.join(" ")}: ${result.stderr}`);
    assertMatch(result.stderr, pattern, args.join(" "));
    assert(
      !/\n\s+at /.test(result.stderr),
      `a stack trace for ${args.join(" ")}:\n${result.stderr}`,
    );
  }
});

Deno.test("cli local: run and sh stream lines prefixed with host and stream; exit is the step's", async () => {
  const sh = await cli([
    "sh",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.echo",
    "-e",
    "WHO=world",
    'echo "hello $WHO"; echo "careful" >&2; exit 3',
  ]);
  assertEquals(sh.code, 3);
  assertEquals(sh.stdout, "local  out  hello world\n");
  assertStringIncludes(sh.stderr, "local  err  careful\n");

  const run = await cli([
    "run",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.args",
    "--cwd",
    "/tmp",
    "--stdin",
    "-",
    "--",
    "/bin/sh",
    "-c",
    'printf "%s|" "$@"; pwd; cat',
    "sh",
    "two words",
    "--not-an-option",
  ], { stdin: "from stdin\n" });
  assertEquals(run.code, 0, run.stderr);
  assertEquals(run.stdout, "local  out  two words|--not-an-option|/tmp\nlocal  out  from stdin\n");

  // Any program, though the permission set names /bin/sh and not it: through the shell, argv exact.
  const echo = await cli([
    "run",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.echo",
    "--",
    "/bin/echo",
    "a  b",
    "$HOME",
  ]);
  assertEquals([echo.code, echo.stdout], [0, "local  out  a  b $HOME\n"], echo.stderr);
  const missing = await cli([
    "run",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.nope",
    "--",
    "no-such-program-x",
  ]);
  assertEquals(missing.code, 127);
  assertStringIncludes(
    missing.stderr,
    "local  err  ops-exec: no-such-program-x: command not found",
  );
});

Deno.test("cli local: --json events of run and sh have the documented shapes", async () => {
  const result = await cli([
    "sh",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.json",
    "--json",
    "echo out; echo err >&2; exit 2",
  ]);
  assertEquals(result.code, 2);
  const all = events(result.stdout);
  const lines = ofType(all, "line");
  assertEquals(lines.map((l) => [l.host, l.stream, l.text, l.seq]), [
    ["local", "stdout", "out", 0],
    ["local", "stderr", "err", 1],
  ]);
  assertEquals(keys(lines[0]), ["host", "seq", "stream", "text", "type"]);
  const [exit] = ofType(all, "exit");
  assertEquals(keys(exit), EXIT_KEYS);
  assertEquals([exit.status, exit.exitCode, exit.success], ["failed", 2, false]);
  const [summary] = ofType(all, "summary");
  assertEquals(keys(summary), ["durationMs", "exitCode", "hosts", "ok", "type"]);
  assertEquals([summary.ok, summary.exitCode], [false, 2]);
  const [row] = summary.hosts as Record<string, unknown>[];
  assertEquals(keys(row), ["durationMs", "exitCode", "host", "reason", "status"]);
  assertEquals(all.at(-1)!.type, "summary");
  assertEquals(result.stderr.trim(), "");
});

Deno.test("cli local: a timeout is exit 124 and status timed_out", async () => {
  const result = await cli([
    "sh",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.slow",
    "--timeout",
    "300ms",
    "--grace",
    "200ms",
    "--json",
    "sleep 30",
  ]);
  assertEquals(result.code, 124);
  const [exit] = ofType(events(result.stdout), "exit");
  assertEquals([exit.status, exit.timedOut], ["timed_out", true]);
});

Deno.test("cli local: observe and caps, as text and as --json", async () => {
  const observe = await cli(["observe", "local", "--allow", "observe"]);
  assertEquals(observe.code, 0, observe.stderr);
  assertMatch(observe.stdout, new RegExp(`^local  ${Deno.hostname()}: ${Deno.build.os}/`));
  assertMatch(observe.stdout, /local {2}load [\d.]+ [\d.]+ [\d.]+, memory .* free of /);
  const json = await cli(["observe", "local", "--allow", "observe", "--json"]);
  const [facts] = ofType(events(json.stdout), "observation");
  assertEquals(facts.host, "local");
  assertEquals(facts.hostname, Deno.hostname());
  for (const key of ["os", "arch", "kernel", "uptimeSeconds", "loadAverage", "memory", "disks"]) {
    assert(key in facts, `observation lacks ${key}`);
  }
  const denied = await cli(["observe", "local"]);
  assertEquals(denied.code, 77);
  assertStringIncludes(denied.stderr, 'action "observe"');
  assertStringIncludes(denied.stderr, "pass --allow observe");

  const caps = await cli(["caps", "local", "--allow", "test.*", "--allow", "observe", "--json"]);
  assertEquals(caps.code, 0, caps.stderr);
  const [grant] = ofType(events(caps.stdout), "capabilities");
  assertEquals(grant, {
    type: "capabilities",
    host: "local",
    transport: "local",
    source: "--allow",
    caller: ["observe", "test.*"],
    agent: null,
    effective: null,
  });
  const text = await cli(["caps", "local", "--allow", "test.*"]);
  assertStringIncludes(text.stdout, "local  caller grant (--allow): test.*");
});

Deno.test({
  name: "cli local: push and pull copy with rsync, report what they did, --json shapes",
  ignore: missing([RSYNC !== null, "rsync"]) !== undefined,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ops-exec-cli-sync-" });
    try {
      await Deno.mkdir(`${dir}/src/sub`, { recursive: true });
      await Deno.writeTextFile(`${dir}/src/a.txt`, "a\n");
      await Deno.writeTextFile(`${dir}/src/sub/b.txt`, "b\n");
      const push = await cli([
        "push",
        "local",
        "--allow",
        `sync.push:${dir}`,
        `${dir}/src/`,
        `${dir}/remote/new/`,
      ]);
      assertEquals(push.code, 0, push.stderr);
      assertMatch(push.stdout, /^local {2}pushed 2 files, /);
      assertEquals(await Deno.readTextFile(`${dir}/remote/new/sub/b.txt`), "b\n");

      const pull = await cli([
        "pull",
        "local",
        "--allow",
        `sync.pull:${dir}/remote`,
        "--json",
        "--exclude",
        "a.txt",
        `${dir}/remote/new/`,
        `${dir}/back/`,
      ]);
      assertEquals(pull.code, 0, pull.stderr);
      const [sync] = ofType(events(pull.stdout), "sync");
      assertEquals(keys(sync), [
        "action",
        "bytesReceived",
        "bytesSent",
        "dryRun",
        "durationMs",
        "filesCreated",
        "filesDeleted",
        "filesTransferred",
        "host",
        "literalBytes",
        "status",
        "totalSize",
        "type",
      ]);
      assertEquals([sync.action, sync.filesTransferred, sync.status], ["sync.pull", 1, "ok"]);
      assert(!(await exists(`${dir}/back/a.txt`)), "the excluded file was pulled");
      assertEquals(await Deno.readTextFile(`${dir}/back/sub/b.txt`), "b\n");

      // Outside the grant: refused before rsync starts, nothing written.
      const outside = await cli([
        "push",
        "local",
        "--allow",
        `sync.push:${dir}/remote`,
        `${dir}/src/`,
        `${dir}/elsewhere/`,
      ]);
      assertEquals(outside.code, 77);
      assertStringIncludes(outside.stderr, `add --allow sync.push:${dir}/elsewhere`);
      assert(!(await exists(`${dir}/elsewhere`)));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("cli: a denied action never starts: no marker file, exit 77", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-cli-denied-" });
  try {
    const marker = `${dir}/ran`;
    const inventory = await writeInventory(`
[hosts.here]
transport = "local"
allow = ["test.read"]
`);
    const cases: string[][] = [
      ["sh", "local", "-a", "test.write", `touch ${marker}`],
      ["sh", "local", "--allow", "test.read", "-a", "test.write", `touch ${marker}`],
      ["sh", "here", "-i", inventory, "-a", "test.write", `touch ${marker}`],
      [
        "run",
        "here",
        "-i",
        inventory,
        "-a",
        "test.write",
        "--",
        "/bin/sh",
        "-c",
        `touch ${marker}`,
      ],
      ["sh", "here", "-i", inventory, "--json", "-a", "test.write", `touch ${marker}`],
    ];
    for (const args of cases) {
      const result = await cli(args);
      assertEquals(result.code, 77, `${args.join(" ")}: ${result.stderr}`);
      assert(!(await exists(marker)), `the denied step ran: ${args.join(" ")}`);
    }
    const json = await cli(cases[4]);
    const [error] = ofType(events(json.stdout), "error");
    assertEquals(
      [error.status, error.code, error.action, error.scope],
      ["denied", "capability_denied", "test.write", "caller"],
    );
    assertStringIncludes(error.message as string, `add test.write to the allow of here`);
    // The same step, granted, does run: the marker shows it.
    const granted = await cli([
      "sh",
      "here",
      "-i",
      inventory,
      "--allow",
      "test.write",
      "-a",
      "test.write",
      `touch ${marker}`,
    ]);
    assertEquals(granted.code, 0, granted.stderr);
    assert(await exists(marker));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: an inventory with an unknown or bad key names it, exit 78", async () => {
  const cases: [string, RegExp][] = [
    [
      `[hosts.web-1]\ntransport = "ssh"\nadress = "10.0.0.5"\n`,
      /hosts\.web-1\.adress: unknown key \(did you mean "address"\?\)/,
    ],
    [`[host.web-1]\ntransport = "ssh"\n`, /host: unknown key \(did you mean "hosts"\?\)/],
    [
      `[hosts.web-1]\ntransport = "ftp"\n`,
      /hosts\.web-1\.transport: must be "local", "ssh" or "agent"/,
    ],
    [
      `[hosts.web-1]\ntransport = "ssh"\naddress = "a"\nport = 70000\n`,
      /hosts\.web-1\.port: must be between 1 and 65535/,
    ],
    [
      `[hosts.web-1]\ntransport = "ssh"\naddress = "-oProxyCommand=x"\n`,
      /hosts\.web-1\.address: must not start with "-"/,
    ],
    [
      `[hosts.web-1]\ntransport = "ssh"\naddress = "a"\nssh_options = ["ControlPath=/x"]\n`,
      /hosts\.web-1\.ssh_options\[0\]: ControlPath is managed/,
    ],
    [`[hosts.m]\ntransport = "agent"\naddress = "a"\nuser = "x"\n`, /hosts\.m\.user: unknown key/],
    [`[hosts.m]\ntransport = "local"\nallow = ["Bad Grant"]\n`, /hosts\.m\.allow\[0\]/],
    [
      `[hosts.a]\ntransport = "local"\n[groups.g]\nhosts = ["a", "b"]\n`,
      /groups\.g\.hosts\[1\]: "b" is neither a host nor a group/,
    ],
    [`[groups.g]\nhosts = ["h"]\n[groups.h]\nhosts = ["g"]\n`, /contains itself \(g -> h -> g\)/],
    [
      `[hosts.local]\ntransport = "ssh"\naddress = "x"\n`,
      /the target "local" is always this machine/,
    ],
    [`hosts = 1\n`, /hosts: must be a table/],
    [
      `[hosts.a]\ntransport = "ssh"\naddress = "a"\nport = 22.0\n`,
      /hosts\.a\.port: must be an integer, got a float/,
    ],
  ];
  for (const [toml, pattern] of cases) {
    const path = await writeInventory(toml);
    const result = await cli(["hosts", "-i", path]);
    assertEquals(result.code, 78, `${toml}: ${result.stderr}`);
    assertMatch(result.stderr, pattern, toml);
    assertStringIncludes(result.stderr, path);
    assert(!/\n\s+at /.test(result.stderr), result.stderr);
  }
  const json = await cli(["hosts", "-i", await writeInventory(cases[0][0]), "--json"]);
  const [error] = events(json.stdout);
  assertEquals([error.type, error.status, error.code, error.key], [
    "error",
    "config",
    "invalid_config",
    "hosts.web-1.adress",
  ]);
});

Deno.test("cli: hosts shows the inventory resolved, as text and --json", async () => {
  const path = await writeInventory(`
[hosts.web-1]
transport = "ssh"
address = "10.0.0.5"
user = "deploy"
port = 2222
allow = ["sando.health"]

[hosts.mac-1]
transport = "agent"
address = "100.77.1.9"
allow = ["bento.*"]

[hosts.here]
transport = "local"

[groups.canary]
hosts = ["web-1"]
allow = ["sando.*"]

[groups.all]
hosts = ["canary", "mac-1", "here"]
allow = ["observe"]
`);
  const text = await cli(["hosts", "-i", path]);
  assertEquals(text.code, 0, text.stderr);
  assertMatch(
    text.stdout,
    /web-1\s+ssh\s+deploy@10\.0\.0\.5:2222\s+canary,all\s+observe, sando\.\*/,
  );
  assertMatch(
    text.stdout,
    /mac-1\s+agent\s+http:\/\/100\.77\.1\.9:7070\s+all\s+bento\.\*, observe/,
  );
  assertMatch(text.stdout, /all\s+web-1,mac-1,here\s+observe/);
  const json = await cli(["hosts", "-i", path, "--json"]);
  const all = events(json.stdout);
  assertEquals(ofType(all, "host").map((h) => [h.name, h.allow]), [
    ["web-1", ["observe", "sando.*"]],
    ["mac-1", ["bento.*", "observe"]],
    ["here", ["observe"]],
  ]);
  assertEquals(keys(ofType(all, "host")[0]), [
    "address",
    "allow",
    "groups",
    "name",
    "transport",
    "type",
  ]);
  assertEquals(ofType(all, "group").map((g) => [g.name, g.hosts]), [
    ["canary", ["web-1"]],
    ["all", ["web-1", "mac-1", "here"]],
  ]);
  // A target that names a group resolves to its hosts.
  const some = await cli(["hosts", "canary", "-i", path, "--json"]);
  assertEquals(ofType(events(some.stdout), "host").map((h) => h.name), ["web-1"]);
  // The default inventory is $XDG_CONFIG_HOME/ops-exec/hosts.toml.
  const home = await Deno.makeTempDir();
  await Deno.mkdir(`${home}/ops-exec`);
  await Deno.copyFile(path, `${home}/ops-exec/hosts.toml`);
  const found = await cli(["hosts", "--json"], { env: { XDG_CONFIG_HOME: home } });
  assertEquals(ofType(events(found.stdout), "host").length, 3);
  await Deno.remove(home, { recursive: true });
});

Deno.test("cli: a fan-out over a group runs at most --concurrency hosts at once", async () => {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-cli-conc-" });
  try {
    const inventory = await writeInventory(`
${
      ["a", "b", "c", "d"].map((n) => `[hosts.${n}]\ntransport = "local"\nallow = ["test.*"]\n`)
        .join("\n")
    }
[groups.four]
hosts = ["a", "b", "c", "d"]
`);
    // Each step counts the steps running beside it.
    const script =
      `touch ${dir}/run.$$; ls ${dir} | grep -c '^run\\.' >> ${dir}/counts; sleep 0.5; rm ${dir}/run.$$`;
    const one = await cli(["sh", "four", "-i", inventory, "-a", "test.count", "-c", "1", script]);
    assertEquals(one.code, 0, one.stderr);
    const counts1 = (await Deno.readTextFile(`${dir}/counts`)).trim().split("\n").map(Number);
    assertEquals(counts1, [1, 1, 1, 1]);
    await Deno.remove(`${dir}/counts`);
    const four = await cli(["sh", "four", "-i", inventory, "-a", "test.count", "-c", "4", script]);
    assertEquals(four.code, 0, four.stderr);
    const counts4 = (await Deno.readTextFile(`${dir}/counts`)).trim().split("\n").map(Number);
    assert(Math.max(...counts4) > 1, `no two steps overlapped with -c 4: ${counts4}`);
    // The summary names every host.
    assertMatch(four.stderr, /HOST\s+STATUS\s+EXIT\s+TIME/);
    for (const host of ["a", "b", "c", "d"]) {
      assertMatch(four.stderr, new RegExp(`^${host}\\s+ok\\s+0\\s+`, "m"));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: --fail-fast stops at the first host that fails and starts no more", async () => {
  const inventory = await writeInventory(`
${["a", "b", "c"].map((n) => `[hosts.${n}]\ntransport = "local"\nallow = ["test.*"]\n`).join("\n")}
[groups.abc]
hosts = ["a", "b", "c"]
`);
  const result = await cli([
    "sh",
    "abc",
    "-i",
    inventory,
    "-a",
    "test.f",
    "-c",
    "1",
    "--fail-fast",
    "--json",
    "exit 3",
  ]);
  assertEquals(result.code, 1, result.stderr);
  const [summary] = ofType(events(result.stdout), "summary");
  assertEquals(
    (summary.hosts as Record<string, unknown>[]).map((h) => [h.host, h.status, h.exitCode]),
    [
      ["a", "failed", 3],
      ["b", "skipped", null],
      ["c", "skipped", null],
    ],
  );
  const all = await cli(["sh", "abc", "-i", inventory, "-a", "test.f", "-c", "1", "exit 3"]);
  assertEquals(all.code, 1);
  assertStringIncludes(
    all.stderr,
    "3 of 3 hosts did not succeed: a (failed), b (failed), c (failed)",
  );
});

Deno.test("cli local: SIGINT during a step kills its process tree and exits 130", async () => {
  const child = spawnCli([
    "sh",
    "local",
    "--allow",
    "test.*",
    "-a",
    "test.sleep",
    "--grace",
    "1s",
    'sleep 300 & echo "child $!"; echo "shell $$"; wait',
  ]);
  const { text, rest } = await readUntil(child, /child \d+\n.*shell \d+\n/s);
  const pids = [...text.matchAll(/(?:child|shell) (\d+)/g)].map((m) => Number(m[1]));
  assertEquals(pids.length, 2);
  assert(pids.every(isAlive));
  child.kill("SIGINT");
  const status = await child.status;
  await rest;
  const stderr = withoutDenoWarnings(new TextDecoder().decode(await readAll(child.stderr)));
  // Exited by itself, after cancelling: not killed by the signal.
  assertEquals([status.code, status.signal], [130, null], stderr);
  assert(await waitFor(() => !pids.some(isAlive), 3000), `survivors: ${pids.filter(isAlive)}`);
  assertStringIncludes(stderr, "interrupted: cancelling every running step");
});

Deno.test({
  name: "cli: the progress bar of push appears on a pseudo-terminal, and not on a pipe",
  ignore: missing([RSYNC !== null, "rsync"], [SCRIPT !== null, "script (util-linux)"]) !==
    undefined,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ops-exec-cli-bar-" });
    try {
      await Deno.mkdir(`${dir}/src`);
      await Deno.writeFile(`${dir}/src/blob`, new Uint8Array(8 * 1024 * 1024).fill(7));
      const args = ["push", "local", "--allow", `sync.push:${dir}`, `${dir}/src/`];
      const quote = (w: string) => `'${w.replaceAll("'", `'\\''`)}'`;
      const command = [...CLI_ARGV, ...args, `${dir}/tty/`].map(quote).join(" ");
      const tty = await new Deno.Command(SCRIPT!, {
        args: ["-qec", command, "/dev/null"],
        env: { ...cliEnv(), TERM: "xterm" },
        clearEnv: true,
        cwd: REPO,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const screen = new TextDecoder().decode(tty.stdout);
      assertEquals(tty.code, 0, screen);
      assertMatch(screen, /local \[[\u2588\u2591]{30}\] 100%/);
      assertStringIncludes(screen, "local  pushed 1 file");

      const piped = await cli([...args, `${dir}/pipe/`]);
      assertEquals(piped.code, 0, piped.stderr);
      assert(!/[\u2588\u2591]|\d+%/.test(piped.stdout + piped.stderr), piped.stdout + piped.stderr);
      assertStringIncludes(piped.stdout, "local  pushed 1 file");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "cli: colour on a terminal only, each host its own, and NO_COLOR honoured",
  ignore: missing([SCRIPT !== null, "script (util-linux)"]) !== undefined,
  fn: async () => {
    const inventory = await writeInventory(`
[hosts.web-1]
transport = "local"
allow = ["test.*"]
[hosts.db-1]
transport = "local"
allow = ["test.*"]
[groups.both]
hosts = ["web-1", "db-1"]
`);
    const quote = (w: string) => `'${w.replaceAll("'", `'\\''`)}'`;
    const command = [
      ...CLI_ARGV,
      "sh",
      "both",
      "-i",
      inventory,
      "-a",
      "test.hi",
      "-c",
      "1",
      "echo hi",
    ]
      .map(quote).join(" ");
    const run = async (env: Record<string, string>) =>
      new TextDecoder().decode(
        (await new Deno.Command(SCRIPT!, {
          args: ["-qec", command, "/dev/null"],
          env: { ...cliEnv(), TERM: "xterm", ...env },
          clearEnv: true,
          stdin: "null",
          stdout: "piped",
        }).output()).stdout,
      );
    const coloured = await run({ NO_COLOR: "" });
    const colourOf = (host: string) =>
      new RegExp(`\u001b\\[(\\d+)m${host}\\s*\u001b\\[0m {2}\u001b\\[2mout`).exec(coloured);
    const [web, db] = [colourOf("web-1"), colourOf("db-1")];
    assert(web && db, coloured);
    assert(web[1] !== db[1], `web-1 and db-1 share colour ${web[1]}`);
    const plain = await run({ NO_COLOR: "1" });
    assert(!plain.includes("\x1b["), plain);
    assertStringIncludes(plain, "web-1  out  hi");
    const piped = await cli(["sh", "both", "-i", inventory, "-a", "test.hi", "echo hi"], {
      env: { NO_COLOR: "" },
    });
    assert(!piped.stdout.includes("\x1b["), piped.stdout);
  },
});

Deno.test("cli: the install command of docs/cli.md installs a working ops-exec", async () => {
  const doc = await Deno.readTextFile(`${REPO}docs/cli.md`);
  const line = doc.split("\n").find((l) => l.startsWith("deno install -g "));
  assert(line, "docs/cli.md has no line starting with `deno install -g `");
  const words = line.split(/\s+/).map((w) => w.replace(/^'(.*)'$/, "$1"));
  // The same permissions as the cli set of deno.json, flag for flag.
  const set = JSON.parse(await Deno.readTextFile(`${REPO}deno.json`)).permissions.cli;
  for (const [name, value] of Object.entries(set)) {
    const flag = words.find((w) => w.startsWith(`--allow-${name}`));
    assert(flag, `the install line lacks --allow-${name}`);
    if (value === true) assertEquals(flag, `--allow-${name}`);
    else assertEquals(flag, `--allow-${name}=${(value as string[]).join(",")}`);
  }
  const root = await Deno.makeTempDir({ prefix: "ops-exec-install-" });
  try {
    const args = words.slice(1).map((w) => w === "cli/main.ts" ? `${REPO}cli/main.ts` : w);
    const install = await new Deno.Command(Deno.execPath(), {
      args: [...args.slice(0, 2), "--root", root, ...args.slice(2)],
      cwd: REPO,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(install.code, 0, new TextDecoder().decode(install.stderr));
    const run = await new Deno.Command(`${root}/bin/ops-exec`, {
      args: ["sh", "local", "--allow", "test.hi", "-a", "test.hi", "echo installed"],
      env: cliEnv(),
      clearEnv: true,
      cwd: "/",
      stdout: "piped",
      stderr: "piped",
    }).output();
    assertEquals(new TextDecoder().decode(run.stdout), "local  out  installed\n");
    assertEquals(run.code, 0, new TextDecoder().decode(run.stderr));
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("examples: --help prints usage; a bad option is a one-line usage error", async () => {
  for (const example of ["demo.ts", "sando_promote.ts", "bento_release.ts"]) {
    const run = (args: string[]) =>
      new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${REPO}examples/${example}`, ...args],
        cwd: REPO,
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).output();
    const help = await run(["--help"]);
    const helpOut = new TextDecoder().decode(help.stdout);
    assertEquals(help.code, 0, new TextDecoder().decode(help.stderr));
    assertStringIncludes(helpOut, "Usage:");
    const bad = await run(["--frobnicate"]);
    const stderr = new TextDecoder().decode(bad.stderr);
    assertEquals(bad.code, 2, stderr);
    assertStringIncludes(stderr, "--frobnicate");
    assertEquals(stderr.trim().split("\n").length, 1, stderr);
    assert(!/TypeError|\n\s+at /.test(stderr), `${example}: ${stderr}`);
  }
});

async function readAll(stream: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
