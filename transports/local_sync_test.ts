import { assert, assertEquals, assertFalse, assertRejects } from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { CapabilityDenied, StepError, TransportError } from "../executor/errors.ts";
import type { SyncProgress } from "../executor/types.ts";
import { missing, RSYNC } from "../tests/_prereq.ts";
import { OPENRSYNC } from "../tests/_openrsync.ts";
import { LocalExec } from "./local.ts";

const skip = () => missing([RSYNC !== null, "rsync"]) !== undefined;

async function makeTree(root: string, files: Record<string, string>): Promise<void> {
  for (const [path, content] of Object.entries(files)) {
    const full = `${root}/${path}`;
    await Deno.mkdir(full.slice(0, full.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(full, content);
  }
}

async function listTree(root: string, prefix = ""): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for await (const entry of Deno.readDir(`${root}/${prefix}`)) {
    const rel = prefix ? `${prefix}/${entry.name}` : entry.name;
    if (entry.isDirectory) Object.assign(out, await listTree(root, rel));
    else out[rel] = await Deno.readTextFile(`${root}/${rel}`);
  }
  return out;
}

async function fixture() {
  const base = await Deno.realPath(await Deno.makeTempDir({ prefix: "ops-exec-sync-" }));
  const src = `${base}/src`;
  const granted = `${base}/granted`;
  const outside = `${base}/outside`;
  await makeTree(src, {
    "a.txt": "alpha",
    "nested/deep/b.txt": "beta",
    "skip.log": "log",
    "nested/skip.log": "log",
    "empty": "",
  });
  await Deno.mkdir(granted);
  await Deno.mkdir(outside);
  const exec = new LocalExec(CapabilitySet.of(`sync.push:${granted}`, `sync.pull:${granted}`));
  return { base, src, granted, outside, exec };
}

Deno.test("push copies a tree; exclude and delete behave as rsync's own options", async () => {
  if (skip()) return;
  const { base, src, granted, exec } = await fixture();
  const dest = `${granted}/app`;
  await makeTree(dest, { "stale.txt": "old" });
  const progress: SyncProgress[] = [];
  const result = await exec.push(`${src}/`, dest, {
    exclude: ["*.log"],
    delete: true,
    onProgress: (p) => progress.push(p),
  });
  assertEquals(await listTree(dest), {
    "a.txt": "alpha",
    "nested/deep/b.txt": "beta",
    "empty": "",
  });
  assertEquals(result.action, "sync.push");
  assertEquals(result.filesTransferred, 3);
  assertEquals(result.filesDeleted, 1);
  assertEquals(result.dryRun, false);
  assert(progress.length > 0, "onProgress is fed from rsync's progress output");
  assertEquals(progress.at(-1)?.percent, 100);

  // Without delete, extra files on the receiver stay.
  await makeTree(dest, { "keep.txt": "mine" });
  const again = await exec.push(`${src}/`, dest, { exclude: ["*.log"] });
  assertEquals((await listTree(dest))["keep.txt"], "mine");
  assertEquals(again.filesTransferred, 0, "an unchanged tree transfers nothing");
  await Deno.remove(base, { recursive: true });
});

Deno.test("dryRun reports what would change and changes nothing", async () => {
  if (skip()) return;
  const { base, src, granted, exec } = await fixture();
  const dest = `${granted}/app`;
  await makeTree(dest, { "stale.txt": "old" });
  const result = await exec.push(`${src}/`, dest, { dryRun: true, delete: true });
  assertEquals(result.dryRun, true);
  assertEquals(result.filesTransferred, 5);
  assertEquals(await listTree(dest), { "stale.txt": "old" });
  await Deno.remove(base, { recursive: true });
});

Deno.test("pull copies a tree back; checksum and compress are accepted", async () => {
  if (skip()) return;
  const { base, src, granted, exec } = await fixture();
  await exec.push(`${src}/`, `${granted}/app`);
  const back = `${base}/back`;
  const result = await exec.pull(`${granted}/app/`, back, {
    checksum: true,
    compress: true,
    exclude: ["nested/"],
  });
  assertEquals(result.action, "sync.pull");
  assertEquals(await listTree(back), { "a.txt": "alpha", "skip.log": "log", "empty": "" });
  await Deno.remove(base, { recursive: true });
});

Deno.test("a path outside the granted root is refused before rsync starts", async () => {
  if (skip()) return;
  const { base, src, granted, outside, exec } = await fixture();
  for (const target of [`${outside}/app`, `${granted}/../outside/app`, `${granted}x`]) {
    const error = await assertRejects(() => exec.push(`${src}/`, target), CapabilityDenied);
    assertEquals(error.scope, "caller");
    assertEquals(error.action, "sync.push");
  }
  await assertRejects(() => exec.pull(`${outside}/`, `${base}/stolen`), CapabilityDenied);
  assertEquals(await listTree(outside), {}, "nothing was written outside the root");
  assertFalse(await Deno.stat(`${base}/stolen`).then(() => true, () => false));
  await assertRejects(() => exec.push(`${src}/`, "relative/path"), StepError, "absolute");
  await Deno.remove(base, { recursive: true });
});

Deno.test("an rsync failure is a TransportError carrying rsync's words", async () => {
  if (skip()) return;
  const { base, granted, exec } = await fixture();
  const error = await assertRejects(
    () => exec.push(`${base}/does-not-exist/`, `${granted}/app`),
    TransportError,
  );
  assertEquals(error.kind, "sync_failed");
  assert(error.message.includes("rsync exit 23"), error.message);
  assert(error.detail?.includes("does-not-exist"), error.detail);
  await Deno.remove(base, { recursive: true });
});

Deno.test("an aborted transfer rejects with the signal's reason", async () => {
  if (skip()) return;
  const { base, src, granted, exec } = await fixture();
  const controller = new AbortController();
  controller.abort(new Error("stop the sync"));
  await assertRejects(
    () => exec.push(`${src}/`, `${granted}/app`, { signal: controller.signal }),
    Error,
    "stop the sync",
  );
  await Deno.remove(base, { recursive: true });
});

Deno.test("a symlink inside the granted root that leads out of it is refused before rsync starts", async () => {
  if (skip()) return;
  const { base, src, granted, outside, exec } = await fixture();
  await makeTree(outside, { "secret.txt": "secret" });
  await Deno.symlink(outside, `${granted}/out`);
  await Deno.mkdir(`${granted}/real`);
  await Deno.symlink(`${granted}/real`, `${granted}/in`);
  for (const target of [`${granted}/out/`, `${granted}/out`, `${granted}/out/deeper/new/`]) {
    const error = await assertRejects(() => exec.push(`${src}/`, target), CapabilityDenied);
    assertEquals([error.scope, error.action], ["caller", "sync.push"], target);
    assert(error.message.includes(`leads to ${outside}`), error.message);
  }
  const pull = await assertRejects(
    () => exec.pull(`${granted}/out/`, `${base}/stolen/`),
    CapabilityDenied,
  );
  assertEquals(pull.scope, "caller");
  assertEquals(await listTree(outside), { "secret.txt": "secret" }, "nothing was written outside");
  assertFalse(await Deno.stat(`${base}/stolen`).then(() => true, () => false), "rsync never ran");
  // openrsync gets its destination's parents made first: the check comes before that too.
  if (OPENRSYNC !== null) {
    const open = new LocalExec(CapabilitySet.of(`sync.push:${granted}`), {
      rsyncProgram: OPENRSYNC,
    });
    await assertRejects(() => open.push(`${src}/`, `${granted}/out/deeper/new/`), CapabilityDenied);
  }
  assertFalse(
    await Deno.lstat(`${outside}/deeper`).then(() => true, () => false),
    "no directory made outside",
  );

  // A link that stays inside the root is fine.
  await exec.push(`${src}/`, `${granted}/in/`);
  assertEquals((await listTree(`${granted}/real`))["a.txt"], "alpha");
  await Deno.remove(base, { recursive: true });
});

Deno.test("rsyncProgram: openrsync pushes into a new nested path and pulls back; its --stats read", async () => {
  if (missing([OPENRSYNC !== null, "openrsync (../shared/peers/openrsync or $OPENRSYNC)"])) return;
  const { base, src, granted } = await fixture();
  const exec = new LocalExec(CapabilitySet.of(`sync.push:${granted}`, `sync.pull:${granted}`), {
    rsyncProgram: OPENRSYNC!,
  });
  const dest = `${granted}/new dir/ñ/app/`;
  const pushed = await exec.push(`${src}/`, dest, { exclude: ["*.log"] });
  assertEquals(await listTree(dest), {
    "a.txt": "alpha",
    "nested/deep/b.txt": "beta",
    "empty": "",
  });
  assertEquals(pushed.filesTransferred, 3);
  assertEquals(pushed.literalBytes, 9);
  const again = await exec.push(`${src}/`, dest, { exclude: ["*.log"] });
  assertEquals([again.filesTransferred, again.literalBytes], [0, 0]);
  // One file to a new name in a new directory: its parent is made first.
  await exec.push(`${src}/a.txt`, `${granted}/files/new/copy.txt`);
  assertEquals(await Deno.readTextFile(`${granted}/files/new/copy.txt`), "alpha");
  // A local pull is a local transfer: openrsync sends, so it works.
  const pulled = await exec.pull(dest, `${base}/back/`);
  assertEquals(pulled.filesTransferred, 3);
  assertEquals(await listTree(`${base}/back`), await listTree(dest));
  await Deno.remove(base, { recursive: true });
});

Deno.test("rsyncProgram that is no rsync: a spawn_failed error that says so, before anything runs", async () => {
  const { base, src, granted } = await fixture();
  for (const program of ["/nonexistent/rsync", "/bin/true"]) {
    const exec = new LocalExec(CapabilitySet.of(`sync.push:${granted}`), { rsyncProgram: program });
    const error = await assertRejects(() => exec.push(`${src}/`, `${granted}/x/`), TransportError);
    assertEquals(error.kind, "spawn_failed");
    assert(error.message.includes(program), error.message);
  }
  assertFalse(await Deno.stat(`${granted}/x`).then(() => true, () => false));
  await Deno.remove(base, { recursive: true });
});
