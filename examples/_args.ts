// The examples' command lines: node:util parseArgs, strict, with --help. A
// bad option or a missing value is one line of usage error (exit 2) that
// points at --help, never a stack trace.

import { parseArgs, type ParseArgsOptionsConfig } from "node:util";

/** The option values `parseArgs` returns for `options`. */
export type ExampleValues = Record<string, string | boolean | string[] | undefined>;

/**
 * Reads `Deno.args` against `options`. Prints `usage` and exits 0 on
 * `--help`/`-h`; prints one line to stderr and exits 2 on an unknown
 * option, a missing value or a stray argument.
 */
export function exampleArgs(
  program: string,
  usage: string,
  options: ParseArgsOptionsConfig,
): ExampleValues {
  let values: ExampleValues;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    usageError(program, message.split(". To specify")[0]);
  }
  if (values.help) {
    console.log(usage);
    Deno.exit(0);
  }
  return values as ExampleValues;
}

/** Prints a one-line usage error and exits 2. */
export function usageError(program: string, message: string): never {
  console.error(`${program}: ${message.replace(/\.$/, "")} (${program} --help for usage)`);
  Deno.exit(2);
}
