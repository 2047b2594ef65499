// The remote programs and the commands that carry them, against the real
// login shells (no sshd: each shell is run as sshd would run it, `-c
// <command>`): every shell hands the programs over byte-exact, a csh passes
// the connect probe on so that it can be named, and the programs' constants
// are all filled in.

import { assert, assertEquals, assertFalse, assertStringIncludes } from "@deps/assert";
import { findProgram } from "../tests/_prereq.ts";
import { BUSYBOX, LOGIN_SHELLS, shellsMissing } from "../tests/_shells.ts";
import {
  connectCommand,
  isCshFamily,
  parseConnectProbe,
  PROGRAMS,
  sessionCommand,
  shellQuote,
  stepCommand,
  supervisorProblem,
} from "./_ssh_remote.ts";

const skip = shellsMissing();

/** Runs `command` the way sshd does: `<shell> -c <command>`, with the given environment. */
async function viaLoginShell(
  shell: string,
  command: string,
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const out = await new Deno.Command(shell, {
    args: ["-c", command],
    env: { PATH: "/usr/bin:/bin", HOME: "/tmp", LANG: "C.UTF-8", ...env },
    clearEnv: true,
    cwd: "/tmp",
    stdin: "null",
  }).output();
  const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/** The login shells as runnable paths (busybox through an `ash` link in a temporary dir). */
async function runnableShells(dir: string) {
  const link = `${dir}/ash`;
  await Deno.symlink(BUSYBOX!, link);
  return LOGIN_SHELLS.map((shell) => ({ ...shell, run: shell.name === "ash" ? link : shell.path }));
}

Deno.test("the remote programs have every constant filled in and nothing a login shell would rewrite", () => {
  for (const [name, program] of Object.entries(PROGRAMS)) {
    assertFalse(/@@[A-Z_]+@@/.test(program), `${name}: a constant is left`);
    // fish's only escapes inside single quotes: the programs must not need them.
    assertFalse(/\\['\\]/.test(program) || program.endsWith("\\"), `${name} has \\' or \\\\`);
    assertFalse(/^\s*#/m.test(program), `${name}: comments are sent`);
  }
  assertFalse(PROGRAMS.connect.includes("\n"), "the connect probe is one line (for csh)");
  assertFalse(PROGRAMS.connect.includes("!"), "no csh history character in the probe");
  assertStringIncludes(PROGRAMS.stepSh, "OPSX3");
  assertStringIncludes(PROGRAMS.session, "OPSX2");
});

Deno.test({
  name: "every POSIX login shell and fish hand each remote program over byte-exact",
  ignore: skip !== undefined,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "ops-exec-shells-" });
    try {
      const printf = findProgram("/usr/bin/printf")!;
      for (const shell of await runnableShells(dir)) {
        if (shell.kind === "csh") continue;
        for (const [name, program] of Object.entries(PROGRAMS)) {
          const out = await viaLoginShell(shell.run, `exec ${printf} %s ${shellQuote(program)}`);
          assertEquals(out.stdout, program, `${shell.name} changed ${name}: ${out.stderr}`);
        }
        // The commands themselves run there too (the assignment prefix, exec).
        const probe = await viaLoginShell(shell.run, connectCommand("m4rk"), { SHELL: shell.path });
        const facts = parseConnectProbe(probe.stdout.split("\n"), "m4rk");
        assertEquals(facts?.shell, shell.path, `${shell.name}: ${probe.stdout} ${probe.stderr}`);
        assertEquals([facts?.perl, facts?.setsid], [true, true], shell.name);
        const session = await viaLoginShell(
          shell.run,
          sessionCommand().replace("exec perl -e", "exec perl -c -e"),
        );
        assertStringIncludes(session.stderr, "syntax OK", shell.name);
        for (const kind of ["perl", "sh"] as const) {
          // With stdin at EOF, each supervisor stops at once: the frame was cut.
          const step = await viaLoginShell(shell.run, stepCommand(kind));
          assertEquals(step.code, 97, `${shell.name} ${kind}: ${step.stderr}`);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a csh login shell passes the connect probe on, so that SshExec can name it",
  ignore: skip !== undefined,
  fn: async () => {
    const tcsh = LOGIN_SHELLS.find((shell) => shell.kind === "csh")!;
    const probe = await viaLoginShell(tcsh.path, connectCommand("m4rk"), { SHELL: tcsh.path });
    const facts = parseConnectProbe(probe.stdout.split("\n"), "m4rk");
    assertEquals(facts?.shell, tcsh.path, probe.stderr);
    assert(isCshFamily(facts!.shell));
    for (const shell of ["/bin/sh", "/usr/bin/fish", "/usr/bin/zsh", "/opt/x/ash"]) {
      assertFalse(isCshFamily(shell), shell);
    }
    for (const shell of ["/bin/csh", "/usr/bin/tcsh", "/usr/bin/bsd-csh"]) {
      assert(isCshFamily(shell), shell);
    }
  },
});

Deno.test("supervisorProblem names what is missing and what would work", () => {
  const facts = (perl: boolean, setsid: boolean) => ({
    shell: "/bin/sh",
    perl,
    setsid,
    waiter: "none" as const,
  });
  assertEquals(supervisorProblem("auto", facts(true, false)), null);
  assertEquals(supervisorProblem("auto", facts(false, true)), null);
  assertEquals(supervisorProblem("sh", facts(false, true)), null);
  assertEquals(supervisorProblem("perl", facts(true, false)), null);
  const shNoSetsid = supervisorProblem("sh", facts(true, false))!;
  assertStringIncludes(shNoSetsid, 'remoteSupervisor "sh" needs setsid(1)');
  assertStringIncludes(shNoSetsid, "the host has perl");
  assertFalse(shNoSetsid.includes("neither"), shNoSetsid);
  assertStringIncludes(
    supervisorProblem("perl", facts(false, true))!,
    'remoteSupervisor "perl" needs perl',
  );
  assertStringIncludes(supervisorProblem("auto", facts(false, false))!, "neither perl nor setsid");
});
