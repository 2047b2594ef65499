// A time limit of a test's own. Deno's test runner has none: a regression that
// makes a test hang (a backpressure bug that never releases a stalled step, a
// kill that never comes) would hold the whole run for as long as it hangs.
// Wrapped in `timeLimit`, the test fails by its own name once its limit has
// passed, and the run goes on.

/** A test body that may stop what it started when its limit is hit. */
export type LimitedTestFn = (
  t: Deno.TestContext,
  signal: AbortSignal,
) => void | Promise<void>;

/** The error a test fails with when it runs past its limit. */
export class TimeLimitExceeded extends Error {
  /** @param name The test's name. @param limitMs Its limit. */
  constructor(name: string, limitMs: number) {
    super(
      `test "${name}" did not finish within its time limit of ${limitMs / 1000} s ` +
        `(tests/_time_limit.ts): a regression made it hang, or the machine is badly overloaded`,
    );
    this.name = "TimeLimitExceeded";
  }
}

/**
 * Wraps a test body so that it fails after `limitMs` instead of hanging the
 * run. The body gets an `AbortSignal` that fires at the limit, so it can
 * kill what it started; what it leaves running is abandoned (Deno's
 * sanitizers then report it, in the same failed test).
 *
 * @example
 * ```ts
 * import { timeLimit } from "./_time_limit.ts";
 *
 * Deno.test("a slow test", timeLimit(60_000, async () => {
 *   await new Promise((r) => setTimeout(r, 10));
 * }));
 * ```
 *
 * @param limitMs How long the body may run.
 * @param fn The test body.
 * @returns A test function for `Deno.test`.
 */
export function timeLimit(
  limitMs: number,
  fn: LimitedTestFn,
): (t: Deno.TestContext) => Promise<void> {
  return async (t) => {
    const abort = new AbortController();
    let timer: ReturnType<typeof setTimeout> | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const error = new TimeLimitExceeded(t.name, limitMs);
        abort.abort(error);
        reject(error);
      }, limitMs);
    });
    const body = Promise.resolve().then(() => fn(t, abort.signal));
    // Once the limit has failed the test, the body's own later failure must
    // not surface as an uncaught error that fails the whole module.
    body.catch(() => {});
    try {
      await Promise.race([body, limit]);
    } finally {
      clearTimeout(timer);
    }
  };
}
