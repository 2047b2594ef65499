// push through the agent (issue: push / pull through the agent).
//
// 1. Pushing a ~500 MB tree of mixed file sizes to an empty destination:
//    AgentRpc.push (rsync over the /v1/sync WebSocket tunnel) against plain
//    `rsync -a -e ssh` to the same machine (a private sshd on loopback).
// 2. Re-syncing an unchanged 10 000-file tree: the same two.
// Both alternate (A B A B ...) in this one script; medians of R runs.
//
// Run: deno run -A bench/sync_bench.ts [--reps 3] [--megabytes 500] [--files 10000]

import { parseArgs } from "@deps/cli";
import { CapabilitySet } from "../mod.ts";
import { AgentRpc } from "../transports/rpc.ts";
import { loopbackConfig, startAgentProcess } from "../tests/_agent_process.ts";
import { sshdMissing, startSshd } from "../tests/_sshd.ts";
import { alternate, machine, median } from "./_stats.ts";

const { values } = parseArgs({
  options: {
    reps: { type: "string", default: "3" },
    megabytes: { type: "string", default: "500" },
    files: { type: "string", default: "10000" },
  },
});
const reps = Number(values.reps);
const megabytes = Number(values.megabytes);
const fileCount = Number(values.files);

const absent = sshdMissing();
if (absent) {
  console.log(`sync_bench: skipped, missing ${absent}`);
  Deno.exit(0);
}

await Deno.mkdir("/tmp/ops-agent", { recursive: true });
const base = await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "bench-sync-" });
await Deno.chmod(base, 0o755);
const dest = `${base}/dest`;
await Deno.mkdir(dest);
await Deno.chmod(dest, 0o777); // the sshd's account writes here too

await using sshd = await startSshd();
await using agent = await startAgentProcess(
  loopbackConfig({ ceiling: [`sync.push:${dest}`, `sync.pull:${dest}`] }),
);
await using rpc = new AgentRpc({ url: agent.url }, CapabilitySet.of(`sync.push:${dest}`));
const quote = (words: string[]) => words.map((w) => (/\s/.test(w) ? `'${w}'` : w)).join(" ");
const ssh = quote(["/usr/bin/ssh", ...sshd.clientArgs()]);
// A reference without ssh's handshake per run: the same ssh over a persistent master.
const control = `${base}/ctl`;
const sshMux = quote([
  "/usr/bin/ssh",
  ...sshd.clientArgs(),
  "-o",
  "ControlMaster=auto",
  "-o",
  `ControlPath=${control}`,
  "-o",
  "ControlPersist=600",
]);

/** Mixed sizes: a few large files, many medium, many small, adding up to `mb` MB. */
async function makeMixedTree(dir: string, mb: number): Promise<number> {
  const chunk = new Uint8Array(1024 * 1024);
  const sizes: number[] = [];
  let total = 0;
  const target = mb * 1024 * 1024;
  const pattern = [64 * 1024 * 1024, 8 * 1024 * 1024, 1024 * 1024, 100 * 1024, 10 * 1024];
  for (let i = 0; total < target; i++) {
    const size = Math.min(pattern[i % pattern.length], target - total);
    sizes.push(size);
    total += size;
  }
  for (const [i, size] of sizes.entries()) {
    const path = `${dir}/d${i % 17}/f${i}.bin`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    const file = await Deno.open(path, { write: true, create: true });
    for (let left = size; left > 0; left -= chunk.length) {
      crypto.getRandomValues(chunk.subarray(0, 65536));
      await file.write(chunk.subarray(0, Math.min(left, chunk.length)));
    }
    file.close();
  }
  return total;
}

async function makeManyFiles(dir: string, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    const path = `${dir}/d${i % 100}/f${i}.txt`;
    if (i < 100) await Deno.mkdir(`${dir}/d${i % 100}`, { recursive: true });
    await Deno.writeTextFile(path, `file ${i}\n`.repeat(10));
  }
}

async function rsyncOverSsh(src: string, to: string, rsh = ssh): Promise<void> {
  const out = await new Deno.Command("rsync", {
    args: ["--archive", "--stats", "--rsh", rsh, "--", src, `${sshd.user}@${sshd.host}:${to}`],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
}

async function fresh(path: string) {
  await Deno.remove(path, { recursive: true }).catch(() => {});
}

try {
  console.log(`machine: ${machine()}`);
  const tree = `${base}/tree`;
  const bytes = await makeMixedTree(tree, megabytes);
  console.log(`tree: ${(bytes / 1e6).toFixed(0)} MB of mixed file sizes`);
  const push = await alternate({
    agent: async () => {
      await fresh(`${dest}/a`);
      await rpc.push(`${tree}/`, `${dest}/a/`);
    },
    ssh: async () => {
      await fresh(`${dest}/s`);
      await rsyncOverSsh(`${tree}/`, `${dest}/s/`);
    },
    sshMux: async () => {
      await fresh(`${dest}/m`);
      await rsyncOverSsh(`${tree}/`, `${dest}/m/`, sshMux);
    },
  }, { runs: reps, warmup: 1 });
  const rate = (ms: number) => bytes / 1e6 / (ms / 1000);
  const agentRate = rate(median(push.agent));
  const sshRate = rate(median(push.ssh));
  const muxRate = rate(median(push.sshMux));
  const mb = (bytes / 1e6).toFixed(0);
  console.log(`push ${mb} MB (median of ${reps}):`);
  console.log(`  agent ${agentRate.toFixed(0)} MB/s, rsync over ssh ${sshRate.toFixed(0)} MB/s`);
  console.log(`  ratio ${(agentRate / sshRate).toFixed(2)} (target >= 0.8)`);
  console.log(`  rsync over a warm ssh master ${muxRate.toFixed(0)} MB/s`);
  console.log(`  ratio to it ${(agentRate / muxRate).toFixed(2)}`);
  await fresh(tree);
  await fresh(`${dest}/a`);
  await fresh(`${dest}/s`);
  await fresh(`${dest}/m`);

  const many = `${base}/many`;
  await makeManyFiles(many, fileCount);
  await rpc.push(`${many}/`, `${dest}/ma/`);
  await rsyncOverSsh(`${many}/`, `${dest}/ms/`);
  await rsyncOverSsh(`${many}/`, `${dest}/mm/`, sshMux);
  const resync = await alternate({
    agent: () => rpc.push(`${many}/`, `${dest}/ma/`),
    ssh: () => rsyncOverSsh(`${many}/`, `${dest}/ms/`),
    sshMux: () => rsyncOverSsh(`${many}/`, `${dest}/mm/`, sshMux),
  }, { runs: Math.max(reps, 5), warmup: 1 });
  const agentMs = median(resync.agent);
  const sshMs = median(resync.ssh);
  const muxMs = median(resync.sshMux);
  console.log(
    `re-sync of an unchanged ${fileCount}-file tree (median of ${Math.max(reps, 5)}): agent ` +
      `${agentMs.toFixed(0)} ms, rsync over ssh ${sshMs.toFixed(0)} ms, ratio ${
        (agentMs / sshMs).toFixed(2)
      } ` +
      `(target <= 1.5); over a warm ssh master ${muxMs.toFixed(0)} ms, ratio ${
        (agentMs / muxMs).toFixed(2)
      }`,
  );
} finally {
  await new Deno.Command("/usr/bin/ssh", {
    args: ["-o", `ControlPath=${control}`, "-O", "exit", sshd.host],
    stdout: "null",
    stderr: "null",
  }).output().catch(() => {});
  await Deno.remove(base, { recursive: true }).catch(() => {});
}
