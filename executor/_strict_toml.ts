// The one strict TOML reader behind every file a person writes for ops-exec
// (the agent's config.toml, the CLI's hosts.toml): every unknown key, every
// value of the wrong type or out of range is a ConfigError naming its key
// path (`agent.max_concurrent`, `grant[1].allow[0]`, `hosts.web-1.port`).

import { parse as parseToml } from "npm:smol-toml@^1.3.4";
import { ConfigError } from "./errors.ts";
import { printable, typeName } from "./_describe.ts";

/**
 * Parses TOML text into plain values: integers become numbers (a TOML float
 * where an integer is expected stays recognisable as a float), tables plain
 * objects.
 *
 * @throws {ConfigError} When the text is not TOML, or an integer is out of range.
 */
export function parseStrictToml(text: string, source: string): unknown {
  let value: unknown;
  try {
    // Integers as bigint, so that a TOML float (`16.0`) is not taken for one.
    value = parseToml(text, { integersAsBigInt: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    throw new ConfigError("", `${source} is not valid TOML: ${message}`, { cause: error });
  }
  return fromToml(value, "");
}

/** A TOML float where the config expects something else; kept so the error can say "a float". */
class TomlFloat {
  constructor(readonly value: number) {}
}

/** TOML integers (bigint) become numbers; floats become TomlFloat. */
function fromToml(value: unknown, key: string): unknown {
  if (typeof value === "bigint") {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < BigInt(Number.MIN_SAFE_INTEGER)) {
      throw new ConfigError(key, `${value} is out of range`);
    }
    return Number(value);
  }
  if (typeof value === "number") return new TomlFloat(value);
  if (Array.isArray(value)) return value.map((item, i) => fromToml(item, `${key}[${i}]`));
  if (isTable(value)) {
    const table: Record<string, unknown> = {};
    for (const [name, item] of Object.entries(value)) {
      table[name] = fromToml(item, key ? `${key}.${name}` : name);
    }
    return table;
  }
  return value;
}

/** A type description for messages, that knows TOML floats. */
export function describe(value: unknown): string {
  return value instanceof TomlFloat ? `a float (${value.value})` : typeName(value);
}

/**
 * `value` as a table whose keys are all in `known`.
 *
 * @throws {ConfigError} Naming `key` when it is not a table, or the unknown key (with a
 *   "did you mean" for a near miss).
 */
export function table(
  value: unknown,
  key: string,
  known: readonly string[],
): Record<string, unknown> {
  if (!isTable(value)) {
    throw new ConfigError(key || "(root)", `must be a table, got ${describe(value)}`);
  }
  for (const name of Object.keys(value)) {
    if (!known.includes(name)) {
      const path = key ? `${key}.${printable(name)}` : printable(name);
      const hint = closest(name, known);
      throw new ConfigError(
        path,
        `unknown key${hint ? ` (did you mean "${hint}"?)` : ""}; known keys here: ${
          known.join(", ")
        }`,
      );
    }
  }
  return value;
}

/** Whether `value` is a plain table (an object that is not an array). */
export function isTable(value: unknown): value is Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

/** `t[name]`, which must be present. */
export function required(t: Record<string, unknown>, name: string, parent: string): unknown {
  const value = t[name];
  if (value === undefined) {
    throw new ConfigError(parent ? `${parent}.${name}` : name, "is required");
  }
  return value;
}

/** A string without NUL bytes. */
export function string(value: unknown, key: string): string {
  if (typeof value !== "string") {
    throw new ConfigError(key, `must be a string, got ${describe(value)}`);
  }
  if (value.includes("\0")) throw new ConfigError(key, "contains a NUL byte");
  return value;
}

/** A string that is not blank. */
export function nonEmpty(value: unknown, key: string): string {
  const text = string(value, key);
  if (text.trim() === "") throw new ConfigError(key, "must not be empty");
  return text;
}

/** An absolute path. */
export function absolutePath(value: unknown, key: string): string {
  const text = string(value, key);
  if (!text.startsWith("/")) {
    throw new ConfigError(key, `must be an absolute path, got "${printable(text)}"`);
  }
  return text;
}

/** An integer from `min` to `max`, or `undefined` when absent. */
export function integer(
  value: unknown,
  key: string,
  min: number,
  max: number,
): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new ConfigError(key, `must be an integer, got ${describe(value)}`);
  }
  if (value < min || value > max) {
    throw new ConfigError(key, `must be between ${min} and ${max}, got ${value}`);
  }
  return value;
}

/** The known key closest to a misspelt one, if it is close enough to be a typo. */
export function closest(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = distance(name, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function distance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let previous = row[0];
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const saved = row[j];
      row[j] = Math.min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] === b[j - 1] ? 0 : 1));
      previous = saved;
    }
  }
  return row[b.length];
}
