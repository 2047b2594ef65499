// SshExec's options against real, private sshds on loopback (tests/_sshd.ts)
// (issue 18.2): each way a new user gets an option wrong raises the kind and
// message docs/ssh.md promises, an ssh config file can be handed over
// (`configFile`, ssh -F), and ProxyJump hops get the executor's own key and
// known_hosts — through a second private sshd as the jump host.

import {
  assert,
  assertEquals,
  assertFalse,
  assertRejects,
  assertStringIncludes,
  assertThrows,
} from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { ConfigError, TransportError } from "../executor/errors.ts";
import { CollectingSink } from "../executor/sinks.ts";
import { Step } from "../step/mod.ts";
import { SshExec, type SshExecOptions } from "../transports/ssh.ts";
import { type Sshd, sshdMissing, startSshd } from "./_sshd.ts";

const skip = sshdMissing();
/** The target host. */
const target: Sshd | null = skip ? null : await startSshd();
/** A second sshd, used as the jump host; it accepts the target's client key. */
const jump: Sshd | null = skip ? null : await startSshd();
const scratch = skip ? "" : await Deno.makeTempDir({ prefix: "ops-exec-ssh-config-" });
/** A known_hosts file that knows both sshds. */
const bothKnown = `${scratch}/both_known_hosts`;
if (target && jump) {
  await Deno.writeTextFile(
    `${jump.stateDir}/authorized_keys`,
    await Deno.readTextFile(`${target.clientKey}.pub`),
    { append: true },
  );
  await Deno.writeTextFile(
    bothKnown,
    (await Deno.readTextFile(target.knownHosts)) + (await Deno.readTextFile(jump.knownHosts)),
  );
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(scratch, { recursive: true });
    } catch {
      // Removed by the teardown test already.
    }
  });
}

const CAPS = CapabilitySet.of("test.*", "observe");

function options(extra: Partial<SshExecOptions> = {}): SshExecOptions {
  return {
    host: target!.host,
    port: target!.port,
    user: target!.user,
    identityFile: target!.clientKey,
    knownHostsFile: target!.knownHosts,
    ...extra,
  };
}

function sshTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: skip !== undefined, fn });
}

async function echo(exec: SshExec, text = "hello"): Promise<string> {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(Step.exec("test.echo", ["echo", text]), sink);
  assertEquals(out.exitCode, 0, sink.text());
  return sink.text("stdout");
}

/** How many TCP connections an sshd has accepted so far (its VERBOSE log). */
async function connections(sshd: Sshd): Promise<number> {
  const log = await Deno.readTextFile(sshd.logFile);
  return log.split("\n").filter((line) => line.startsWith("Connection from ")).length;
}

/** A jump spec for `sshd`, as ProxyJump takes it. */
function hop(sshd: Sshd): string {
  return `${sshd.user}@${sshd.host}:${sshd.port}`;
}

// ---- options ssh cannot use ----------------------------------------------------

sshTest(
  "18.2 an identityFile that does not exist is a ConfigError naming it, before any connection",
  async () => {
    const before = await connections(target!);
    const missing = `${scratch}/no-such-key`;
    const error = assertThrows(
      () => new SshExec(options({ identityFile: missing }), CAPS),
      ConfigError,
    );
    assertEquals(error.key, "identityFile");
    assertStringIncludes(error.message, missing);
    assertStringIncludes(error.message, "no such file");
    assertEquals(await connections(target!), before, "nothing reached sshd");
  },
);

sshTest(
  "18.2 Port=abc in sshOptions is a ConfigError naming the entry, before any connection",
  async () => {
    const before = await connections(target!);
    await using exec = new SshExec(
      options({ port: undefined, sshOptions: ["ConnectTimeout=5", "Port=abc"] }),
      CAPS,
    );
    const error = await assertRejects(() => echo(exec), ConfigError);
    assertEquals(error.key, "sshOptions[1]");
    assertStringIncludes(error.message, "Bad port 'abc'");
    assertEquals(await connections(target!), before, "nothing reached sshd");
  },
);

sshTest("18.2 Include in sshOptions is a ConfigError that points to configFile", () => {
  for (const include of ["Include=", `Include=${scratch}/x.conf`]) {
    const error = assertThrows(
      () => new SshExec(options({ sshOptions: [include] }), CAPS),
      ConfigError,
    );
    assertEquals(error.key, "sshOptions[0]");
    assertStringIncludes(error.message, "configFile");
  }
  return Promise.resolve();
});

sshTest("18.2 ssh's own words are quoted once: no 'ssh: ssh:'", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const closed = (listener.addr as Deno.NetAddr).port;
  listener.close();
  await using exec = new SshExec(options({ port: closed }), CAPS);
  const error = await assertRejects(() => echo(exec), TransportError);
  assertEquals(error.kind, "unreachable");
  assertStringIncludes(error.message, "connect to host 127.0.0.1");
  assertFalse(error.message.includes("ssh: ssh:"), error.message);
});

sshTest(
  "18.2 an ssh client without -G (OpenSSH before 6.8) still connects, with ssh's defaults",
  async () => {
    const old = `${scratch}/old-ssh`;
    await Deno.writeTextFile(
      old,
      `#!/bin/sh\ncase "$1" in -G) echo "ssh: illegal option -- G" >&2; exit 255;; esac\n` +
        `exec /usr/bin/ssh "$@"\n`,
    );
    await Deno.chmod(old, 0o755);
    await using exec = new SshExec(options({ sshProgram: old }), CAPS);
    assertEquals(await echo(exec, "old client"), "old client");
  },
);

// ---- configFile (ssh -F) -------------------------------------------------------

sshTest("18.2 configFile: a Host alias of the given ssh config file reaches the host", async () => {
  const config = `${scratch}/alias.conf`;
  await Deno.writeTextFile(
    config,
    [
      "Host ops-exec-alias",
      `  HostName ${target!.host}`,
      `  Port ${target!.port}`,
      `  User ${target!.user}`,
      `  IdentityFile ${target!.clientKey}`,
      "  IdentitiesOnly yes",
      `  UserKnownHostsFile ${target!.knownHosts}`,
      "",
    ].join("\n"),
  );
  await using exec = new SshExec({ host: "ops-exec-alias", configFile: config }, CAPS);
  assertEquals(await echo(exec, "via alias"), "via alias");
  const facts = await exec.observe();
  assert(facts.hostname.length > 0);
});

sshTest("18.2 configFile that does not exist is a ConfigError naming it", () => {
  const missing = `${scratch}/no-such.conf`;
  const error = assertThrows(
    () => new SshExec(options({ configFile: missing }), CAPS),
    ConfigError,
  );
  assertEquals(error.key, "configFile");
  assertStringIncludes(error.message, missing);
  return Promise.resolve();
});

sshTest("18.2 configFile with a line ssh rejects is a ConfigError on configFile", async () => {
  const config = `${scratch}/broken.conf`;
  await Deno.writeTextFile(config, "Host *\n  Frobnicate yes\n");
  await using exec = new SshExec(options({ configFile: config }), CAPS);
  const error = await assertRejects(() => echo(exec), ConfigError);
  assertEquals(error.key, "configFile");
  assertStringIncludes(error.message, "frobnicate");
});

sshTest("18.2 an unknown host names the known_hosts file the ssh config in use sets", async () => {
  const empty = `${scratch}/config_known_hosts`;
  await Deno.writeTextFile(empty, "");
  const config = `${scratch}/known.conf`;
  await Deno.writeTextFile(
    config,
    `Host *\n  UserKnownHostsFile ${empty}\n  GlobalKnownHostsFile /dev/null\n`,
  );
  await using exec = new SshExec(
    options({ knownHostsFile: undefined, configFile: config }),
    CAPS,
  );
  const error = await assertRejects(() => echo(exec), TransportError);
  assertEquals(error.kind, "host_key_unknown");
  assertStringIncludes(error.message, empty);
  assertFalse(error.message.includes("~/.ssh/known_hosts"), error.message);
});

// ---- ProxyJump -------------------------------------------------------------------

sshTest(
  "18.2 ProxyJump through a second sshd uses the executor's own key and known_hosts",
  async () => {
    // A key and a known_hosts file at paths with spaces and ssh's % tokens:
    // they must survive the hop's command line.
    const odd = `${scratch}/a dir %h %%`;
    await Deno.mkdir(odd, { recursive: true });
    const key = `${odd}/id key`;
    await Deno.copyFile(target!.clientKey, key);
    await Deno.chmod(key, 0o600);
    const known = `${odd}/known hosts`;
    await Deno.copyFile(bothKnown, known);
    const hops = await jump!.authenticatedConnections();
    const direct = await target!.authenticatedConnections();
    await using exec = new SshExec(
      options({
        identityFile: key,
        knownHostsFile: known,
        sshOptions: [`ProxyJump=${hop(jump!)}`],
      }),
      CAPS,
    );
    assertEquals(await echo(exec, "through the jump"), "through the jump");
    assertEquals(await jump!.authenticatedConnections(), hops + 1, "the hop authenticated once");
    assertEquals(await target!.authenticatedConnections(), direct + 1);
  },
);

sshTest("18.2 ProxyJump with two hops (the jump sshd twice) nests the hops' commands", async () => {
  const hops = await jump!.authenticatedConnections();
  await using exec = new SshExec(
    options({
      knownHostsFile: bothKnown,
      sshOptions: [`ProxyJump=${hop(jump!)},${hop(jump!)}`],
    }),
    CAPS,
  );
  assertEquals(await echo(exec, "two hops"), "two hops");
  assertEquals(await jump!.authenticatedConnections(), hops + 2);
});

sshTest(
  "18.2 ProxyJump set by the config file gets the executor's key and known_hosts too",
  async () => {
    const config = `${scratch}/jump.conf`;
    await Deno.writeTextFile(
      config,
      [
        "Host ops-exec-behind-jump",
        `  HostName ${target!.host}`,
        `  Port ${target!.port}`,
        `  ProxyJump ${hop(jump!)}`,
        "",
      ].join("\n"),
    );
    await using exec = new SshExec(
      {
        host: "ops-exec-behind-jump",
        user: target!.user,
        identityFile: target!.clientKey,
        knownHostsFile: bothKnown,
        configFile: config,
      },
      CAPS,
    );
    assertEquals(await echo(exec, "config jump"), "config jump");
  },
);

sshTest(
  "18.2 a jump host whose key is not known: host_key_unknown naming the jump host, its words in .detail",
  async () => {
    // Knows the target, not the jump host.
    await using exec = new SshExec(
      options({ sshOptions: [`ProxyJump=${hop(jump!)}`, "GlobalKnownHostsFile=/dev/null"] }),
      CAPS,
    );
    const error = await assertRejects(() => echo(exec), TransportError);
    assertEquals(error.kind, "host_key_unknown", error.message);
    // ssh -G writes the hop as opsexec@[127.0.0.1]:PORT.
    assertStringIncludes(
      error.message,
      `through the jump host ${jump!.user}@[${jump!.host}]:${jump!.port}: the jump host is not in ${
        target!.knownHosts
      }`,
    );
    assertStringIncludes(error.detail ?? "", `[${jump!.host}]:${jump!.port}`);
  },
);

sshTest("18.2 a jump host that refuses the key: auth_refused naming the jump host", async () => {
  await using exec = new SshExec(
    options({
      knownHostsFile: bothKnown,
      sshOptions: [`ProxyJump=nobody-here@${jump!.host}:${jump!.port}`],
    }),
    CAPS,
  );
  const error = await assertRejects(() => echo(exec), TransportError);
  assertEquals(error.kind, "auth_refused", error.message);
  assertStringIncludes(
    error.message,
    `through the jump host nobody-here@[${jump!.host}]:${jump!.port}: the jump host refused`,
  );
});

Deno.test({
  name: "teardown: the sshds",
  ignore: skip !== undefined,
  fn: async () => {
    await target?.stop();
    await jump?.stop();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  },
});
