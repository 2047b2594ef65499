// The ssh command line of SshExec (shared by its steps, its control commands
// and rsync's --rsh), the checks on its options, and the reading of ssh's own
// failures into errors that say which.

import { ConfigError, TransportError } from "../executor/errors.ts";

/** Where and how to reach the host (the validated SshExec options). */
export interface SshTarget {
  /** Host name, address, or an alias of the caller's ssh_config. */
  host: string;
  /** Login name. */
  user?: string;
  /** TCP port. */
  port?: number;
  /** Private key file; only this key is offered (IdentitiesOnly). */
  identityFile?: string;
  /** known_hosts file used instead of ~/.ssh/known_hosts. */
  knownHostsFile?: string;
  /** Extra `Name=value` options, placed first so that they win. */
  sshOptions: readonly string[];
  /** How long the master outlives its last client, in seconds. */
  persistSeconds: number;
}

/** Options SshExec manages itself; setting them would break multiplexing or framing. */
const MANAGED_OPTIONS = new Set([
  "batchmode",
  "controlmaster",
  "controlpath",
  "controlpersist",
  "forkafterauthentication",
  "remotecommand",
  "requesttty",
  "sessiontype",
  "stdinnull",
]);

const OPTION = /^([A-Za-z][A-Za-z0-9]*)\s*(=|\s)\s*\S/;
// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x1f\x7f]/;

/**
 * Checks `sshOptions` entries: each is one ssh_config option written
 * `Name=value` (passed as `-o`), and none of the options SshExec manages.
 *
 * @throws {ConfigError} Naming the entry at fault.
 */
export function checkSshOptions(options: unknown): string[] {
  if (options === undefined) return [];
  if (!Array.isArray(options)) {
    throw new ConfigError("sshOptions", 'must be an array of "Name=value" strings');
  }
  return options.map((option, i) => {
    const key = `sshOptions[${i}]`;
    if (typeof option !== "string" || CONTROL.test(option)) {
      throw new ConfigError(key, `must be a one-line string, got ${JSON.stringify(option)}`);
    }
    const match = OPTION.exec(option);
    if (!match) {
      throw new ConfigError(
        key,
        `write ssh options as "Name=value" (each is passed as -o), got ${JSON.stringify(option)}`,
      );
    }
    if (MANAGED_OPTIONS.has(match[1].toLowerCase())) {
      throw new ConfigError(
        key,
        `${
          match[1]
        } is managed by SshExec (one multiplexed master, no tty, batch mode) and cannot be set`,
      );
    }
    return option;
  });
}

/**
 * Checks a host, user or path option: a non-empty one-line string that does
 * not start with `-` (which ssh would read as an option).
 *
 * @throws {ConfigError} Naming the option.
 */
export function checkWord(key: string, value: unknown, required = false): string | undefined {
  if (value === undefined && !required) return undefined;
  if (typeof value !== "string" || value === "" || CONTROL.test(value)) {
    throw new ConfigError(key, `must be a non-empty one-line string, got ${JSON.stringify(value)}`);
  }
  if (value.startsWith("-")) {
    throw new ConfigError(key, `must not start with "-", got ${JSON.stringify(value)}`);
  }
  if (key !== "identityFile" && key !== "knownHostsFile" && /\s/.test(value)) {
    throw new ConfigError(key, `must not contain white space, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * A file path as an ssh_config value: `%` escaped (ssh expands `%` tokens in
 * these options) and double-quoted when it holds spaces or quotes.
 */
export function configPath(path: string): string {
  const escaped = path.replaceAll("%", "%%");
  return /[\s"'\\]/.test(escaped)
    ? `"${escaped.replaceAll("\\", "\\\\").replaceAll('"', '\\"')}"`
    : escaped;
}

/**
 * Every ssh option SshExec passes, before the destination: the caller's
 * `sshOptions` first (the first value of an option wins in ssh), then the
 * defaults, then the multiplexing options.
 */
export function sshOptionArgs(target: SshTarget, controlPath: string): string[] {
  const options = [
    ...target.sshOptions,
    "BatchMode=yes",
    "StrictHostKeyChecking=yes",
    "LogLevel=ERROR",
    "ConnectTimeout=15",
    "ServerAliveInterval=15",
    "ServerAliveCountMax=3",
    "ForwardAgent=no",
    "ForwardX11=no",
    "ClearAllForwardings=yes",
    // AES-GCM first (the rest of ssh's default list stays, in order): with
    // AES instructions, on every current x86-64 and Apple CPU, it costs about
    // a third less CPU than ssh's default chacha20-poly1305.
    "Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com",
    "PermitLocalCommand=no",
    "RequestTTY=no",
    "ControlMaster=auto",
    `ControlPath=${configPath(controlPath)}`,
    `ControlPersist=${target.persistSeconds}`,
  ];
  if (target.knownHostsFile) {
    options.push(`UserKnownHostsFile=${configPath(target.knownHostsFile)}`);
  }
  if (target.identityFile) {
    options.push(`IdentityFile=${configPath(target.identityFile)}`, "IdentitiesOnly=yes");
  }
  const args = options.flatMap((option) => ["-o", option]);
  if (target.port !== undefined) args.push("-p", String(target.port));
  if (target.user !== undefined) args.push("-l", target.user);
  return args;
}

/** The host as rsync's remote operand wants it (IPv6 literals in brackets). */
export function rsyncHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** Where a failure was met, for the words of the error. */
export type SshStage = "connect" | "step" | "control";

/**
 * Reads ssh's diagnostics (its stderr) into the error that says what went
 * wrong: a changed or unknown host key, refused authentication, an
 * unreachable host, or a bad option.
 *
 * @param target Who we tried to reach.
 * @param stderr ssh's stderr.
 * @param stage Where we were.
 */
export function sshFailure(
  target: SshTarget,
  stderr: string,
  stage: SshStage,
): TransportError | ConfigError {
  const detail = stderr.trim();
  const where = `${target.user ? `${target.user}@` : ""}${target.host}${
    target.port ? ` port ${target.port}` : ""
  }`;
  const known = target.knownHostsFile ?? "~/.ssh/known_hosts";
  const said = detail ? ` (ssh: ${lastLine(detail)})` : "";
  const error = (kind: ConstructorParameters<typeof TransportError>[0], message: string) =>
    new TransportError(kind, target.host, message, { detail });

  if (
    /Bad configuration option|command-line: line \d+|Unsupported option|garbage at end/i.test(
      detail,
    )
  ) {
    return new ConfigError("sshOptions", `ssh rejected an option: ${lastLine(detail)}`);
  }
  if (
    /REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed|POSSIBLE DNS SPOOFING/i
      .test(detail)
  ) {
    return error(
      "host_key_changed",
      `the host key of ${where} does not match the one in ${known}: the key changed, or this is ` +
        `not the host you meant. If the change is expected, replace the entry (ssh-keygen -R).`,
    );
  }
  if (/host key is known for|Host key verification failed|No matching host key/i.test(detail)) {
    return error(
      "host_key_unknown",
      `${where} is not in ${known}, and strict host key checking refuses unknown hosts: add its ` +
        `key first (verify it, then e.g. ssh-keyscan), or pass knownHostsFile${said}`,
    );
  }
  if (
    /Permission denied \(|Too many authentication failures|Authentication failed|no mutual signature/i
      .test(detail)
  ) {
    return error(
      "auth_refused",
      `${where} refused authentication${
        target.identityFile ? ` with key ${target.identityFile}` : ""
      }: is the public key in the account's authorized_keys?${said}`,
    );
  }
  if (
    /Connection refused|No route to host|Network is unreachable|timed out|Could not resolve hostname|not known|nodename nor servname|name resolution|kex_exchange_identification|banner exchange|Connection reset/i
      .test(detail)
  ) {
    return error("unreachable", `cannot reach ${where}${said}`);
  }
  if (stage === "step") {
    return error(
      "connection_lost",
      `the ssh connection to ${where} ended before the step reported its status${said}`,
    );
  }
  return error("unreachable", `ssh to ${where} failed${said || " without a diagnostic"}`);
}

function lastLine(text: string): string {
  const lines = text.split("\n").map((l) => l.trim()).filter((l) => l && !/^@+$/.test(l));
  return lines.slice(-2).join(" / ");
}
