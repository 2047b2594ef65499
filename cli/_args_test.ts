import { assertEquals, assertThrows } from "@deps/assert";
import { parseDuration, parseVerb, UsageError } from "./_args.ts";

Deno.test("args: run splits targets from the command at --; options after -- are the command's", () => {
  const args = parseVerb(["run", "web-1", "-a", "x.y", "prod", "--", "ls", "-la", "--json"]);
  assertEquals(args.positionals, ["web-1", "prod"]);
  assertEquals(args.rest, ["ls", "-la", "--json"]);
  assertEquals(args.values.json, undefined);
  assertEquals(args.values.action, "x.y");
  assertEquals(parseVerb(["sh", "local", "-a", "x.y", "echo"]).rest, null);
  assertEquals(parseVerb(["sh", "local", "--allow", "a.b", "--allow", "c.*", "x"]).values.allow, [
    "a.b",
    "c.*",
  ]);
});

Deno.test("args: unknown verbs and options are usage errors naming them", () => {
  assertThrows(() => parseVerb(["runn"]), UsageError, 'did you mean "run"');
  assertThrows(() => parseVerb(["run", "--nope"]), UsageError, "'--nope'");
  assertThrows(() => parseVerb(["hosts", "--allow", "x"]), UsageError, "'--allow'");
  assertThrows(() => parseVerb(["run", "local", "--action"]), UsageError, "--action");
});

Deno.test("args: durations", () => {
  assertEquals(parseDuration("run", "timeout", "500ms"), 500);
  assertEquals(parseDuration("run", "timeout", "30s"), 30_000);
  assertEquals(parseDuration("run", "timeout", "1.5m"), 90_000);
  assertEquals(parseDuration("run", "timeout", "2h"), 7_200_000);
  assertEquals(parseDuration("run", "timeout", "10"), 10_000);
  for (const bad of ["", "soon", "-1s", "1d", "0", "1 s s"]) {
    assertThrows(() => parseDuration("run", "timeout", bad), UsageError);
  }
});
