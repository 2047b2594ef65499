// Acceptance 9 of the agent issue: `ops-agent --check` (run exactly as
// deployed, under -P=agent) accepts deploy/config.toml and rejects broken
// configs naming the key; the LaunchAgent plist is a valid property list that
// names the program, --config, RunAtLoad, KeepAlive and its log paths; the
// systemd unit runs the same program and checks its config first.

import { assert, assertEquals, assertMatch, assertStringIncludes } from "@deps/assert";
import { findProgram, missing } from "./_prereq.ts";

const REPO = new URL("../", import.meta.url).pathname;

async function opsAgent(
  ...args: string[]
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--no-prompt", "-P=agent", `${REPO}agent/main.ts`, ...args],
    cwd: REPO,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: text(out.stdout), stderr: text(out.stderr) };
}

Deno.test("acceptance 9: ops-agent --check accepts deploy/config.toml", async () => {
  const result = await opsAgent("--config", "deploy/config.toml", "--check");
  assertEquals(result.code, 0, result.stderr);
  assertStringIncludes(result.stdout, "deploy/config.toml is valid");
  assertStringIncludes(result.stdout, "identity tailscale");
});

const GOOD = Deno.readTextFileSync(`${REPO}deploy/config.toml`);

Deno.test("acceptance 9: ops-agent --check rejects broken configs, naming the key", async () => {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const dir = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "check-" });
  const cases: [string, string, string][] = [
    [
      "a misspelt key",
      GOOD.replace("max_concurrent = 16", "max_concurent = 16"),
      'agent.max_concurent: unknown key (did you mean "max_concurrent"?)',
    ],
    [
      "a bad grant",
      GOOD.replace('allow = ["sando.promote",', 'allow = ["Sando.Promote",'),
      "grant[1].allow[0]",
    ],
    [
      "a bad selector",
      GOOD.replace('to = ["tag:sando"]', 'to = ["tag:sando", "sando"]'),
      "grant[1].to[1]",
    ],
    [
      "a wrong type",
      GOOD.replace("max_concurrent = 16", 'max_concurrent = "16"'),
      "agent.max_concurrent: must be an integer",
    ],
    [
      "a value out of range",
      GOOD.replace("max_concurrent = 16", "max_concurrent = 0"),
      "agent.max_concurrent: must be between",
    ],
    ["a bad listen", GOOD.replace('"100.101.102.103:7070"', '"myhost:7070"'), "agent.listen"],
    [
      "a relative audit log",
      GOOD.replace('"/var/log/ops-agent/audit.jsonl"', '"audit.jsonl"'),
      "agent.audit_log: must be an absolute path",
    ],
    [
      "an audit log outside the permission set",
      GOOD.replace('"/var/log/ops-agent/audit.jsonl"', '"/etc/audit.jsonl"'),
      "agent.audit_log: /etc/audit.jsonl is outside the write scope",
    ],
    [
      "a listen address outside the permission set",
      GOOD.replace('"100.101.102.103:7070"', '"192.168.1.5:7070"'),
      "agent.listen: 192.168.1.5:7070 is outside the net scope",
    ],
    [
      "an unknown provider",
      GOOD.replace('provider = "tailscale"', 'provider = "okta"'),
      'identity.provider: must be "tailscale" or "loopback"',
    ],
    [
      "loopback on a tailnet address",
      GOOD.replace(
        'provider = "tailscale"\n',
        'provider = "loopback"\nloopback_identity = "user:dev@localhost"\n',
      ).replace(/^socket = .*$/m, "").replace(/^capmap = .*$/m, ""),
      "agent.listen: the loopback provider is for local development only",
    ],
    [
      "no ceiling",
      GOOD.replace("[ceiling]", "[ceilling]"),
      'ceilling: unknown key (did you mean "ceiling"?)',
    ],
    [
      "a single [grant] table",
      GOOD.replace('[[grant]]\nto = ["tag:sando"]', '[grantx]\nto = ["tag:sando"]'),
      "grantx: unknown key",
    ],
    ["broken TOML", GOOD.replace("[agent]", "[agent"), "is not valid TOML"],
  ];
  for (const [what, text, expected] of cases) {
    const path = `${dir}/config.toml`;
    await Deno.writeTextFile(path, text);
    const result = await opsAgent("--config", path, "--check");
    assertEquals(result.code, 1, `${what}: ${result.stdout}`);
    assertStringIncludes(result.stderr, expected, what);
  }
  const missing = await opsAgent("--config", `${dir}/nope.toml`, "--check");
  assertEquals(missing.code, 1);
  assertStringIncludes(missing.stderr, "cannot read");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("ops-agent: usage, --help and --version", async () => {
  const help = await opsAgent("--help");
  assertEquals(help.code, 0);
  assertStringIncludes(help.stdout, "--config FILE");
  const version = await opsAgent("--version");
  assertEquals(version.code, 0);
  assertMatch(version.stdout, /^ops-agent \d+\.\d+\.\d+/);
  const bad = await opsAgent("--bogus");
  assertEquals(bad.code, 2);
  assertStringIncludes(bad.stderr, "--bogus");
  const none = await opsAgent();
  assertEquals(none.code, 2);
  assertStringIncludes(none.stderr, "--config FILE is required");
});

Deno.test("acceptance 9: the LaunchAgent plist is a valid property list with what launchd needs", async () => {
  const python = findProgram("/usr/bin/python3", "/usr/local/bin/python3");
  if (missing([python !== null, "python3 (its plistlib parses the plist)"])) return;
  const script = [
    "import json, plistlib, sys",
    "with open(sys.argv[1], 'rb') as f: print(json.dumps(plistlib.load(f)))",
  ].join("\n");
  const out = await new Deno.Command(python!, {
    args: ["-c", script, `${REPO}deploy/work.makenot.ops-agent.plist`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assertEquals(out.code, 0, new TextDecoder().decode(out.stderr));
  const plist = JSON.parse(new TextDecoder().decode(out.stdout));
  assertEquals(plist.Label, "work.makenot.ops-agent");
  const [program, flag, config] = plist.ProgramArguments;
  assertMatch(program, /\/ops-agent$/);
  assertEquals(flag, "--config");
  assertMatch(config, /^\/.*\/config\.toml$/);
  assertEquals(plist.RunAtLoad, true);
  assertEquals(plist.KeepAlive, true);
  assertEquals(plist.LimitLoadToSessionType, "Aqua");
  assertMatch(plist.StandardOutPath, /^\/.*\.log$/);
  assertMatch(plist.StandardErrorPath, /^\/.*\.log$/);
  assertEquals(plist.UserName, undefined, "a LaunchAgent runs as the logged-in user, never root");
  assert(plist.ExitTimeOut > 5, "launchd waits longer than a step's default grace before SIGKILL");
});

Deno.test("acceptance 9: the systemd unit runs ops-agent with --config, checks it first, stops with SIGTERM", async () => {
  const unit = await Deno.readTextFile(`${REPO}deploy/ops-agent.service`);
  const value = (key: string) => new RegExp(`^${key}=(.*)$`, "m").exec(unit)?.[1];
  assertMatch(value("ExecStart")!, /\/ops-agent --config \/etc\/ops-agent\/config\.toml$/);
  assertMatch(value("ExecStartPre")!, /--config \/etc\/ops-agent\/config\.toml --check$/);
  assertEquals(value("KillSignal"), "SIGTERM");
  assertEquals(value("KillMode"), "mixed");
  assert(value("User") && value("User") !== "root", "not root");
  assertEquals(
    value("LogsDirectory"),
    "ops-agent",
    "/var/log/ops-agent, inside the permission set",
  );
  const analyze = findProgram("/usr/bin/systemd-analyze", "/bin/systemd-analyze");
  if (analyze) {
    // Verify the syntax, with a program that exists here in place of ops-agent.
    const dir = await Deno.makeTempDir();
    await Deno.writeTextFile(
      `${dir}/ops-agent.service`,
      unit.replaceAll("/usr/local/bin/ops-agent", "/bin/true"),
    );
    const out = await new Deno.Command(analyze, {
      args: ["verify", `${dir}/ops-agent.service`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const said = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
    assertEquals(said.trim(), "", said);
    await Deno.remove(dir, { recursive: true });
  }
});
