import { assertEquals, assertStringIncludes } from "@deps/assert";
import { jumpProxyCommand, parseJumps } from "./_ssh_config.ts";
import type { SshTarget } from "./_ssh_args.ts";

Deno.test("parseJumps reads ProxyJump's hop forms, first hop first", () => {
  assertEquals(parseJumps("bastion"), [{ spec: "bastion", host: "bastion" }]);
  assertEquals(parseJumps("ops@a.example:2222,ssh://b@[fd00::1]:22,[::1]"), [
    { spec: "ops@a.example:2222", user: "ops", host: "a.example", port: 2222 },
    { spec: "ssh://b@[fd00::1]:22", user: "b", host: "fd00::1", port: 22 },
    { spec: "[::1]", host: "::1" },
  ]);
});

Deno.test("jumpProxyCommand nests hops and doubles % once per level", () => {
  const target: SshTarget = {
    host: "web-1",
    identityFile: "/keys/a b/id_%h",
    sshOptions: ["Port=2200", "StrictHostKeyChecking=accept-new"],
    persistSeconds: 60,
  };
  const one = jumpProxyCommand("/usr/bin/ssh", target, parseJumps("j1"), "/tmp/oe-x");
  // The hop gets the key (configPath's %% for ssh, doubled for the ProxyCommand), the
  // caller's host-key policy, never the target's port.
  assertStringIncludes(one, `'IdentityFile="/keys/a b/id_%%%%h"'`);
  assertStringIncludes(one, "StrictHostKeyChecking=accept-new");
  assertEquals(one.includes("Port=2200"), false);
  assertEquals(one.endsWith(` -W "[%h]:%p" -- j1`), true);
  const two = jumpProxyCommand("/usr/bin/ssh", target, parseJumps("j1,u@j2:2"), "/tmp/oe-x");
  // The first hop's command is a word of the second's: its tokens are escaped one level more.
  assertStringIncludes(two, `-W "[%%h]:%%p" -- j1`);
  assertStringIncludes(two, "-E /tmp/oe-x/hop-2.log");
  assertEquals(two.endsWith(`-l u -p 2 -W "[%h]:%p" -- j2`), true);
});
