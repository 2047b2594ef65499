// `deno task bench`: runs every benchmark in bench/ (each `*_bench.ts`, one
// after another, each in its own process so that none warms the other's JIT)
// and prints their summaries. Record results in docs/benchmarks.md.
//
// Run one: deno task bench local   (any part of a file name)

const filter = Deno.args[0] ?? "";
const dir = new URL(".", import.meta.url).pathname;
const files = [...Deno.readDirSync(dir)]
  .map((entry) => entry.name)
  .filter((name) => name.endsWith("_bench.ts") && name.includes(filter))
  .sort();
let failed = 0;
for (const file of files) {
  console.log(`\n== ${file}`);
  const status = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-all", `${dir}${file}`],
    stdout: "inherit",
    stderr: "inherit",
  }).spawn().status;
  if (!status.success) {
    failed++;
    console.log(`${file} failed (exit ${status.code})`);
  }
}
if (failed > 0) Deno.exit(1);
