// Issue 18.5: `deno task demo` shows the library's real messages (the
// refusals are the errors' own words, not text written by hand) and reads as
// a person's output: no raw audit JSON, no line a terminal must wrap thrice.

import { assert, assertEquals, assertStringIncludes } from "@deps/assert";
import { missing, RSYNC } from "./_prereq.ts";

const REPO = new URL("../", import.meta.url).pathname;

Deno.test("18.5 the demo prints the errors' own messages and no raw audit line", async () => {
  if (missing([RSYNC !== null, "rsync (the demo pushes through the agent)"])) return;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", "--quiet", "examples/demo.ts"],
    cwd: REPO,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assertEquals(out.code, 0, text + new TextDecoder().decode(out.stderr));
  // The caller's refusal and the agent's, as CapabilityDenied words them.
  assertStringIncludes(
    text,
    '-> refused (caller): CapabilityDenied: action "release.publish" on host local is not ' +
      "granted by the caller's capability set",
  );
  assertStringIncludes(
    text,
    '-> refused (agent): CapabilityDenied: action "release.publish" on host agent is not ' +
      "granted by the agent (host ceiling or grants): granted to this caller but above this " +
      "host's ceiling",
  );
  assertStringIncludes(text, "[local stderr] 1 warning");
  for (const line of text.split("\n")) {
    assert(!line.trim().startsWith("{"), `a raw JSON line: ${line}`);
    assert(line.length <= 200, `${line.length} characters: ${line}`);
  }
});
