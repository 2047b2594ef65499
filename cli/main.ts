/**
 * The `ops-exec` program: run a capability-gated step on hosts, observe
 * them, and sync files, from a terminal, without writing TypeScript.
 *
 * ```sh
 * ops-exec sh local --allow demo.hello -a demo.hello 'echo hello'
 * ops-exec run prod -a sando.health -c 4 -- /srv/app/health.sh
 * ops-exec push canary ./dist/ /srv/app/releases/1.2.3/
 * ```
 *
 * From a clone: `deno task cli VERB ...` (with the `cli` permission set of
 * deno.json). Installed: see docs/cli.md. `ops-exec --help` lists the verbs,
 * `ops-exec VERB --help` their options and examples; docs/cli.md has the
 * inventory format, the `--json` event shapes and the exit codes.
 *
 * @module
 */
import meta from "../deno.json" with { type: "json" };
import { ConfigError, StepError } from "../mod.ts";
import { HELP, mainHelp, parseVerb, UsageError, type VerbArgs } from "./_args.ts";
import {
  defaultInventoryPath,
  type Inventory,
  loadInventory,
  resolveTargets,
} from "./_inventory.ts";
import { EXIT, Interrupted, notCapable, oneLine } from "./_outcome.ts";
import { Output } from "./_output.ts";
import { TargetError } from "./_target.ts";
import { allowFlag, buildStep, DEFAULT_CONCURRENCY, runVerb } from "./_verbs.ts";

const VERSION: string = meta.version;

async function main(args: string[]): Promise<number> {
  const first = args[0];
  if (first === undefined) {
    console.error(`${mainHelp(VERSION)}\n\nops-exec: no verb given`);
    return EXIT.usage;
  }
  if (first === "-h" || first === "--help" || first === "help") {
    const verb = args[1] as keyof typeof HELP | undefined;
    console.log(verb && verb in HELP ? HELP[verb] : mainHelp(VERSION));
    return EXIT.ok;
  }
  if (first === "-V" || first === "--version") {
    console.log(`ops-exec ${VERSION}`);
    return EXIT.ok;
  }
  const json = args.includes("--json");
  let parsed: VerbArgs | null = null;
  try {
    parsed = parseVerb(args);
    if (parsed.values.help) {
      console.log(HELP[parsed.verb]);
      return EXIT.ok;
    }
    return await invoke(parsed);
  } catch (error) {
    return reportFatal(error, parsed?.verb ?? null, json);
  }
}

async function invoke(args: VerbArgs): Promise<number> {
  const { verb, values, positionals } = args;
  const concurrency = values.concurrency;
  if (
    concurrency !== undefined &&
    !(/^\d+$/.test(concurrency as string) && Number(concurrency) >= 1 &&
      Number(concurrency) <= 1024)
  ) {
    throw new UsageError(
      verb,
      `--concurrency "${concurrency}" must be a number from 1 to 1024 (default ${DEFAULT_CONCURRENCY})`,
    );
  }
  const allow = values.allow === undefined ? undefined : allowFlag(verb, values.allow as string[]);
  // The step first: a usage error in it is reported before any target is looked up.
  const step = verb === "run" || verb === "sh" ? buildStep(args) : undefined;
  const targets = verb === "sh" && args.rest === null ? positionals.slice(0, -1) : positionals;
  const targetArgs = verb === "push" || verb === "pull" ? targets.slice(0, 1) : targets;
  if (targetArgs.length === 0 && verb !== "hosts") {
    throw new UsageError(
      verb,
      "name at least one TARGET (local, ssh://host, agent://host, or an inventory name)",
    );
  }
  const given = values.inventory as string | undefined;
  const where = given ?? defaultInventoryPath();
  const inventory: Inventory | null = where === null
    ? null
    : await loadInventory(where, given === undefined);
  const hosts = resolveTargets(targetArgs, inventory, where);
  const output = new Output({ json: values.json === true, hosts: hosts.map((h) => h.name) });

  const stop = new AbortController();
  let received: "SIGINT" | "SIGTERM" | null = null;
  const listeners = (["SIGINT", "SIGTERM"] as const).map((signal) => {
    const listener = () => {
      if (received !== null) return;
      received = signal;
      output.note(
        `${
          signal === "SIGINT" ? "interrupted" : "terminated"
        }: cancelling every running step (their process groups get SIGTERM, then SIGKILL after the grace)`,
      );
      stop.abort(new Interrupted(signal));
    };
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  try {
    const code = await runVerb({
      args,
      output,
      hosts,
      inventory,
      signal: stop.signal,
      step,
      allow,
    });
    if (received === "SIGINT") return EXIT.interrupted;
    if (received === "SIGTERM") return EXIT.terminated;
    return code;
  } finally {
    for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  }
}

/** An error before (or instead of) any host's result: one line, the code for its kind. */
function reportFatal(error: unknown, verb: string | null, json: boolean): number {
  let code: number = EXIT.error;
  let kind = "error";
  if (error instanceof UsageError || error instanceof TargetError || error instanceof StepError) {
    code = EXIT.usage;
    kind = "usage";
  } else if (error instanceof ConfigError) {
    code = EXIT.config;
    kind = "config";
  } else if (error instanceof Deno.errors.NotCapable) {
    code = EXIT.config;
    kind = "config";
  }
  const where = error instanceof UsageError ? error.verb ?? verb : verb;
  const message = error instanceof Deno.errors.NotCapable
    ? notCapable(oneLine(error))
    : oneLine(error);
  if (json) {
    const line = JSON.stringify({
      type: "error",
      status: kind,
      code: kind === "usage" ? "usage" : error instanceof ConfigError ? error.code : "error",
      ...(error instanceof ConfigError && error.key ? { key: error.key } : {}),
      message,
    });
    console.log(line);
  }
  const hint = kind === "usage"
    ? `\n(ops-exec ${where ?? ""}${where ? " " : ""}--help for usage)`
    : "";
  console.error(`ops-exec${where ? ` ${where}` : ""}: ${message}${hint}`);
  if (kind === "error" && !(error instanceof Error && "code" in error)) {
    // Not one of ours: keep the stack for the bug report.
    console.error(error instanceof Error ? error.stack : error);
  }
  return code;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
