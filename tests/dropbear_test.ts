// SshExec against Dropbear (issue 11, acceptance 4), with the OpenSSH
// client: steps in every supervisor mode, one authentication for 20 steps
// (the master, counted in Dropbear's log), push and pull with rsync over it,
// timeouts that leave no survivor.

import { assert, assertEquals, assertFalse, assertGreater } from "@deps/assert";
import { CapabilitySet } from "../capability/mod.ts";
import { CollectingSink } from "../executor/sinks.ts";
import { Step } from "../step/mod.ts";
import { SshExec, type SshExecOptions } from "../transports/ssh.ts";
import { type Dropbear, DROPBEAR_ACCOUNT, dropbearMissing, startDropbear } from "./_dropbear.ts";
import { HAS_PROC, pidsWithCommandLine, waitFor } from "./_procs.ts";
import { exists, missing, RSYNC } from "./_prereq.ts";

const skip = dropbearMissing() ??
  missing([HAS_PROC, "/proc (Linux)"], [RSYNC !== null, "rsync (Debian package rsync)"]);
const dropbear: Dropbear | null = skip ? null : await startDropbear();
const scratch = skip ? "" : await Deno.makeTempDir({ prefix: "ops-exec-dropbear-data-" });
if (!skip) {
  await Deno.chmod(scratch, 0o755);
  const chown = await new Deno.Command("chown", { args: [`${DROPBEAR_ACCOUNT}:`, scratch] })
    .output();
  assert(chown.success);
}

const CAPS = CapabilitySet.of("test.*", "observe", `sync.push:${scratch}`, `sync.pull:${scratch}`);

const MODES = {
  session: {},
  "per-step perl": { sessionPerStep: true },
  sh: { remoteSupervisor: "sh" },
} as const satisfies Record<string, Partial<SshExecOptions>>;
type Mode = keyof typeof MODES;
const ALL_MODES = Object.keys(MODES) as Mode[];

function target(extra: Partial<SshExecOptions> = {}): SshExecOptions {
  return {
    host: dropbear!.host,
    port: dropbear!.port,
    user: dropbear!.user,
    identityFile: dropbear!.clientKey,
    knownHostsFile: dropbear!.knownHosts,
    ...extra,
  };
}

function dropbearTest(name: string, fn: () => Promise<void>) {
  Deno.test({ name, ignore: skip !== undefined, fn });
}

async function run(exec: SshExec, step: Step) {
  const sink = new CollectingSink();
  const out = await exec.runStreaming(step, sink);
  return { out, stdout: sink.text("stdout"), stderr: sink.text("stderr") };
}

for (const mode of ALL_MODES) {
  dropbearTest(
    `4. Dropbear (${mode}): steps, exact exits and signals; 20 steps cost one authentication`,
    async () => {
      const before = dropbear!.authentications();
      await using exec = new SshExec(target(MODES[mode]), CAPS);
      for (let i = 0; i < 20; i++) {
        const { out, stdout } = await run(exec, Step.exec("test.seq", ["echo", String(i)]));
        assertEquals([out.exitCode, stdout], [0, String(i)]);
      }
      assertEquals(dropbear!.authentications(), before + 1, "one authentication for 20 steps");
      for (const code of [1, 143, 255]) {
        const { out } = await run(exec, Step.shell("test.exit", `exit ${code}`));
        assertEquals([out.exitCode, out.signal], [code, null]);
      }
      const { out } = await run(exec, Step.shell("test.signal", "kill -TERM $$"));
      assertEquals([out.exitCode, out.signal], [null, "SIGTERM"]);
      const env = await run(exec, Step.exec("test.env", ["env"], { env: { MODE: "x y" } }));
      assert(env.stdout.split("\n").includes("MODE=x y"), env.stdout);
      assertFalse(env.stdout.includes("SSH_CONNECTION"), "Dropbear's session variables leaked");
      assertEquals(dropbear!.authentications(), before + 1);
    },
  );

  dropbearTest(`4. Dropbear (${mode}): a timeout kills the whole remote group`, async () => {
    await using exec = new SshExec(target(MODES[mode]), CAPS);
    const token = `300.${Math.floor(Math.random() * 1e9)}`;
    const { out } = await run(
      exec,
      Step.shell("test.tree", `trap '' TERM; sleep ${token} & sleep ${token}; wait`, {
        timeoutMs: 600,
        killGraceMs: 400,
      }),
    );
    assert(out.timedOut);
    assertEquals(out.signal, "SIGKILL");
    assert(
      await waitFor(() => pidsWithCommandLine(token).length === 0, 2000),
      `left: ${pidsWithCommandLine(token)}`,
    );
  });
}

dropbearTest("4. Dropbear: push and pull with rsync over the master", async () => {
  const local = await Deno.makeTempDir({ prefix: "ops-exec-dropbear-push-" });
  const back = await Deno.makeTempDir({ prefix: "ops-exec-dropbear-pull-" });
  try {
    await Deno.mkdir(`${local}/sub dir`);
    await Deno.writeTextFile(`${local}/a.txt`, "alpha");
    await Deno.writeTextFile(`${local}/sub dir/b ü.txt`, "beta");
    await using exec = new SshExec(target(), CAPS);
    await run(exec, Step.exec("test.warm", ["true"]));
    const before = dropbear!.authentications();
    const dest = `${scratch}/pushed`;
    const pushed = await exec.push(`${local}/`, `${dest}/`);
    assertEquals(pushed.filesTransferred, 2);
    assertGreater(pushed.literalBytes, 0);
    assertEquals(await Deno.readTextFile(`${dest}/sub dir/b ü.txt`), "beta");
    const pulled = await exec.pull(`${dest}/`, `${back}/`);
    assertEquals(pulled.filesTransferred, 2);
    assertEquals(await Deno.readTextFile(`${back}/a.txt`), "alpha");
    assert(await exists(`${back}/sub dir/b ü.txt`));
    assertEquals(dropbear!.authentications(), before, "rsync rode the master");
  } finally {
    await Deno.remove(local, { recursive: true });
    await Deno.remove(back, { recursive: true });
  }
});

Deno.test({
  name: "teardown: Dropbear",
  ignore: skip !== undefined,
  fn: async () => {
    await dropbear?.stop();
    await Deno.remove(scratch, { recursive: true }).catch(() => {});
  },
});
