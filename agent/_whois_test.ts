import {
  assert,
  assertEquals,
  assertFalse,
  assertStringIncludes,
  assertThrows,
} from "@deps/assert";
import { whoisText } from "../tests/_tailscale_standin.ts";
import { selectorMatches } from "./_grants.ts";
import { isLoopback, parseListen, unmapAddress } from "./_net.ts";
import { parseWhois, WhoisFormatError } from "./_whois.ts";

const CAPMAP = "makenot.work/cap/ops-exec";

Deno.test("whois: a person's device", () => {
  const alice = parseWhois(whoisText("user-node"), "100.93.46.75:1234");
  assertEquals(alice.login, "alice@example.com");
  assertEquals(alice.groups, ["group:ops"]);
  assertEquals(alice.tags, []);
  assertEquals(alice.nodeName, "alice-laptop.tail78f774.ts.net");
  assertEquals(alice.nodeShortName, "alice-laptop");
  assertEquals(alice.nodeId, "nSwZHPm4c121CNTRL");
  assertEquals(alice.addresses, ["100.93.46.75", "fd7a:115c:a1e0::9137:2e4b"]);
  assert(selectorMatches("user:alice@example.com", alice));
  assert(selectorMatches("user:Alice@Example.com", alice), "logins compare without case");
  assert(selectorMatches("group:ops", alice));
  assert(selectorMatches("node:alice-laptop", alice));
  assert(selectorMatches("node:alice-laptop.tail78f774.ts.net", alice));
  // Issue 13: a StableID is node-id:, never node:.
  assert(selectorMatches("node-id:nSwZHPm4c121CNTRL", alice));
  assertFalse(selectorMatches("node:nSwZHPm4c121CNTRL", alice));
  assertFalse(selectorMatches("node-id:alice-laptop", alice));
  assert(selectorMatches("*", alice));
  assertFalse(selectorMatches("user:bob@example.com", alice));
  assertFalse(selectorMatches("tag:ops", alice));
});

Deno.test("whois: a tagged node is never a person, Node.Tags first", () => {
  const runner = parseWhois(whoisText("tagged-node"), "100.101.7.12:1");
  assertEquals(runner.login, undefined);
  assertEquals(runner.tags, ["tag:sando"]);
  assertFalse(selectorMatches("user:tagged-devices", runner));
  assert(selectorMatches("tag:sando", runner));
  // Old Headscale: a tagged node that kept its owner's user and groups.
  const legacy = parseWhois(
    whoisText("tagged-node", { loginName: "alice@example.com", groups: ["group:ops"] }),
    "x",
  );
  assertFalse(selectorMatches("user:alice@example.com", legacy));
  assertFalse(selectorMatches("group:ops", legacy));
  assert(selectorMatches("tag:sando", legacy));
  // tagged-devices without tags: still not a person.
  const odd = parseWhois(
    whoisText("user-node", { loginName: "tagged-devices" }),
    "x",
  );
  assertFalse(selectorMatches("user:tagged-devices", odd));
  assertFalse(selectorMatches("group:ops", odd));
});

Deno.test("whois: CapMap grants; bad entries grant nothing and are reported", () => {
  const bob = parseWhois(whoisText("capmap-grant"), "x", CAPMAP);
  assertEquals(bob.capGrants.toJSON(), ["bento.build", "bento.sign", "observe"]);
  assertEquals(bob.capProblems, []);
  assertEquals(
    parseWhois(whoisText("capmap-grant"), "x").capGrants.toJSON(),
    [],
    "no capmap key, no grants",
  );
  const mixed = parseWhois(
    whoisText("capmap-grant", {
      capMap: {
        [CAPMAP]: [{ allow: ["ok.*"] }, { allow: ["Bad"] }, "nope", { allow: ["x"], extra: 1 }],
        "other.example/cap": [{ allow: ["*"] }],
      },
    }),
    "x",
    CAPMAP,
  );
  assertEquals(mixed.capGrants.toJSON(), ["ok.*"]);
  assertEquals(mixed.capProblems.length, 3);
});

Deno.test("whois: numeric IDs are never used; Headscale shapes; mapped addresses", () => {
  const bob = parseWhois(whoisText("capmap-grant"), "x");
  const twin = parseWhois(
    whoisText("capmap-grant", { nodeIdDigits: "30504053928343273", stableId: "nTwin" }),
    "x",
  );
  assertEquals(
    JSON.parse("30504053928343273"),
    JSON.parse("30504053928343272"),
    "the IDs collide as doubles",
  );
  assertEquals(bob.nodeId, "nBento9mac11CNTRL");
  assertEquals(twin.nodeId, "nTwin");
  assertFalse(selectorMatches("node:nBento9mac11CNTRL", twin));
  const carol = parseWhois(whoisText("headscale-node"), "x");
  // Issue 13, acceptance 5: Headscale's StableID "7" and a node a user named "7" never meet.
  assert(selectorMatches("node-id:7", carol));
  assertFalse(selectorMatches("node:7", carol));
  const named7 = parseWhois(
    whoisText("headscale-node", {
      name: "7.ops.internal.",
      computedName: "7",
      stableId: "12",
      addresses: ["100.64.0.12/32"],
    }),
    "y",
  );
  assertFalse(selectorMatches("node-id:7", named7), "a node named 7 is not the node with ID 7");
  assertEquals([carol.login, carol.nodeId, carol.nodeName], [
    "carol",
    "7",
    "carol-desktop.ops.internal",
  ]);
  const mapped = parseWhois(
    whoisText("user-node", {
      addresses: ["::ffff:100.93.46.75/128", "fd7a:115c:a1e0::9137:2e4b/128"],
    }),
    "x",
  );
  assertEquals(mapped.addresses, ["100.93.46.75", "fd7a:115c:a1e0::9137:2e4b"]);
  assertThrows(() => parseWhois("not json", "x"), WhoisFormatError);
  assertThrows(() => parseWhois('{"Node": null, "UserProfile": {}}', "x"), WhoisFormatError);
  assertThrows(
    () => parseWhois('{"Node": {"Tags": "tag:x"}, "UserProfile": {}}', "x"),
    WhoisFormatError,
  );
});

Deno.test("addresses: unmapping, loopback, listen values", () => {
  assertEquals(unmapAddress("::ffff:100.64.0.7"), "100.64.0.7");
  assertEquals(unmapAddress("::FFFF:127.0.0.1"), "127.0.0.1");
  assertEquals(unmapAddress("fd7a:115c:a1e0::7"), "fd7a:115c:a1e0::7");
  assertEquals(unmapAddress("::ffff:999.1.1.1"), "::ffff:999.1.1.1");
  for (
    const yes of [
      "127.0.0.1",
      "127.9.9.9",
      "::1",
      "0:0:0:0:0:0:0:1",
      "::ffff:127.0.0.2",
    ]
  ) {
    assert(isLoopback(yes), yes);
  }
  for (
    const no of ["100.64.0.1", "0.0.0.0", "::", "::ffff:100.64.0.1", "128.0.0.1", "localhost"]
  ) {
    assertFalse(isLoopback(no), no);
  }
  assertEquals(parseListen("[::ffff:127.0.0.1]:0"), { hostname: "::ffff:127.0.0.1", port: 0 });
  assertEquals(typeof parseListen("example.com:80"), "string");
  // Issue 13: a name is not an address, "localhost" included (it may not be loopback).
  for (const name of ["localhost:7070", "LOCALHOST:7070", "localhost.:7070"]) {
    assertStringIncludes(String(parseListen(name)), "127.0.0.1", name);
  }
  assertEquals(typeof parseListen("1.2.3.4"), "string");
  assertEquals(typeof parseListen("[1.2.3.4]:1"), "string");
  assertEquals(typeof parseListen("256.1.1.1:1"), "string");
});

// ---- issue 10: each of the two checks holds on its own ---------------------------------

Deno.test("grants: user: and group: never match a tagged caller, even one that carries a login", () => {
  // What a provider that kept the owner's user on a tagged node would hand over: the
  // grant check must not lean on parseWhois having dropped the login.
  const tagged = { ...parseWhois(whoisText("user-node"), "100.93.46.75:1"), tags: ["tag:ci"] };
  assertEquals(tagged.login, "alice@example.com");
  assertFalse(selectorMatches("user:alice@example.com", tagged));
  assertFalse(selectorMatches("group:ops", tagged));
  assert(selectorMatches("tag:ci", tagged));
});
