// `deno task mutants`: puts each mutation of tools/_mutations.ts into a
// scratch copy of this repository, one at a time, runs the tests it names, and
// reports the mutations no test noticed (survivors). The working tree is never
// touched. See docs/testing.md.
//
//   deno task mutants                  every mutation, one at a time
//   deno task mutants --jobs 2         two scratch copies at once
//   deno task mutants --only a,b       just these mutations
//   deno task mutants --full           run the whole default suite for each (slow)
//   deno task mutants --check          only check that every snippet is still found
//   deno task mutants --list           print the mutations
//
// Exit status: 0 when every mutation was caught; 1 when one survived, could
// not be applied (a stale snippet), did not type-check, or was not run in
// time; 2 for bad arguments; 3 when the tests fail without any mutation.

import { dirname, join } from "node:path";
import { parseArgs } from "node:util";
import { type Edit, type Mutation, MUTATIONS, type TestRun } from "./_mutations.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
/** Set in the environment of the tests the task runs (in a scratch copy). */
export const MUTANT_VARIABLE = "OPS_EXEC_MUTANTS";
/** The default suite, as `deno task test` runs it. */
const FULL_SUITE: TestRun = { files: ["--ignore=tests/hosts/"] };

/** What became of one mutation. */
export type Outcome =
  | { kind: "killed"; by: string[]; ms: number }
  | { kind: "timeout"; ms: number }
  | { kind: "survived"; ms: number; log: string }
  | { kind: "invalid"; why: string; log?: string }
  | { kind: "not run" };

/** A snippet that is not in its file exactly once. */
export class StaleMutation extends Error {
  /** @param id The mutation. @param why What is wrong with its snippet. */
  constructor(readonly id: string, why: string) {
    super(`${id}: ${why}`);
    this.name = "StaleMutation";
  }
}

/**
 * Applies `edits` to `source`, each of whose `find` must occur exactly once
 * (in the text as the earlier edits left it).
 *
 * @throws {StaleMutation} When a snippet is missing or occurs more than once.
 */
export function applyEdits(id: string, source: string, edits: readonly Edit[]): string {
  let text = source;
  for (const [i, edit] of edits.entries()) {
    const first = text.indexOf(edit.find);
    const where = edits.length > 1 ? ` (edit ${i + 1})` : "";
    if (first < 0) {
      throw new StaleMutation(
        id,
        `the snippet${where} is no longer in the file: update tools/_mutations.ts\n    ${
          JSON.stringify(edit.find)
        }`,
      );
    }
    if (text.indexOf(edit.find, first + 1) >= 0) {
      throw new StaleMutation(
        id,
        `the snippet${where} occurs more than once: make it longer\n    ${
          JSON.stringify(edit.find)
        }`,
      );
    }
    text = text.slice(0, first) + edit.replace + text.slice(first + edit.find.length);
  }
  if (text === source) throw new StaleMutation(id, "the edits change nothing");
  return text;
}

/** The names of the tests that failed, from `deno test`'s FAILURES section. */
export function failedTests(output: string): string[] {
  const heading = [...output.matchAll(/^ FAILURES\s*$/gm)].pop();
  if (heading === undefined) return [];
  const at = heading.index;
  const names: string[] = [];
  for (const line of output.slice(at).split("\n").slice(1)) {
    const match = /^(.+?) => \.\/\S+$/.exec(line.trim()) ??
      /^(\.\/\S+ \(uncaught error\))$/.exec(line.trim());
    if (match) names.push(match[1]);
    if (/^(FAILED|ok) \|/.test(line)) break;
  }
  return names;
}

// ---- the program ------------------------------------------------------------------------

interface Options {
  jobs: number;
  only: string[] | null;
  full: boolean;
  runLimitMs: number;
  totalLimitMs: number;
  keep: boolean;
}

async function main(): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args: Deno.args,
      options: {
        jobs: { type: "string", default: "1" },
        only: { type: "string" },
        full: { type: "boolean", default: false },
        check: { type: "boolean", default: false },
        list: { type: "boolean", default: false },
        keep: { type: "boolean", default: false },
        "run-limit": { type: "string", default: "300" },
        "total-limit": { type: "string", default: "3600" },
        help: { type: "boolean", default: false },
      },
    }));
  } catch (error) {
    console.error(`mutants: ${error instanceof Error ? error.message : error}`);
    return 2;
  }
  if (values.help) {
    console.log(
      "usage: deno task mutants [--jobs N] [--only id,id] [--full] [--check] [--list] [--keep]\n" +
        "                         [--run-limit SECONDS] [--total-limit SECONDS]\n" +
        "See docs/testing.md.",
    );
    return 0;
  }
  const opts: Options = {
    jobs: Number(values.jobs),
    only: values.only ? values.only.split(",").map((id) => id.trim()).filter(Boolean) : null,
    full: values.full,
    runLimitMs: Number(values["run-limit"]) * 1000,
    totalLimitMs: Number(values["total-limit"]) * 1000,
    keep: values.keep,
  };
  if (!Number.isInteger(opts.jobs) || opts.jobs < 1 || opts.jobs > 8) {
    console.error("mutants: --jobs must be an integer from 1 to 8");
    return 2;
  }
  if (!(opts.runLimitMs > 0) || !(opts.totalLimitMs > 0)) {
    console.error("mutants: --run-limit and --total-limit are seconds, above 0");
    return 2;
  }
  const ids = new Set<string>();
  for (const mutation of MUTATIONS) {
    if (ids.has(mutation.id)) {
      console.error(`mutants: two mutations are called ${mutation.id}`);
      return 2;
    }
    ids.add(mutation.id);
  }
  const unknown = (opts.only ?? []).filter((id) => !ids.has(id));
  if (unknown.length > 0) {
    console.error(`mutants: no such mutation: ${unknown.join(", ")} (see --list)`);
    return 2;
  }
  const chosen = MUTATIONS.filter((m) => opts.only === null || opts.only.includes(m.id));

  if (values.list) {
    for (const m of chosen) {
      console.log(`${m.id}\n    ${m.bug}\n    ${m.file}  ->  ${describeRun(m.tests)}`);
    }
    return 0;
  }

  // Every snippet must still be there, before anything runs.
  const stale: StaleMutation[] = [];
  const mutated = new Map<string, string>();
  for (const m of chosen) {
    try {
      mutated.set(m.id, applyEdits(m.id, await Deno.readTextFile(join(ROOT, m.file)), m.edits));
    } catch (error) {
      if (error instanceof StaleMutation) stale.push(error);
      else if (error instanceof Deno.errors.NotFound) {
        stale.push(new StaleMutation(m.id, `${m.file} does not exist any more`));
      } else throw error;
    }
  }
  if (stale.length > 0) {
    for (const error of stale) console.error(`STALE ${error.message}`);
    console.error(`mutants: ${stale.length} mutation(s) no longer apply; nothing was run`);
    return 1;
  }
  if (values.check) {
    console.log(`mutants: all ${chosen.length} mutations apply`);
    return 0;
  }

  const started = performance.now();
  const scratch = await Deno.makeTempDir({ prefix: "ops-exec-mutants-" });
  const copies: string[] = [];
  try {
    const files = await trackedFiles();
    for (let i = 0; i < opts.jobs; i++) {
      const copy = join(scratch, `copy-${i + 1}`);
      await copyTree(files, copy);
      copies.push(copy);
    }
    console.log(
      `mutants: ${chosen.length} mutations, ${opts.jobs} at a time, in ${scratch} ` +
        `(${files.length} files each)`,
    );

    // Without any mutation, every test run must pass: else a kill means nothing.
    const runs = new Map<string, TestRun>();
    for (const m of chosen) {
      const run = opts.full ? FULL_SUITE : m.tests;
      runs.set(describeRun(run), run);
    }
    const baseline = await pool([...runs.values()], copies, async (run, copy) => {
      const result = await runTests(copy, run, opts.runLimitMs, join(scratch, "baseline.log"));
      return { run, result };
    });
    const broken = baseline.filter(({ result }) => result.code !== 0);
    if (broken.length > 0) {
      for (const { run, result } of broken) {
        console.error(
          `BASELINE FAILS ${describeRun(run)}${result.timedOut ? " (time limit)" : ""}`,
        );
        console.error(tail(result.output, 40));
      }
      console.error("mutants: the tests fail without any mutation; fix them first");
      return 3;
    }
    console.log(
      `baseline: ${runs.size} test runs pass without mutations (${
        seconds(performance.now() - started)
      })`,
    );

    const outcomes = await pool(chosen, copies, async (m, copy): Promise<Result> => {
      if (performance.now() - started > opts.totalLimitMs) {
        return { m, outcome: { kind: "not run" } };
      }
      const outcome = await runMutation(m, mutated.get(m.id)!, copy, opts, scratch);
      console.log(line(m, outcome));
      return { m, outcome };
    });
    return report(outcomes, performance.now() - started);
  } finally {
    if (opts.keep) console.log(`mutants: kept ${scratch}`);
    else await Deno.remove(scratch, { recursive: true }).catch(() => {});
  }
}

async function runMutation(
  m: Mutation,
  text: string,
  copy: string,
  opts: Options,
  scratch: string,
): Promise<Outcome> {
  const path = join(copy, m.file);
  const original = await Deno.readTextFile(path);
  await Deno.writeTextFile(path, text);
  const log = join(scratch, `${m.id}.log`);
  try {
    // A mutation that does not compile would fail its tests for the wrong reason (and
    // code the tests run as a subprocess, like the agent, is not checked by deno test).
    // A remote script (.sh, .pl) is text to Deno: its tests are its check.
    const check = m.file.endsWith(".ts")
      ? await runDeno(copy, ["check", "--quiet", m.file], opts.runLimitMs, log)
      : { code: 0 };
    if (check.code !== 0) {
      return { kind: "invalid", why: "the mutated code does not type-check", log };
    }
    const result = await runTests(copy, opts.full ? FULL_SUITE : m.tests, opts.runLimitMs, log);
    if (result.timedOut) return { kind: "timeout", ms: result.ms };
    if (
      /\bTS\d{4}\b|Type checking failed|error: The module's source code could not be parsed/.test(
        result.output,
      )
    ) {
      return { kind: "invalid", why: "the mutated code does not type-check", log };
    }
    if (result.code === 0) {
      return { kind: "survived", ms: result.ms, log };
    }
    const by = failedTests(result.output);
    if (by.length === 0) {
      return { kind: "invalid", why: `the tests exited ${result.code} without a failed test`, log };
    }
    return { kind: "killed", by, ms: result.ms };
  } finally {
    await Deno.writeTextFile(path, original);
  }
}

interface TestResult {
  code: number;
  output: string;
  ms: number;
  timedOut: boolean;
}

/** Runs `deno test` on `run` in `copy`. */
function runTests(copy: string, run: TestRun, limitMs: number, log: string): Promise<TestResult> {
  const args = ["test", "--allow-all", "--no-prompt"];
  if (run.filter !== undefined) args.push("--filter", run.filter);
  args.push(...run.files);
  return runDeno(copy, args, limitMs, log);
}

/** Runs `deno ...args` in `copy`, in a process group of its own, killed at the limit. */
async function runDeno(
  copy: string,
  args: string[],
  limitMs: number,
  log: string,
): Promise<TestResult> {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: copy,
    // Tells tools/mutants_test.ts that its snippets are meant to be missing here.
    env: { NO_COLOR: "1", [MUTANT_VARIABLE]: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    // Its own group, so a run past its limit is killed with everything it started.
    detached: true,
  }).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      Deno.kill(-child.pid, "SIGKILL");
    } catch {
      // Gone already.
    }
  }, limitMs);
  const [out, err, status] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.status,
  ]);
  clearTimeout(timer);
  const output = `${out}\n${err}`;
  await Deno.writeTextFile(log, `$ deno ${args.join(" ")}\n${output}\n`, { append: true });
  return { code: status.code, output, ms: performance.now() - started, timedOut };
}

/** Runs `work` over `items` with one scratch copy per worker. */
async function pool<T, R>(
  items: readonly T[],
  copies: readonly string[],
  work: (item: T, copy: string) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(copies.map(async (copy) => {
    while (next < items.length) {
      const i = next++;
      results[i] = await work(items[i], copy);
    }
  }));
  return results;
}

/** The files of this checkout: tracked, and untracked ones not ignored. */
async function trackedFiles(): Promise<string[]> {
  const out = await new Deno.Command("git", {
    args: ["-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `mutants: git ls-files failed in ${ROOT} (a git checkout is needed): ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  const names = new TextDecoder().decode(out.stdout).split("\0").filter(Boolean);
  return [...new Set(names)];
}

async function copyTree(files: readonly string[], to: string): Promise<void> {
  for (const name of files) {
    const from = join(ROOT, name);
    let info: Deno.FileInfo;
    try {
      info = await Deno.lstat(from);
    } catch {
      continue; // Deleted in the working tree.
    }
    const dest = join(to, name);
    await Deno.mkdir(dirname(dest), { recursive: true });
    if (info.isSymlink) await Deno.symlink(await Deno.readLink(from), dest);
    else if (info.isFile) {
      await Deno.copyFile(from, dest);
      if (info.mode !== null) await Deno.chmod(dest, info.mode & 0o7777);
    }
  }
}

function describeRun(run: TestRun): string {
  return `${run.files.join(" ")}${
    run.filter !== undefined ? ` --filter ${JSON.stringify(run.filter)}` : ""
  }`;
}

function line(m: Mutation, outcome: Outcome): string {
  switch (outcome.kind) {
    case "killed":
      return `  killed    ${m.id}  (${seconds(outcome.ms)})  by: ${outcome.by.join("; ")}`;
    case "timeout":
      return `  killed    ${m.id}  (${
        seconds(outcome.ms)
      })  by the run's time limit: a test hangs instead of failing`;
    case "survived":
      return `  SURVIVED  ${m.id}  (${seconds(outcome.ms)})  ${m.bug}\n            ran: ${
        describeRun(m.tests)
      }; output: ${outcome.log}`;
    case "invalid":
      return `  INVALID   ${m.id}  ${outcome.why}${outcome.log ? `; output: ${outcome.log}` : ""}`;
    case "not run":
      return `  NOT RUN   ${m.id}  (the total time limit was reached)`;
  }
}

interface Result {
  m: Mutation;
  outcome: Outcome;
}

function report(results: Result[], ms: number): number {
  const count = (kind: Outcome["kind"]) => results.filter((r) => r.outcome.kind === kind).length;
  const killed = count("killed") + count("timeout");
  const bad = results.filter((r) => !["killed", "timeout"].includes(r.outcome.kind));
  console.log(
    `\nmutants: ${killed} of ${results.length} caught, ${count("survived")} survived, ` +
      `${count("invalid")} invalid, ${count("not run")} not run, in ${seconds(ms)}`,
  );
  for (const { m, outcome } of bad) console.log(line(m, outcome));
  if (count("timeout") > 0) {
    console.log("note: a mutation caught only by the run's time limit means a test hangs on it");
  }
  return bad.length === 0 ? 0 : 1;
}

function seconds(ms: number): string {
  return ms >= 60_000
    ? `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`
    : `${(ms / 1000).toFixed(1)} s`;
}

function tail(text: string, lines: number): string {
  return text.trimEnd().split("\n").slice(-lines).join("\n");
}

if (import.meta.main) Deno.exit(await main());
