// The per-test time limit of tests/_time_limit.ts: a hanging body fails by
// the test's name within its limit; a body that ends in time is untouched.

import { assert, assertEquals, assertRejects, assertStringIncludes } from "@deps/assert";
import { timeLimit, TimeLimitExceeded } from "./_time_limit.ts";

const context = (name: string) => ({ name }) as Deno.TestContext;

Deno.test("a body that hangs fails with the test's name once its limit has passed", async () => {
  let signal: AbortSignal | undefined;
  const started = performance.now();
  const error = await assertRejects(
    () =>
      timeLimit(200, (_t, s) => {
        signal = s;
        return new Promise<void>(() => {});
      })(context("hangs forever")),
    TimeLimitExceeded,
  );
  assertStringIncludes(error.message, '"hangs forever"');
  assertStringIncludes(error.message, "0.2 s");
  assert(performance.now() - started >= 190, "not before the limit");
  assert(signal?.aborted, "the body's signal fires at the limit");
  assertEquals(signal?.reason, error);
});

Deno.test("a body that ends in time passes, and its own failure is its own", async () => {
  let ran = false;
  await timeLimit(5_000, async () => {
    await new Promise((r) => setTimeout(r, 10));
    ran = true;
  })(context("quick"));
  assert(ran);
  await assertRejects(
    () => timeLimit(5_000, () => Promise.reject(new Error("its own")))(context("fails")),
    Error,
    "its own",
  );
});
