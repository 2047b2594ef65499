// Baseline for bench/local_bench.ts: count the lines of a command's stdout
// with execa's line mode on Node. Prints {"lines":N,"ms":T} as JSON.
import { execa } from "execa";

const [script] = process.argv.slice(2);
const started = performance.now();
let lines = 0;
for await (const _line of execa("sh", ["-c", script], { lines: true, buffer: false })) lines++;
console.log(JSON.stringify({ lines, ms: performance.now() - started }));
