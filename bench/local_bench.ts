// LocalExec benchmarks (issue: core module).
//
// 1. Per-step overhead: LocalExec running `true` against raw Deno.Command
//    running `true` with piped stdout/stderr, alternating, median of N runs.
// 2. Line throughput: 1 GiB of 100-byte lines into a counting sink, against
//    reading the same stdout as raw bytes in Deno, and against execa's line
//    mode on Node (bench/node), all in this one script.
//
// Run: deno run -A bench/local_bench.ts [--runs 300] [--bytes 1073741824]

import { parseArgs } from "@deps/cli";
import { CapabilitySet, LocalExec, Step } from "../mod.ts";
import { alternate, machine, median, ms } from "./_stats.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "300" },
    bytes: { type: "string", default: String(2 ** 30) },
    reps: { type: "string", default: "3" },
  },
});
const runs = Number(values.runs);
const bytes = Number(values.bytes);
const reps = Number(values.reps);

export interface LocalBenchResult {
  overhead: {
    localMs: number;
    rawMs: number;
    ratio: number;
    bareMs: number;
    bareRatio: number;
    runs: number;
  };
  throughput: {
    bytes: number;
    sinkMBps: number;
    rawMBps: number;
    execaMBps: number | null;
    sinkToRaw: number;
    sinkToExeca: number | null;
  };
}

/** How raw Deno.Command gets a process its own session, as LocalExec does. */
function rawSessionCommand(): Deno.Command {
  const setsid = "/usr/bin/setsid";
  try {
    if (Deno.build.os === "linux" && Deno.statSync(setsid).isFile) {
      return new Deno.Command(setsid, {
        args: ["--wait", "--", "true"],
        stdout: "piped",
        stderr: "piped",
      });
    }
  } catch { /* fall through */ }
  return new Deno.Command("true", { stdout: "piped", stderr: "piped", detached: true });
}

async function overhead() {
  const exec = new LocalExec(CapabilitySet.of("bench.*"));
  const step = Step.exec("bench.true", ["true"]);
  const sink = { write() {} };
  const samples = await alternate({
    local: () => exec.runStreaming(step, sink),
    session: () => rawSessionCommand().output(),
    bare: () => new Deno.Command("true", { stdout: "piped", stderr: "piped" }).output(),
  }, { runs, warmup: 20 });
  const localMs = median(samples.local);
  const rawMs = median(samples.session);
  const bareMs = median(samples.bare);
  return { localMs, rawMs, ratio: localMs / rawMs, bareMs, bareRatio: localMs / bareMs, runs };
}

const producer = `yes ${"x".repeat(99)} | head -c ${bytes}`;

async function sinkRate(): Promise<number> {
  const exec = new LocalExec(CapabilitySet.of("bench.*"));
  let lines = 0;
  const started = performance.now();
  await exec.runStreaming(Step.shell("bench.flood", producer), { write: () => void lines++ });
  const elapsed = performance.now() - started;
  if (lines !== Math.ceil(bytes / 100)) throw new Error(`counted ${lines} lines`);
  return bytes / 1e6 / (elapsed / 1000);
}

async function rawRate(): Promise<number> {
  const started = performance.now();
  const child = new Deno.Command("sh", { args: ["-c", producer], stdout: "piped" }).spawn();
  let n = 0;
  for await (const chunk of child.stdout) n += chunk.length;
  await child.status;
  if (n !== bytes) throw new Error(`read ${n} bytes`);
  return bytes / 1e6 / ((performance.now() - started) / 1000);
}

async function execaRate(): Promise<number | null> {
  const dir = new URL("./node/", import.meta.url).pathname;
  try {
    await Deno.stat(`${dir}node_modules/execa`);
  } catch {
    const install = await new Deno.Command("npm", {
      args: ["install", "--no-audit", "--no-fund", "--silent"],
      cwd: dir,
    }).output();
    if (!install.success) return null;
  }
  const out = await new Deno.Command("node", {
    args: [`${dir}execa_lines.mjs`, producer],
    cwd: dir,
  })
    .output();
  if (!out.success) return null;
  const { lines, ms } = JSON.parse(new TextDecoder().decode(out.stdout));
  if (lines !== Math.ceil(bytes / 100)) throw new Error(`execa counted ${lines} lines`);
  return bytes / 1e6 / (ms / 1000);
}

async function throughput() {
  const sink: number[] = [];
  const raw: number[] = [];
  const execa: number[] = [];
  for (let i = 0; i < reps; i++) {
    sink.push(await sinkRate());
    raw.push(await rawRate());
    const e = await execaRate();
    if (e !== null) execa.push(e);
  }
  const sinkMBps = median(sink);
  const rawMBps = median(raw);
  const execaMBps = execa.length ? median(execa) : null;
  return {
    bytes,
    sinkMBps,
    rawMBps,
    execaMBps,
    sinkToRaw: sinkMBps / rawMBps,
    sinkToExeca: execaMBps ? sinkMBps / execaMBps : null,
  };
}

/** Runs both LocalExec benchmarks and prints a summary. */
export async function benchLocal(): Promise<LocalBenchResult> {
  console.log(`LocalExec benchmarks on ${machine()}`);
  const o = await overhead();
  console.log(
    `per-step overhead (true, median of ${o.runs}): LocalExec ${ms(o.localMs)}; ` +
      `raw Deno.Command in its own session ${ms(o.rawMs)} -> ratio ${
        o.ratio.toFixed(3)
      } (target <= 1.10); ` +
      `raw Deno.Command without a session ${ms(o.bareMs)} -> ratio ${o.bareRatio.toFixed(3)}`,
  );
  const t = await throughput();
  console.log(
    `1 GiB of 100-byte lines (median of ${reps}): counting sink ${
      t.sinkMBps.toFixed(0)
    } MB/s, raw bytes ${t.rawMBps.toFixed(0)} MB/s, execa lines ${
      t.execaMBps?.toFixed(0) ?? "n/a"
    } MB/s; sink/raw ${t.sinkToRaw.toFixed(2)} (target >= 0.5), sink/execa ${
      t.sinkToExeca?.toFixed(1) ?? "n/a"
    } (target > 1)`,
  );
  return { overhead: o, throughput: t };
}

if (import.meta.main) await benchLocal();
