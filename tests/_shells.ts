// The login shells SshExec is tried under (Debian packages, installed by
// .ci/run): the POSIX shells it supports, fish (supported too), and tcsh
// (refused, with a message naming it). BusyBox is a login shell through a
// symlink named `ash`, since it dispatches on its name.

import { findProgram, isRoot, missing } from "./_prereq.ts";

/** One login shell. */
export interface LoginShell {
  /** A short name (used in account names: `opsx-<name>`). */
  name: string;
  /** The program sshd runs as `<path> -c <command>`. */
  path: string;
  /** The Debian package that brings it. */
  pkg: string;
  /** `posix` (sh and its kin), `fish`, or `csh` (refused). */
  kind: "posix" | "fish" | "csh";
  /**
   * An rc file the shell reads for `-c` commands (relative to the home), or
   * none: tests make it print on stdout and stderr.
   */
  rcFile?: string;
  /** The rc file's line that prints `text` on stdout and on stderr. */
  rcLine?: (text: string) => string;
}

/** The busybox `ash` link: busybox runs as the applet its name says. */
export const BUSYBOX_ASH = "/usr/local/lib/ops-exec-tests/ash";

const posixEcho = (text: string) => `echo ${text}-out; echo ${text}-err >&2\n`;

/** Every login shell of the tests, in the order they run. */
export const LOGIN_SHELLS: readonly LoginShell[] = [
  { name: "bash", path: "/usr/bin/bash", pkg: "bash", kind: "posix", rcFile: ".bashrc" },
  { name: "dash", path: "/usr/bin/dash", pkg: "dash", kind: "posix" },
  { name: "zsh", path: "/usr/bin/zsh", pkg: "zsh", kind: "posix", rcFile: ".zshenv" },
  { name: "mksh", path: "/usr/bin/mksh", pkg: "mksh", kind: "posix" },
  { name: "ksh", path: "/usr/bin/ksh93", pkg: "ksh", kind: "posix" },
  { name: "yash", path: "/usr/bin/yash", pkg: "yash", kind: "posix" },
  { name: "posh", path: "/usr/bin/posh", pkg: "posh", kind: "posix" },
  { name: "ash", path: BUSYBOX_ASH, pkg: "busybox", kind: "posix" },
  {
    name: "fish",
    path: "/usr/bin/fish",
    pkg: "fish",
    kind: "fish",
    rcFile: ".config/fish/config.fish",
  },
  { name: "tcsh", path: "/usr/bin/tcsh", pkg: "tcsh", kind: "csh", rcFile: ".tcshrc" },
].map((shell) => ({
  ...shell,
  kind: shell.kind as LoginShell["kind"],
  rcLine: shell.kind === "csh"
    ? (text: string) => `echo ${text}-out; sh -c 'echo ${text}-err >&2'\n`
    : posixEcho,
}));

/** The path of the busybox binary, or `null`. */
export const BUSYBOX: string | null = findProgram("/usr/bin/busybox", "/bin/busybox");

/**
 * The reason to skip tests that need every login shell, or `undefined`.
 * Under CI=true a missing shell throws instead.
 */
export function shellsMissing(): string | undefined {
  return missing(
    ...LOGIN_SHELLS.filter((shell) => shell.path !== BUSYBOX_ASH).map((
      shell,
    ): [boolean, string] => [
      findProgram(shell.path) !== null,
      `${shell.path} (Debian package ${shell.pkg})`,
    ]),
    [BUSYBOX !== null, "busybox (Debian package busybox)"],
  );
}

/**
 * Makes the busybox `ash` link (root only: it lives in /usr/local/lib) and
 * returns its path.
 */
export async function ensureBusyboxAsh(): Promise<string> {
  if (!BUSYBOX) throw new Error("busybox is not installed");
  if (!isRoot()) throw new Error("the busybox ash link needs root");
  const dir = BUSYBOX_ASH.slice(0, BUSYBOX_ASH.lastIndexOf("/"));
  await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
  try {
    if ((await Deno.readLink(BUSYBOX_ASH)) === BUSYBOX) return BUSYBOX_ASH;
    await Deno.remove(BUSYBOX_ASH);
  } catch {
    // Not there yet.
  }
  await Deno.symlink(BUSYBOX, BUSYBOX_ASH);
  return BUSYBOX_ASH;
}
