import { assert, assertEquals, assertStringIncludes, assertThrows } from "@deps/assert";
import { ConfigError } from "../mod.ts";
import { parseInventory, resolveTargets } from "./_inventory.ts";
import { TargetError } from "./_target.ts";

// SshExec checks that key and known_hosts files exist: give it real ones.
const KEYS = Deno.makeTempDirSync({ prefix: "ops-exec-inventory-" });
Deno.writeTextFileSync(`${KEYS}/deploy`, "");
Deno.writeTextFileSync(`${KEYS}/known_hosts_ops`, "");
globalThis.addEventListener("unload", () => Deno.removeSync(KEYS, { recursive: true }));

const INVENTORY = `
[hosts.web-1]
transport = "ssh"
address = "10.0.0.5"
user = "deploy"
port = 2222
identity_file = "${KEYS}/deploy"
known_hosts_file = "${KEYS}/known_hosts_ops"
ssh_options = ["ProxyJump=bastion"]
remote_supervisor = "sh"
allow = ["sando.health"]

[hosts.web-2]
transport = "ssh"
address = "web-2.example.com"

[hosts.mac-1]
transport = "agent"
address = "100.77.1.9"
local_address = "100.64.0.2"
allow = ["bento.*"]

[hosts.local]
transport = "local"
allow = ["demo.*"]

[groups.canary]
hosts = ["web-1"]
allow = ["sando.promote"]

[groups.prod]
hosts = ["canary", "web-2", "web-1"]
allow = ["observe"]
`;

Deno.test("inventory: hosts and groups, each host's grant its own and its groups'", () => {
  const inv = parseInventory(INVENTORY);
  const web1 = inv.hosts.get("web-1")!;
  assertEquals(web1.ssh, {
    address: "10.0.0.5",
    user: "deploy",
    port: 2222,
    identityFile: `${KEYS}/deploy`,
    knownHostsFile: `${KEYS}/known_hosts_ops`,
    sshOptions: ["ProxyJump=bastion"],
    remoteSupervisor: "sh",
  });
  // Nested: web-1 is in prod through canary.
  assertEquals(web1.groups, ["canary", "prod"]);
  assertEquals(web1.allow!.toJSON(), ["observe", "sando.health", "sando.promote"]);
  assertEquals(inv.hosts.get("web-2")!.allow!.toJSON(), ["observe"]);
  assertEquals(inv.hosts.get("mac-1")!.agent, {
    url: "http://100.77.1.9:7070",
    localAddress: "100.64.0.2",
  });
  assertEquals(inv.groups.get("prod")!.hosts, ["web-1", "web-2"]);
  assertEquals(inv.hosts.get("local")!.allow!.toJSON(), ["demo.*"]);
});

Deno.test("inventory: resolveTargets expands groups, keeps order, each host once", () => {
  const inv = parseInventory(INVENTORY);
  const names = (targets: string[]) => resolveTargets(targets, inv, "x").map((h) => h.name);
  assertEquals(names(["prod", "mac-1", "web-1"]), ["web-1", "web-2", "mac-1"]);
  // "local" with a [hosts.local] is that host, with its grant.
  assertEquals(resolveTargets(["local"], inv, "x")[0].allow!.toJSON(), ["demo.*"]);
  assertEquals(names(["local", "ssh://web-9"]), ["local", "web-9"]);
  const unknown = assertThrows(() => resolveTargets(["web-3"], inv, "x"), TargetError);
  assertStringIncludes(unknown.message, 'did you mean "web-1"');
  const none = assertThrows(
    () => resolveTargets(["web-1"], null, "/home/me/hosts.toml"),
    TargetError,
  );
  assertStringIncludes(none.message, "none at /home/me/hosts.toml");
});

Deno.test("inventory: every bad key or value is a ConfigError naming its key path", () => {
  const cases: [string, string, RegExp][] = [
    ["x = 1", "x", /unknown key/],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nidentityFile = "k"',
      "hosts.a.identityFile",
      /did you mean "identity_file"/,
    ],
    ['[hosts.a]\naddress = "a"', "hosts.a.transport", /is required/],
    ['[hosts.a]\ntransport = "ssh"', "hosts.a.address", /is required/],
    ['[hosts.a]\ntransport = "ssh"\naddress = ""', "hosts.a.address", /must not be empty/],
    ['[hosts.a]\ntransport = "ssh"\naddress = "a b"', "hosts.a.address", /white space/],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nuser = "-oProxyCommand=x"',
      "hosts.a.user",
      /must not start with "-"/,
    ],
    ['[hosts.a]\ntransport = "ssh"\naddress = "a"\nuser = ""', "hosts.a.user", /must not be empty/],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nport = "22"',
      "hosts.a.port",
      /must be an integer, got a string/,
    ],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nssh_options = "x=1"',
      "hosts.a.ssh_options",
      /array/,
    ],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nssh_options = ["RequestTTY=yes"]',
      "hosts.a.ssh_options[0]",
      /managed/,
    ],
    [
      '[hosts.a]\ntransport = "ssh"\naddress = "a"\nremote_supervisor = "bash"',
      "hosts.a.remote_supervisor",
      /"auto", "perl", "sh"/,
    ],
    [
      '[hosts.a]\ntransport = "agent"\naddress = "http://x:1"',
      "hosts.a.address",
      /not a host name or IP/,
    ],
    [
      '[hosts.a]\ntransport = "agent"\naddress = "x"\nlocal_address = "eth0"',
      "hosts.a.local_address",
      /IP address/,
    ],
    [
      '[hosts.a]\ntransport = "agent"\naddress = "x"\nidentity_file = "k"',
      "hosts.a.identity_file",
      /unknown key/,
    ],
    ['[hosts.a]\ntransport = "local"\naddress = "x"', "hosts.a.address", /unknown key/],
    ['[hosts.a]\ntransport = "local"\nallow = "x.y"', "hosts.a.allow", /array/],
    [
      '[hosts.a]\ntransport = "local"\nallow = ["sync.push:relative"]',
      "hosts.a.allow[0]",
      /absolute/,
    ],
    ['[hosts."a b"]\ntransport = "local"', "hosts.a b", /not a name/],
    ['[hosts."-a"]\ntransport = "local"', "hosts.-a", /not a name/],
    ['[hosts."ssh://x"]\ntransport = "local"', "hosts.ssh://x", /not a name/],
    ['[hosts.a]\ntransport = "local"\n[groups.a]\nhosts = ["a"]', "groups.a", /already a host/],
    ["[groups.g]\nhosts = []", "groups.g.hosts", /non-empty/],
    ["[groups.g]\nhosts = [1]", "groups.g.hosts[0]", /must be a string/],
    ['[groups.g]\nhosts = ["g"]', "groups.g.hosts[0]", /contains itself \(g -> g\)/],
    ['[groups.g]\nhosts = ["x"]\nmembers = []', "groups.g.members", /unknown key/],
    ["hosts = []", "hosts", /must be a table/],
  ];
  for (const [toml, key, pattern] of cases) {
    let error: unknown;
    try {
      parseInventory(toml);
    } catch (e) {
      error = e;
    }
    assert(error instanceof ConfigError, `accepted: ${toml}`);
    assertEquals(error.key, key, `${toml}: ${error.message}`);
    if (!pattern.test(error.message)) throw new Error(`${toml}: ${error.message} !~ ${pattern}`);
  }
  const syntax = assertThrows(() => parseInventory("[hosts", "inv.toml"), ConfigError);
  assertStringIncludes(syntax.message, "inv.toml is not valid TOML");
});
