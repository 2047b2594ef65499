// The assertions the tests use, with the names and signatures of @std/assert,
// built on node:assert/strict (JSR is unreachable here). Moving to
// jsr:@std/assert is one line in deno.json's import map.
import nodeAssert from "node:assert/strict";

// deno-lint-ignore no-explicit-any
type ErrorClass<E extends Error = Error> = abstract new (...args: any[]) => E;

/** Asserts that `expr` is truthy. */
export function assert(expr: unknown, msg?: string): asserts expr {
  nodeAssert.ok(expr, msg);
}

/** Asserts that `expr` is falsy. */
export function assertFalse(expr: unknown, msg?: string): void {
  nodeAssert.ok(!expr, msg ?? `expected a falsy value, got ${String(expr)}`);
}

/** Asserts deep equality. */
export function assertEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.deepStrictEqual(actual, expected, msg);
}

/** Asserts deep inequality. */
export function assertNotEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.notDeepStrictEqual(actual, expected, msg);
}

/** Asserts `Object.is` equality. */
export function assertStrictEquals<T>(actual: T, expected: T, msg?: string): void {
  nodeAssert.strictEqual(actual, expected, msg);
}

/** Asserts that `value` is neither null nor undefined. */
export function assertExists<T>(value: T, msg?: string): asserts value is NonNullable<T> {
  nodeAssert.ok(value !== null && value !== undefined, msg ?? "expected a value");
}

/** Asserts that `actual` matches `pattern`. */
export function assertMatch(actual: string, pattern: RegExp, msg?: string): void {
  nodeAssert.match(actual, pattern, msg);
}

/** Asserts that `actual` includes `expected`. */
export function assertStringIncludes(actual: string, expected: string, msg?: string): void {
  nodeAssert.ok(
    actual.includes(expected),
    msg ??
      `expected ${JSON.stringify(actual.slice(0, 500))} to include ${JSON.stringify(expected)}`,
  );
}

/** Asserts `actual > expected`. */
export function assertGreater(actual: number, expected: number, msg?: string): void {
  nodeAssert.ok(actual > expected, msg ?? `expected ${actual} > ${expected}`);
}

/** Asserts `actual < expected`. */
export function assertLess(actual: number, expected: number, msg?: string): void {
  nodeAssert.ok(actual < expected, msg ?? `expected ${actual} < ${expected}`);
}

/** Asserts `actual <= expected`. */
export function assertLessOrEqual(actual: number, expected: number, msg?: string): void {
  nodeAssert.ok(actual <= expected, msg ?? `expected ${actual} <= ${expected}`);
}

/** Asserts that `value` is an instance of `klass`. */
export function assertInstanceOf<E>(
  value: unknown,
  // deno-lint-ignore no-explicit-any
  klass: abstract new (...args: any[]) => E,
  msg?: string,
): asserts value is E {
  nodeAssert.ok(
    value instanceof klass,
    msg ?? `expected an instance of ${klass.name}, got ${String(value)}`,
  );
}

/** Fails the test. */
export function fail(msg?: string): never {
  nodeAssert.fail(msg ?? "failed");
}

function checkError<E extends Error>(
  error: unknown,
  klass?: ErrorClass<E>,
  includes?: string,
): E {
  if (klass && !(error instanceof klass)) {
    nodeAssert.fail(
      `expected ${klass.name}, got ${
        error instanceof Error ? `${error.name}: ${error.message}` : String(error)
      }`,
    );
  }
  if (includes !== undefined) {
    const message = error instanceof Error ? error.message : String(error);
    nodeAssert.ok(
      message.includes(includes),
      `expected the message ${JSON.stringify(message)} to include ${JSON.stringify(includes)}`,
    );
  }
  return error as E;
}

/** Asserts that `fn` throws (an instance of `klass`, with `includes` in its message); returns the error. */
export function assertThrows<E extends Error = Error>(
  fn: () => unknown,
  klass?: ErrorClass<E>,
  includes?: string,
): E {
  try {
    fn();
  } catch (error) {
    return checkError(error, klass, includes);
  }
  nodeAssert.fail("expected the function to throw");
}

/** Asserts that `fn` rejects (an instance of `klass`, with `includes` in its message); returns the error. */
export async function assertRejects<E extends Error = Error>(
  fn: () => PromiseLike<unknown>,
  klass?: ErrorClass<E>,
  includes?: string,
): Promise<E> {
  try {
    await fn();
  } catch (error) {
    return checkError(error, klass, includes);
  }
  nodeAssert.fail("expected the promise to reject");
}
