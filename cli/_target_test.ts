import { assert, assertEquals, assertThrows } from "@deps/assert";
import { CapabilitySet, ConfigError, LocalExec, SshExec } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { agentUrl, isIpAddress, openExecutor, parseUrlTarget, TargetError } from "./_target.ts";

Deno.test("targets: local, ssh:// and agent:// forms", () => {
  assertEquals(parseUrlTarget("local"), { name: "local", transport: "local", groups: [] });
  assertEquals(parseUrlTarget("ssh://web-1"), {
    name: "web-1",
    transport: "ssh",
    ssh: { address: "web-1" },
    groups: [],
  });
  assertEquals(parseUrlTarget("ssh://deploy@10.0.0.5:2222").ssh, {
    address: "10.0.0.5",
    user: "deploy",
    port: 2222,
  });
  assertEquals(parseUrlTarget("ssh://deploy@10.0.0.5:2222").name, "deploy@10.0.0.5:2222");
  assertEquals(parseUrlTarget("ssh://[::1]:22").ssh, { address: "::1", port: 22 });
  assertEquals(parseUrlTarget("agent://100.101.7.12").agent, { url: "http://100.101.7.12:7070" });
  assertEquals(parseUrlTarget("agent://mac-1.tail1.ts.net:8080").agent, {
    url: "http://mac-1.tail1.ts.net:8080",
  });
  assertEquals(parseUrlTarget("agent://[fd7a:115c:a1e0::1]").agent, {
    url: "http://[fd7a:115c:a1e0::1]:7070",
  });
});

Deno.test("targets: hostile and malformed forms are refused, never passed on", () => {
  const bad = [
    "ssh://-oProxyCommand=sh", // a host that ssh would read as an option
    "ssh://-l@host", // a user that would be an option
    "ssh://user@-oProxyCommand=x",
    "ssh://host -oProxyCommand=x", // white space
    "ssh://host\n-oProxyCommand=x", // a newline
    "ssh://host%20-o", // escapes are not decoded into names
    "ssh://u:secret@host", // a password
    "ssh://host/path",
    "ssh://host?x=1",
    "ssh://host#frag",
    "ssh://host:0",
    "ssh://host:65536",
    "ssh://host:22x",
    "ssh://",
    "ssh://@host",
    "ssh://[not-v6]",
    "ssh://[1.2.3.4]",
    "agent://user@host", // the agent identifies by tailnet node, not a user
    "agent://host/v1/run",
    "agent://-host",
    "http://host:7070", // other schemes
    "file:///etc/passwd",
    "local:x",
  ];
  for (const text of bad) {
    let error: unknown;
    try {
      parseUrlTarget(text);
    } catch (e) {
      error = e;
    }
    assert(error instanceof TargetError, `accepted: ${JSON.stringify(text)}`);
  }
});

Deno.test("targets: agentUrl and isIpAddress", () => {
  assertEquals(agentUrl("100.77.1.9"), "http://100.77.1.9:7070");
  assertEquals(agentUrl("fd7a::1", 1), "http://[fd7a::1]:1");
  assertEquals(agentUrl("[fd7a::1]"), "http://[fd7a::1]:7070");
  for (const bad of ["http://x", "a b", "-x", "x/y", "x:1", "[::1"]) {
    assertEquals(agentUrl(bad), null, bad);
  }
  assertEquals(isIpAddress("10.0.0.1"), true);
  assertEquals(isIpAddress("256.0.0.1"), false);
  assertEquals(isIpAddress("::1"), true);
  assertEquals(isIpAddress("host"), false);
});

Deno.test("openExecutor: one function builds every transport; option errors name inventory keys", async () => {
  const caps = CapabilitySet.of("test.*");
  const local = openExecutor({ name: "here", transport: "local", groups: [] }, caps);
  assertEquals([local instanceof LocalExec, local.host, local.capabilities()], [
    true,
    "here",
    caps,
  ]);
  const ssh = openExecutor(parseUrlTarget("ssh://deploy@web-1:2222"), caps);
  assertEquals([ssh instanceof SshExec, ssh.host], [true, "web-1"]);
  const agent = openExecutor(parseUrlTarget("agent://100.1.2.3"), caps);
  assertEquals([agent instanceof AgentRpc, agent.host], [true, "100.1.2.3"]);
  for (const e of [local, ssh, agent]) await e.close();

  const error = assertThrows(
    () =>
      openExecutor(
        {
          name: "web-1",
          transport: "ssh",
          ssh: { address: "web-1", sshOptions: ["ok=1", "ControlMaster=no"] },
          groups: [],
        },
        caps,
        "hosts.web-1",
      ),
    ConfigError,
  );
  assertEquals(error.key, "hosts.web-1.ssh_options[1]");
});
