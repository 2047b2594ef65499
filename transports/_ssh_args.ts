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
  /** ssh config file used instead of ~/.ssh/config (`-F`). */
  configFile?: string;
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
const OPTION_NAME = /^([A-Za-z][A-Za-z0-9]*)/;
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
    if (OPTION_NAME.exec(option)?.[1].toLowerCase() === "include") {
      throw new ConfigError(
        key,
        "ssh does not take Include on its command line: put the Include line in an ssh config " +
          "file and pass that file as configFile (ssh -F)",
      );
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
  if (!PATH_OPTIONS.has(key) && /\s/.test(value)) {
    throw new ConfigError(key, `must not contain white space, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** The options that name a file, which may hold white space. */
const PATH_OPTIONS = new Set(["identityFile", "knownHostsFile", "configFile"]);

/**
 * Checks that a file option names a file that exists, as ssh will look for
 * it (`~/` is the home directory), so that a typo is a ConfigError naming
 * the file instead of an ssh failure of another kind later. Where this
 * process may not look (a narrower Deno permission set), ssh has the word.
 *
 * @throws {ConfigError} Naming the option and the file.
 */
export function checkFileExists(key: string, path: string | undefined, what: string): void {
  if (path === undefined) return;
  let expanded = path;
  if (path.startsWith("~/")) {
    const home = readHome();
    if (home === undefined) return;
    expanded = `${home}${path.slice(1)}`;
  }
  try {
    Deno.statSync(expanded);
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) return;
    throw new ConfigError(
      key,
      `no such file: ${path}${expanded === path ? "" : ` (${expanded})`}; ${what}`,
    );
  }
}

function readHome(): string | undefined {
  try {
    return Deno.env.get("HOME") || undefined;
  } catch {
    return undefined;
  }
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
 * The connection policy of every ssh SshExec starts, jump hops included:
 * batch mode, strict host keys, no forwarding, AES-GCM first.
 */
const POLICY_OPTIONS = [
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
];

/**
 * Of the caller's `sshOptions`, the ones a jump hop gets as well: how to
 * authenticate and how to check host keys. The rest (a port, a forwarding,
 * the ProxyJump itself) concern the target only.
 */
const HOP_OPTIONS = new Set([
  "addressfamily",
  "certificatefile",
  "checkhostip",
  "ciphers",
  "connecttimeout",
  "globalknownhostsfile",
  "hostkeyalgorithms",
  "identitiesonly",
  "identityagent",
  "identityfile",
  "kexalgorithms",
  "pubkeyacceptedalgorithms",
  "stricthostkeychecking",
  "updatehostkeys",
  "userknownhostsfile",
]);

/** The name of a `Name=value` option, lower-cased (ssh's option names are). */
export function optionName(option: string): string {
  return OPTION_NAME.exec(option)?.[1].toLowerCase() ?? "";
}

/**
 * Every ssh option SshExec passes, before the destination: `-F` first, then
 * the hops' ProxyCommand (when ProxyJump is in use, see `_ssh_config.ts`),
 * the caller's `sshOptions` (the first value of an option wins in ssh), the
 * defaults, the multiplexing options, the key and known_hosts files.
 */
export function sshOptionArgs(
  target: SshTarget,
  controlPath: string,
  proxyCommand?: string,
): string[] {
  const options = [
    ...(proxyCommand === undefined ? [] : [`ProxyCommand=${proxyCommand}`]),
    ...target.sshOptions,
    ...POLICY_OPTIONS,
    "RequestTTY=no",
    "ControlMaster=auto",
    `ControlPath=${configPath(controlPath)}`,
    `ControlPersist=${target.persistSeconds}`,
    ...fileOptions(target),
  ];
  const args = [...configFileArgs(target), ...options.flatMap((option) => ["-o", option])];
  if (target.port !== undefined) args.push("-p", String(target.port));
  if (target.user !== undefined) args.push("-l", target.user);
  return args;
}

/**
 * The options of the ssh that reaches a jump hop: the same config file,
 * policy, key and known_hosts as the target's, and the caller's
 * authentication and host-key options (`HOP_OPTIONS`); no multiplexing.
 */
export function hopOptionArgs(target: SshTarget): string[] {
  const options = [
    ...target.sshOptions.filter((option) => HOP_OPTIONS.has(optionName(option))),
    ...POLICY_OPTIONS,
    ...fileOptions(target),
  ];
  return [...configFileArgs(target), ...options.flatMap((option) => ["-o", option])];
}

function configFileArgs(target: SshTarget): string[] {
  return target.configFile === undefined ? [] : ["-F", target.configFile];
}

function fileOptions(target: SshTarget): string[] {
  const options: string[] = [];
  if (target.knownHostsFile) {
    options.push(`UserKnownHostsFile=${configPath(target.knownHostsFile)}`);
  }
  if (target.identityFile) {
    options.push(`IdentityFile=${configPath(target.identityFile)}`, "IdentitiesOnly=yes");
  }
  return options;
}

/** The host as rsync's remote operand wants it (IPv6 literals in brackets). */
export function rsyncHost(host: string): string {
  return host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
}

/** Where a failure was met, for the words of the error. */
export type SshStage = "connect" | "step" | "control";

/** What more is known when ssh fails (from `ssh -G` and the jump hops' logs). */
export interface SshFailureContext {
  /** The known_hosts files ssh checked (`UserKnownHostsFile` of the config in use). */
  knownHostsFiles?: readonly string[];
  /** What each ProxyJump hop's own ssh said, first hop first. */
  hops?: readonly { spec: string; said: string }[];
}

type Kind = ConstructorParameters<typeof TransportError>[0];

/**
 * Reads ssh's diagnostics (its stderr) into the error that says what went
 * wrong: a changed or unknown host key, refused authentication, an
 * unreachable host, or a bad option. A ProxyJump hop that failed is named,
 * with its own words.
 *
 * @param target Who we tried to reach.
 * @param stderr ssh's stderr.
 * @param stage Where we were.
 * @param context The known_hosts files in use and the hops' words, when known.
 */
export function sshFailure(
  target: SshTarget,
  stderr: string,
  stage: SshStage,
  context: SshFailureContext = {},
): TransportError | ConfigError {
  const detail = stderr.trim();
  const where = `${target.user ? `${target.user}@` : ""}${target.host}${
    target.port ? ` port ${target.port}` : ""
  }`;
  const known = knownFiles(target, context);
  const hop = context.hops?.find((h) => h.said.trim() !== "");
  if (hop) {
    const said = hop.said.trim();
    const cause = classify(said, "the jump host", target, known);
    const hopDetail = `jump host ${hop.spec}: ${said}${detail ? `\n${detail}` : ""}`;
    if (cause instanceof ConfigError) return cause;
    return new TransportError(
      cause?.kind ?? "unreachable",
      target.host,
      `cannot reach ${where} through the jump host ${hop.spec}: ${
        cause?.text ?? `its ssh failed (ssh: ${lastLine(said)})`
      }`,
      { detail: hopDetail },
    );
  }
  const cause = classify(detail, where, target, known);
  if (cause instanceof ConfigError) return cause;
  const error = (kind: Kind, message: string) =>
    new TransportError(kind, target.host, message, { detail });
  if (cause) return error(cause.kind, cause.text);
  const said = detail ? ` (ssh: ${lastLine(detail)})` : "";
  if (stage === "step") {
    return error(
      "connection_lost",
      `the ssh connection to ${where} ended before the step reported its status${said}`,
    );
  }
  return error("unreachable", `ssh to ${where} failed${said || " without a diagnostic"}`);
}

/** The known_hosts files to name: the ones ssh said it used, else the option, else ssh's default. */
function knownFiles(target: SshTarget, context: SshFailureContext): string {
  const files = context.knownHostsFiles?.length
    ? context.knownHostsFiles
    : [target.knownHostsFile ?? "~/.ssh/known_hosts"];
  return files.join(" or ");
}

/** What ssh's words say happened, when they say it; `null` when they do not. */
function classify(
  detail: string,
  where: string,
  target: SshTarget,
  known: string,
): { kind: Kind; text: string } | ConfigError | null {
  const said = detail ? ` (ssh: ${lastLine(detail)})` : "";
  if (
    /Bad configuration option|command-line:? line \d+|: line \d+: |Unsupported option|garbage at end|terminating, \d+ bad configuration|Can't open user config file/i
      .test(detail)
  ) {
    const key = /command-line/.test(detail) || target.configFile === undefined
      ? "sshOptions"
      : "configFile";
    return new ConfigError(key, `ssh rejected an option: ${lastLine(detail)}`);
  }
  if (
    /REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed|POSSIBLE DNS SPOOFING/i
      .test(detail)
  ) {
    const offending = /Offending \S+ key in (.+):\d+/.exec(detail)?.[1] ?? known;
    return {
      kind: "host_key_changed",
      text: `the host key of ${where} does not match the one in ${offending}: the key changed, ` +
        `or this is not the host you meant. If the change is expected, replace the entry ` +
        `(ssh-keygen -R).`,
    };
  }
  if (/host key is known for|Host key verification failed|No matching host key/i.test(detail)) {
    return {
      kind: "host_key_unknown",
      text: `${where} is not in ${known}, and strict host key checking refuses unknown hosts: ` +
        `add its key first (verify it, then e.g. ssh-keyscan), or pass knownHostsFile${said}`,
    };
  }
  if (
    /Permission denied \(|Too many authentication failures|Authentication failed|no mutual signature/i
      .test(detail)
  ) {
    return {
      kind: "auth_refused",
      text: `${where} refused authentication${
        target.identityFile ? ` with key ${target.identityFile}` : ""
      }: is the public key in the account's authorized_keys?${said}`,
    };
  }
  if (
    /Connection refused|No route to host|Network is unreachable|timed out|Could not resolve hostname|not known|nodename nor servname|name resolution|kex_exchange_identification|banner exchange|Connection reset/i
      .test(detail)
  ) {
    return { kind: "unreachable", text: `cannot reach ${where}${said}` };
  }
  return null;
}

/** ssh's last words, without its own `ssh: ` prefix (the messages add theirs). */
function lastLine(text: string): string {
  const lines = text.split("\n").map((l) => l.trim().replace(/^ssh: /, ""))
    .filter((l) => l && !/^@+$/.test(l));
  return lines.slice(-2).join(" / ");
}
