// Test accounts on this machine (root only): each with a login shell of its
// own, rc files that print, and, for some, a PATH without perl or setsid.
// Idempotent: an account that exists is brought to the spec (its shell, its
// rc files), never duplicated. Names start with `opsx-`.

import { BUSYBOX_ASH, ensureBusyboxAsh, LOGIN_SHELLS, type LoginShell } from "./_shells.ts";

/** What an account should be. */
export interface AccountSpec {
  /** The login name. */
  name: string;
  /** The login shell (sshd runs `<shell> -c <command>`). */
  shell: string;
  /** Files to write in the home, relative path to content (owned by the account). */
  files?: Record<string, string>;
}

const run = async (program: string, args: string[]): Promise<Deno.CommandOutput> =>
  await new Deno.Command(program, { args, stdin: "null", stdout: "piped", stderr: "piped" })
    .output();

/**
 * Creates the account if missing (a home, the shell, no password but not
 * locked, so that sshd lets keys in), sets its shell, writes its files.
 * Returns the home directory.
 */
export async function ensureAccount(spec: AccountSpec): Promise<string> {
  const exists = await run("id", ["-u", spec.name]);
  if (!exists.success) {
    const add = await run("useradd", [
      "--create-home",
      "--shell",
      spec.shell,
      "--comment",
      "ops-exec tests",
      spec.name,
    ]);
    // Two test files may create the same account at once: the loser finds it made.
    if (!add.success && !(await run("id", ["-u", spec.name])).success) {
      throw new Error(`useradd ${spec.name}: ${new TextDecoder().decode(add.stderr).trim()}`);
    }
  }
  // A new account is locked ("!"); sshd refuses locked accounts even for keys.
  // "*" means: no password, not locked.
  const mod = await run("usermod", ["-p", "*", "--shell", spec.shell, spec.name]);
  if (!mod.success) {
    throw new Error(`usermod ${spec.name}: ${new TextDecoder().decode(mod.stderr).trim()}`);
  }
  const home = await homeOf(spec.name);
  for (const [path, content] of Object.entries(spec.files ?? {})) {
    const file = `${home}/${path}`;
    const dir = file.slice(0, file.lastIndexOf("/"));
    await Deno.mkdir(dir, { recursive: true });
    await Deno.writeTextFile(file, content);
    await run("chown", ["-R", `${spec.name}:`, `${home}/${path.split("/")[0]}`]);
  }
  return home;
}

/** The home directory of `name`, from the passwd database. */
export async function homeOf(name: string): Promise<string> {
  const out = await run("getent", ["passwd", name]);
  const home = new TextDecoder().decode(out.stdout).trim().split(":")[5];
  if (!out.success || !home) throw new Error(`no passwd entry for ${name}`);
  return home;
}

/** The account name for a login shell of tests/_shells.ts. */
export function shellAccount(shell: LoginShell): string {
  return `opsx-${shell.name}`;
}

/**
 * The account of `shell`, with rc files that print `rc-<shell>-out` on
 * stdout and `rc-<shell>-err` on stderr wherever that shell reads one for a
 * `-c` command (and a .profile that prints, for the shells that read it).
 */
export async function ensureShellAccount(shell: LoginShell): Promise<string> {
  if (shell.path === BUSYBOX_ASH) await ensureBusyboxAsh();
  const text = `rc-${shell.name}`;
  const files: Record<string, string> = { ".profile": `echo ${text}-out; echo ${text}-err >&2\n` };
  if (shell.rcFile && shell.rcLine) files[shell.rcFile] = shell.rcLine(text);
  await ensureAccount({ name: shellAccount(shell), shell: shell.path, files });
  return shellAccount(shell);
}

/** Every login shell's account (see {@linkcode ensureShellAccount}). */
export async function ensureShellAccounts(): Promise<string[]> {
  const names: string[] = [];
  for (const shell of LOGIN_SHELLS) names.push(await ensureShellAccount(shell));
  return names;
}

/** Where the PATH directories of the perl-less and setsid-less accounts live. */
const PATH_ROOT = "/usr/local/lib/ops-exec-tests";

/**
 * A directory of links to every program of /usr/bin and /usr/sbin except
 * those named in `without` (and their versioned kin, `perl5.36.0`...): the
 * PATH of an account that lacks them. Rebuilt each time.
 */
export async function pathWithout(name: string, without: string[]): Promise<string> {
  const dir = `${PATH_ROOT}/path-${name}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
  const dropped = (entry: string) => without.some((w) => entry === w || entry.startsWith(`${w}5`));
  for (const source of ["/usr/bin", "/usr/sbin"]) {
    for await (const entry of Deno.readDir(source)) {
      if (dropped(entry.name)) continue;
      await Deno.symlink(`${source}/${entry.name}`, `${dir}/${entry.name}`).catch(() => {});
    }
  }
  return dir;
}
