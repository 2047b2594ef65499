// SshExec benchmarks (issue 3), against a private sshd this script starts
// (tests/_sshd.ts) on a loopback port.
//
// 1. Per-step overhead: SshExec running `true` (its default: every step a
//    request on one long-lived session with the perl supervisor) against
//    raw multiplexed `ssh -S <ctl> host true` over the same kind of master,
//    and against a cold `ssh host true` (a new connection per step); N
//    sequential steps each, in alternation, medians. Reference points: raw
//    `ssh -S` running `/bin/true` and `setsid /bin/true`, and SshExec with an
//    ssh session per step (the perl supervisor with `sessionPerStep`, and
//    the sh supervisor).
// 2. 1 GiB over stdout: SshExec running `head -c 1073741824 /dev/zero` into a
//    counting sink, against raw `ssh -S <ctl> host 'head -c 1073741824
//    /dev/zero'` with stdout to /dev/null. Medians of R runs, alternating.
//
// Run: deno run -A bench/ssh_bench.ts [--runs 50] [--bytes 1073741824] [--reps 3]

import { parseArgs } from "@deps/cli";
import { CapabilitySet, SshExec, Step } from "../mod.ts";
import { sshdMissing, startSshd } from "../tests/_sshd.ts";
import { alternate, machine, median, ms } from "./_stats.ts";

const { values } = parseArgs({
  options: {
    runs: { type: "string", default: "50" },
    bytes: { type: "string", default: String(2 ** 30) },
    reps: { type: "string", default: "3" },
  },
});
const runs = Number(values.runs);
const bytes = Number(values.bytes);
const reps = Number(values.reps);

const absent = sshdMissing();
if (absent) {
  console.log(`ssh_bench: skipped, missing ${absent}`);
  Deno.exit(0);
}

await using sshd = await startSshd();
const caps = CapabilitySet.of("bench.*");
const target = {
  host: sshd.host,
  port: sshd.port,
  user: sshd.user,
  identityFile: sshd.clientKey,
  knownHostsFile: sshd.knownHosts,
};
await using viaPerl = new SshExec({ ...target, remoteSupervisor: "auto" }, caps);
await using viaPerlPerStep = new SshExec(
  { ...target, remoteSupervisor: "auto", sessionPerStep: true },
  caps,
);
await using viaSh = new SshExec({ ...target, remoteSupervisor: "sh" }, caps);

// The raw baseline's own master, set up the way SshExec sets up its own.
const controlDir = await Deno.makeTempDir({ dir: "/tmp", prefix: "oe-bench-" });
const control = `${controlDir}/m`;
const client = sshd.clientArgs();
// A second raw master with SshExec's cipher preference, for a like-for-like
// throughput reference (SshExec prefers AES-GCM; plain ssh uses chacha20).
const gcmControl = `${controlDir}/g`;
const GCM = ["-o", "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com"];
const raw = (command: string, stdout: "piped" | "null" = "piped", path = control) =>
  new Deno.Command("/usr/bin/ssh", {
    args: [...client, "-o", "ControlMaster=no", "-o", `ControlPath=${path}`, sshd.host, command],
    stdin: "null",
    stdout,
    stderr: "piped",
  }).output();
for (const [path, extra] of [[control, []], [gcmControl, GCM]] as const) {
  const master = await new Deno.Command("/usr/bin/ssh", {
    args: [
      ...client,
      ...extra,
      "-o",
      "ControlMaster=auto",
      "-o",
      `ControlPath=${path}`,
      "-o",
      "ControlPersist=600",
      sshd.host,
      "true",
    ],
    stdin: "null",
  }).output();
  if (!master.success) throw new Error(new TextDecoder().decode(master.stderr));
}

function check(output: Deno.CommandOutput | { exitCode: number | null }): void {
  const ok = "success" in output ? output.success : output.exitCode === 0;
  if (!ok) throw new Error(`a benchmark run failed: ${JSON.stringify(output)}`);
}

async function overhead() {
  const step = Step.exec("bench.true", ["true"]);
  const sink = { write() {} };
  const samples = await alternate({
    sshExec: async () => check(await viaPerl.runStreaming(step, sink)),
    rawMux: async () => check(await raw("true")),
    rawMuxBinTrue: async () => check(await raw("/bin/true")),
    rawMuxSetsid: async () => check(await raw("setsid /bin/true")),
    sshExecPerStep: async () => check(await viaPerlPerStep.runStreaming(step, sink)),
    sshExecSh: async () => check(await viaSh.runStreaming(step, sink)),
    cold: async () =>
      check(
        await new Deno.Command("/usr/bin/ssh", {
          args: [...client, "-o", "ControlMaster=no", "-o", "ControlPath=none", sshd.host, "true"],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output(),
      ),
  }, { runs, warmup: 5 });
  return Object.fromEntries(Object.entries(samples).map(([name, s]) => [name, median(s)]));
}

async function throughput() {
  const command = `head -c ${bytes} /dev/zero`;
  const step = Step.exec("bench.bytes", ["head", "-c", String(bytes), "/dev/zero"]);
  let received = 0;
  let cpuSeconds = 0;
  const sink = {
    write(line: { text: string }) {
      received += line.text.length;
    },
  };
  const samples = await alternate({
    sshExec: async () => {
      received = 0;
      const cpu = ownCpuSeconds();
      check(await viaPerl.runStreaming(step, sink));
      cpuSeconds += ownCpuSeconds() - cpu;
      if (received !== bytes) throw new Error(`received ${received} of ${bytes} bytes`);
    },
    rawMux: async () => check(await raw(command, "null")),
    rawMuxGcm: async () => check(await raw(command, "null", gcmControl)),
    // Reference: the same raw ssh read by this Deno process as bytes (no
    // decoding, no lines): what merely consuming the stream costs.
    rawMuxRead: async () => {
      const child = new Deno.Command("/usr/bin/ssh", {
        args: [
          ...client,
          "-o",
          "ControlMaster=no",
          "-o",
          `ControlPath=${control}`,
          sshd.host,
          command,
        ],
        stdin: "null",
        stdout: "piped",
        stderr: "null",
      }).spawn();
      let read = 0;
      for await (const chunk of child.stdout) read += chunk.length;
      check(await child.status.then((s) => ({ exitCode: s.code })));
      if (read !== bytes) throw new Error(`read ${read} of ${bytes} bytes`);
    },
  }, { runs: reps, warmup: 0 });
  const rate = (s: number[]) => bytes / 1e6 / (median(s) / 1000);
  return {
    sshExecMBps: rate(samples.sshExec),
    rawMBps: rate(samples.rawMux),
    rawReadMBps: rate(samples.rawMuxRead),
    rawGcmMBps: rate(samples.rawMuxGcm),
    cpuSecondsPerRun: cpuSeconds / reps,
  };
}

try {
  console.log(`machine: ${machine()}`);
  console.log(
    `ssh: ${(await ssh("-V")).trim()}; sshd on ${sshd.host}:${sshd.port} as ${sshd.user}`,
  );
  const o = await overhead();
  console.log(`\nper-step, ${runs} sequential steps each, alternating, medians:`);
  for (const [name, value] of Object.entries(o)) console.log(`  ${name.padEnd(15)} ${ms(value)}`);
  console.log(
    `  SshExec / raw mux ssh true:        ${(o.sshExec / o.rawMux).toFixed(3)} (target <= 1.15)`,
  );
  console.log(
    `  cold ssh / SshExec:                ${(o.cold / o.sshExec).toFixed(1)}x (target >= 10)`,
  );
  console.log(`  SshExec(per-step perl) / raw:      ${(o.sshExecPerStep / o.rawMux).toFixed(3)}`);
  console.log(`  SshExec(sh) / raw mux ssh true:    ${(o.sshExecSh / o.rawMux).toFixed(3)}`);
  console.log(`  raw setsid /bin/true / raw true:   ${(o.rawMuxSetsid / o.rawMux).toFixed(3)}`);
  const t = await throughput();
  console.log(`\n${bytes} bytes over stdout, median of ${reps}:`);
  console.log(`  SshExec into a counting sink: ${t.sshExecMBps.toFixed(0)} MB/s`);
  console.log(`  raw mux ssh > /dev/null:      ${t.rawMBps.toFixed(0)} MB/s`);
  console.log(`  raw mux ssh (AES-GCM first):  ${t.rawGcmMBps.toFixed(0)} MB/s`);
  console.log(`  raw mux ssh read by Deno:     ${t.rawReadMBps.toFixed(0)} MB/s (bytes only)`);
  console.log(`  SshExec / raw: ${(t.sshExecMBps / t.rawMBps).toFixed(3)} (target >= 0.8)`);
  console.log(
    `  SshExec / raw with the same cipher: ${(t.sshExecMBps / t.rawGcmMBps).toFixed(3)}`,
  );
  console.log(`  raw read by Deno / raw: ${(t.rawReadMBps / t.rawMBps).toFixed(3)}`);
  if (t.cpuSecondsPerRun > 0) {
    console.log(`  CPU of this Deno process per SshExec run: ${t.cpuSecondsPerRun.toFixed(2)} s`);
  }
} finally {
  await raw("true").catch(() => {});
  for (const path of [control, gcmControl]) {
    await new Deno.Command("/usr/bin/ssh", {
      args: ["-o", `ControlPath=${path}`, "-O", "exit", sshd.host],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
  }
  await Deno.remove(controlDir, { recursive: true }).catch(() => {});
}

/** User + system CPU seconds of this process so far (Linux; 0 elsewhere). */
function ownCpuSeconds(): number {
  try {
    const stat = Deno.readTextFileSync("/proc/self/stat");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return 0;
  }
}

async function ssh(...args: string[]): Promise<string> {
  const out = await new Deno.Command("/usr/bin/ssh", { args, stdin: "null" }).output();
  return new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
}
