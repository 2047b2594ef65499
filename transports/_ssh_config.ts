// What ssh makes of SshExec's options and the ssh config files in use, read
// once before the first connection with `ssh -G` (which connects nothing):
// an option or config line ssh rejects is a ConfigError naming it before any
// byte leaves the machine, the known_hosts files in use name themselves in
// errors, and ProxyJump hops are reached with the executor's own key,
// known_hosts and policy instead of ssh's defaults.

import { ConfigError, TransportError } from "../executor/errors.ts";
import { runProcess } from "../executor/_spawn.ts";
import { hopOptionArgs, optionName, sshOptionArgs, type SshTarget } from "./_ssh_args.ts";

/** What `ssh -G` says about the target. */
export interface SshFacts {
  /** The known_hosts files ssh checks the host key against (`UserKnownHostsFile`). */
  knownHostsFiles: string[];
  /** The ProxyJump hops, first hop first (empty: a direct connection). */
  jumps: JumpHop[];
}

/** One hop of a ProxyJump list: `[user@]host[:port]` (or `ssh://`). */
export interface JumpHop {
  /** The hop as written. */
  spec: string;
  /** Login name, when the spec gives one. */
  user?: string;
  /** Host name or address (IPv6 without brackets). */
  host: string;
  /** Port, when the spec gives one. */
  port?: number;
}

/** How long `ssh -G` may take (it reads config files and may run `Match exec`). */
const RESOLVE_TIMEOUT_MS = 15_000;

/**
 * Runs `ssh -G` with the executor's own options and reads what it needs.
 *
 * @throws {ConfigError} When ssh rejects an option or a config file line, naming it.
 * @throws {TransportError} `spawn_failed` when the ssh client cannot run.
 */
export async function readSshFacts(
  program: string,
  target: SshTarget,
  env: Record<string, string>,
): Promise<SshFacts> {
  const args = sshOptionArgs(target, "/nonexistent/ops-exec-resolve");
  const result = await ssh(program, ["-G", ...args, "--", target.host], env);
  if (!result.started) {
    throw new TransportError(
      "spawn_failed",
      target.host,
      `cannot run the ssh client ${program}: ${result.stderr}`,
    );
  }
  // An ssh client without -G (OpenSSH before 6.8, another client): ssh's own defaults.
  if (result.exitCode !== 0 && /option -- '?G/.test(result.stderr)) {
    return { knownHostsFiles: [], jumps: [] };
  }
  if (result.exitCode !== 0) throw await rejected(program, target, env, result.stderr);
  const values = new Map<string, string>();
  for (const line of result.stdout.split("\n")) {
    const space = line.indexOf(" ");
    if (space > 0 && !values.has(line.slice(0, space))) {
      values.set(line.slice(0, space), line.slice(space + 1).trim());
    }
  }
  const jump = values.get("proxyjump");
  return {
    knownHostsFiles: (values.get("userknownhostsfile") ?? "").split(/\s+/).filter(Boolean),
    jumps: jump === undefined || jump.toLowerCase() === "none" ? [] : parseJumps(jump),
  };
}

/** Reads a ProxyJump value (ssh has checked its syntax). */
export function parseJumps(value: string): JumpHop[] {
  return value.split(",").map((spec) => {
    let rest = spec.trim().replace(/^ssh:\/\//, "");
    let user: string | undefined;
    const at = rest.lastIndexOf("@");
    if (at >= 0) {
      user = rest.slice(0, at);
      rest = rest.slice(at + 1);
    }
    let host = rest;
    let port: string | undefined;
    const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(rest);
    if (bracketed) {
      [, host, port] = bracketed;
    } else if (rest.split(":").length === 2) {
      [host, port] = rest.split(":");
    }
    if (host === "" || (port !== undefined && !/^\d{1,5}$/.test(port))) {
      throw new ConfigError("sshOptions", `ProxyJump hop ${JSON.stringify(spec)} does not parse`);
    }
    return {
      spec: spec.trim(),
      ...(user ? { user } : {}),
      host,
      ...(port ? { port: Number(port) } : {}),
    };
  });
}

/**
 * The ProxyCommand that reaches the target through `hops` the way ssh's
 * own ProxyJump does (`ssh -W [%h]:%p hop`, each hop through the previous
 * one), except that every hop's ssh gets the executor's config file, key,
 * known_hosts and policy, and writes its diagnostics to `hop-N.log` in
 * `logDir` (ssh -E), so that a hop's failure can be told apart from the
 * target's.
 *
 * ssh runs a ProxyCommand with `$SHELL -c` after expanding its `%` tokens:
 * words are shell-quoted, and literal `%` doubled at each level of nesting.
 */
export function jumpProxyCommand(
  program: string,
  target: SshTarget,
  hops: readonly JumpHop[],
  logDir: string,
): string {
  let previous: string | undefined;
  hops.forEach((hop, i) => {
    const words = [program, ...hopOptionArgs(target), "-E", hopLog(logDir, i)];
    if (previous !== undefined) words.push("-o", `ProxyCommand=${previous}`);
    if (hop.user !== undefined) words.push("-l", hop.user);
    if (hop.port !== undefined) words.push("-p", String(hop.port));
    const literal = (word: string) => shellWord(word).replaceAll("%", "%%");
    previous = `${words.map(literal).join(" ")} -W "[%h]:%p" -- ${literal(hop.host)}`;
  });
  return previous!;
}

/** Where the ssh of hop `index` (0-based) writes its diagnostics. */
export function hopLog(logDir: string, index: number): string {
  return `${logDir}/hop-${index + 1}.log`;
}

/** A word for a POSIX shell's command line. */
function shellWord(word: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word;
  if (!/["$`\\!]/.test(word)) return `"${word}"`;
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/**
 * The ConfigError for options ssh rejected: the `sshOptions` entry at fault
 * (each tried alone, without config files), else the config file.
 */
async function rejected(
  program: string,
  target: SshTarget,
  env: Record<string, string>,
  stderr: string,
): Promise<ConfigError> {
  const said = stderr.trim().split("\n").slice(-2).join(" / ");
  for (const [i, option] of target.sshOptions.entries()) {
    const alone = await ssh(program, ["-G", "-F", "none", "-o", option, "--", target.host], env);
    if (alone.exitCode !== 0) {
      return new ConfigError(
        `sshOptions[${i}]`,
        `ssh rejects ${optionName(option) ? JSON.stringify(option) : "it"}: ${
          alone.stderr.trim().split("\n").at(-1)
        }`,
      );
    }
  }
  if (target.configFile !== undefined) {
    return new ConfigError("configFile", `ssh rejects ${target.configFile}: ${said}`);
  }
  return new ConfigError(
    "",
    `ssh rejects its configuration (~/.ssh/config, /etc/ssh/ssh_config, or the options): ${said}`,
  );
}

async function ssh(
  program: string,
  args: string[],
  env: Record<string, string>,
): Promise<{ started: boolean; exitCode: number | null; stdout: string; stderr: string }> {
  const stdout: string[] = [];
  const stderr: string[] = [];
  const result = await runProcess({
    argv: [program, ...args],
    env,
    killGraceMs: 500,
    timeoutMs: RESOLVE_TIMEOUT_MS,
    ownSession: false,
  }, {
    write(line) {
      (line.stream === "stdout" ? stdout : stderr).push(line.text);
    },
  });
  return {
    started: result.started,
    exitCode: result.exitCode,
    stdout: stdout.join("\n"),
    stderr: stderr.join("\n"),
  };
}
