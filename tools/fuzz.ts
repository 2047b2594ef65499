// `deno task fuzz`: runs every target of tools/_fuzz_targets.ts with
// fast-check, 10^5 cases each by default, and prints the seed first so that a
// failure can be replayed exactly (`deno task fuzz --seed N`). Not part of
// `deno task test`. Each target stops at its time limit (default 300 s), and
// says so: a target cut short has not had its cases.
//
//   deno task fuzz [--runs 100000] [--seed N] [--time-limit 300] [--only NAME]

import fc from "npm:fast-check@^3.23.2";
import { parseArgs } from "node:util";
import { TARGETS } from "./_fuzz_targets.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "100000" },
    seed: { type: "string" },
    "time-limit": { type: "string", default: "300" },
    only: { type: "string" },
  },
});
const runs = Number(values.runs);
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
const limitMs = Number(values["time-limit"]) * 1000;
console.log(`fuzz: seed ${seed}, ${runs} cases per target, at most ${limitMs / 1000} s each`);
console.log(`fuzz: replay with: deno task fuzz --seed ${seed} --runs ${runs}`);

let failed = 0;
for (const target of TARGETS) {
  if (values.only && !target.name.includes(values.only)) continue;
  const started = performance.now();
  const details = await fc.check(target.property as fc.IAsyncProperty<unknown[]>, {
    numRuns: runs,
    seed,
    interruptAfterTimeLimit: limitMs,
    markInterruptAsFailure: true,
  });
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  if (details.failed) {
    failed++;
    console.log(`FAIL ${target.name} (${details.numRuns} cases, ${seconds} s)`);
    console.log(fc.defaultReportMessage(details));
  } else {
    console.log(`ok   ${target.name}: ${details.numRuns} cases in ${seconds} s`);
  }
}
console.log(failed === 0 ? "fuzz: every target held" : `fuzz: ${failed} target(s) failed`);
Deno.exit(failed === 0 ? 0 : 1);
