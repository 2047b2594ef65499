import fc from "@deps/fast-check";
import { assert, assertEquals, assertFalse, assertThrows } from "@deps/assert";
import { ConfigError } from "../executor/errors.ts";
import { CapabilitySet } from "./mod.ts";

Deno.test("grant grammar: exact, prefix.*, * and path roots", () => {
  const set = CapabilitySet.of("bento.sign", "sando.*", "sync.push:/srv/app");
  assert(set.allows("bento.sign"));
  assertFalse(set.allows("bento.build"));
  assertFalse(set.allows("bento"));
  assert(set.allows("sando.promote"));
  assert(set.allows("sando.promote.canary"));
  assertFalse(set.allows("sando"), "prefix.* does not grant the prefix itself");
  assertFalse(set.allows("sandox.promote"));
  assert(CapabilitySet.of("*").allows("anything.at.all"));
  assert(CapabilitySet.of("*").allows("sync.pull", "/etc"));
  assertFalse(CapabilitySet.none().allows("observe"));
  assert(CapabilitySet.none().isEmpty);
});

Deno.test("path roots compare by whole segments after normalisation", () => {
  const set = CapabilitySet.of("sync.push:/srv/app");
  assert(set.allows("sync.push", "/srv/app"));
  assert(set.allows("sync.push", "/srv/app/"));
  assert(set.allows("sync.push", "/srv/app/x/y"));
  assert(set.allows("sync.push", "/srv/app/x/../y"));
  assert(set.allows("sync.push", "//srv//app/./x"));
  assertFalse(set.allows("sync.push", "/srv/application"));
  assertFalse(set.allows("sync.push", "/srv/app/../etc"));
  assertFalse(set.allows("sync.push", "/srv/app/x/../../etc"));
  assertFalse(set.allows("sync.push", "/srv"));
  assertFalse(set.allows("sync.push", "srv/app/x"), "relative paths are inside nothing");
  assertFalse(set.allows("sync.push", "/srv/app/\0x"));
  assertFalse(set.allows("sync.push"), "a path-limited grant needs a path");
  assertFalse(set.allows("sync.pull", "/srv/app/x"), "the action must match too");
  assert(CapabilitySet.of("sync.push").allows("sync.push"), "an unlimited grant needs no path");
  assert(CapabilitySet.of("sync.*").allows("sync.pull", "/anywhere"));
  assert(CapabilitySet.of("sync.pull:/").allows("sync.pull", "/etc/passwd"));
  assert(CapabilitySet.of("sync.push:/srv/app/").allows("sync.push", "/srv/app/x"));
  assertFalse(CapabilitySet.of("sync.push:/srv/app/../etc").allows("sync.push", "/srv/app/x"));
});

Deno.test("paths are ignored for actions that are not sync actions", () => {
  assert(CapabilitySet.of("observe").allows("observe", "/anything"));
});

Deno.test("malformed grants are ConfigErrors that quote the grant", () => {
  for (
    const bad of [
      "",
      "Bento.sign",
      "bento.",
      "bento.**",
      "*.sign",
      "bento.sign:/x",
      "sync.push:rel",
      "sync.push:",
      "a b",
    ]
  ) {
    const error = assertThrows(() => CapabilitySet.of(bad), ConfigError);
    assertEquals(error.code, "invalid_config");
  }
  assertThrows(() => CapabilitySet.fromJSON("bento.*"), ConfigError, "array");
  const error = assertThrows(
    () => CapabilitySet.fromJSON(["observe", 5], "ceiling.allow"),
    ConfigError,
  );
  assertEquals(error.key, "ceiling.allow[1]");
});

Deno.test("JSON round-trip is canonical: sorted, deduplicated, covered grants dropped", () => {
  const set = CapabilitySet.of(
    "bento.sign",
    "observe",
    "bento.*",
    "bento.*",
    "sync.push:/srv/app/x",
    "sync.push:/srv/app",
  );
  assertEquals(set.toJSON(), ["bento.*", "observe", "sync.push:/srv/app"]);
  assertEquals(CapabilitySet.fromJSON(JSON.parse(JSON.stringify(set))).toJSON(), set.toJSON());
  assertEquals(CapabilitySet.of("*", "observe").toJSON(), ["*"]);
  assertEquals(set.syncRoots(), ["/srv/app"]);
});

Deno.test("intersect keeps the narrower grant", () => {
  const caller = CapabilitySet.of("bento.*", "observe", "sync.push:/srv");
  const ceiling = CapabilitySet.of("bento.build", "sync.push:/srv/app", "sync.pull:/srv");
  assertEquals(caller.intersect(ceiling).toJSON(), ["bento.build", "sync.push:/srv/app"]);
  assertEquals(caller.intersect(CapabilitySet.of("*")).toJSON(), caller.toJSON());
  assert(caller.intersect(CapabilitySet.none()).isEmpty);
  assertEquals(
    CapabilitySet.of("a.*").intersect(CapabilitySet.of("a.b.*")).toJSON(),
    ["a.b.*"],
  );
});

// --- property test ---------------------------------------------------------

const segment = fc.constantFrom("a", "b", "ab", "sync", "push", "pull", "observe");
const actionName = fc.oneof(
  fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => s.join(".")),
  fc.constantFrom("sync.push", "sync.pull", "observe"),
);
const pathSegment = fc.constantFrom(
  "srv",
  "app",
  "application",
  "app.old",
  "x",
  "..",
  ".",
  "",
  "etc",
);
const absolutePath = fc.array(pathSegment, { minLength: 0, maxLength: 5 }).map((s) =>
  `/${s.join("/")}`
);
const grant = fc.oneof(
  actionName,
  actionName.map((a) => `${a}.*`),
  fc.constant("*"),
  fc.tuple(fc.constantFrom("sync.push", "sync.pull"), absolutePath).map(([a, p]) => `${a}:${p}`),
);
const set = fc.array(grant, { maxLength: 5 }).map((grants) => CapabilitySet.of(...grants));
const query = fc.tuple(
  actionName,
  fc.option(fc.oneof(absolutePath, fc.constantFrom("relative/app", "/srv/app\0")), {
    nil: undefined,
  }),
);

Deno.test("property: A∩B allows x  <=>  A allows x and B allows x", () => {
  fc.assert(
    fc.property(set, set, query, (a, b, [action, path]) => {
      const both = a.intersect(b);
      assertEquals(
        both.allows(action, path),
        a.allows(action, path) && b.allows(action, path),
        `${a} ∩ ${b} = ${both} on ${action} ${JSON.stringify(path)}`,
      );
    }),
    { numRuns: 20_000 },
  );
});

Deno.test("property: union allows what either allows; JSON round-trip allows the same", () => {
  fc.assert(
    fc.property(set, set, query, (a, b, [action, path]) => {
      assertEquals(
        a.union(b).allows(action, path),
        a.allows(action, path) || b.allows(action, path),
      );
      const back = CapabilitySet.fromJSON(a.toJSON());
      assertEquals(back.allows(action, path), a.allows(action, path));
    }),
    { numRuns: 10_000 },
  );
});
