// The mutation task's own parts that need no scratch copy: applying a
// mutation (a stale or ambiguous snippet fails loudly), reading which tests
// failed, and that every mutation of the list applies to the code as it is.

import { assertEquals, assertThrows } from "@deps/assert";
import { MUTATIONS } from "./_mutations.ts";
import { applyEdits, failedTests, MUTANT_VARIABLE, StaleMutation } from "./mutants.ts";

Deno.test("applyEdits: each snippet must occur exactly once", () => {
  assertEquals(applyEdits("m", "a b c", [{ find: "b", replace: "B" }]), "a B c");
  assertEquals(
    applyEdits("m", "a b c", [{ find: "a", replace: "x" }, { find: "x b", replace: "y" }]),
    "y c",
  );
  const gone = assertThrows(() => applyEdits("m", "a b c", [{ find: "d", replace: "" }]));
  assertEquals(gone instanceof StaleMutation && gone.id, "m");
  assertThrows(
    () => applyEdits("m", "b b", [{ find: "b", replace: "c" }]),
    StaleMutation,
    "more than once",
  );
  assertThrows(() => applyEdits("m", "a", [{ find: "a", replace: "a" }]), StaleMutation, "nothing");
});

Deno.test("failedTests reads the names of deno test's FAILURES section", () => {
  const output = `
 ERRORS

one => ./a_test.ts:1:6
error: AssertionError

 FAILURES

one => ./a_test.ts:1:6
two: with => arrows => ./tests/b_test.ts:20:6
./tests/c_test.ts (uncaught error)

FAILED | 1 passed | 3 failed (1s)
`;
  assertEquals(failedTests(output), [
    "one",
    "two: with => arrows",
    "./tests/c_test.ts (uncaught error)",
  ]);
  assertEquals(failedTests("ok | 3 passed | 0 failed (1s)"), []);
});

Deno.test({
  name: "every mutation's file and snippets are there (else the task fails: update the list)",
  // In the task's own scratch copies one snippet is replaced on purpose.
  ignore: Deno.env.get(MUTANT_VARIABLE) !== undefined,
  fn: async () => {
    const ids = new Set<string>();
    for (const m of MUTATIONS) {
      assertEquals(ids.has(m.id), false, `two mutations are called ${m.id}`);
      ids.add(m.id);
      const source = await Deno.readTextFile(new URL(`../${m.file}`, import.meta.url));
      applyEdits(m.id, source, m.edits);
      for (const file of m.tests.files) await Deno.stat(new URL(`../${file}`, import.meta.url));
    }
  },
});
