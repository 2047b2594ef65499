// A private sshd for tests: Debian's openssh-server on a free loopback port
// (or any address, e.g. inside a network namespace), with its own host key,
// authorized_keys, known_hosts and client key, plus a wrong client key and a
// wrong known_hosts for the failure tests. Nothing of the machine's own ssh
// set-up is used or changed, except that, as root, a test account is created
// once (sshd only logs in accounts that exist).
//
// Skipping: `sshdMissing()` returns the reason to skip (and throws under
// CI=true, where nothing may be skipped), as tests/_prereq.ts does.

import { ensureAccount } from "./_accounts.ts";
import { findProgram, isRoot, missing } from "./_prereq.ts";

/** The sshd binary, or `null`. */
export const SSHD: string | null = findProgram("/usr/sbin/sshd", "/usr/local/sbin/sshd");
/** The ssh client, or `null`. */
export const SSH: string | null = findProgram("/usr/bin/ssh", "/usr/local/bin/ssh");
const SSH_KEYGEN = findProgram("/usr/bin/ssh-keygen", "/usr/local/bin/ssh-keygen");

/** The account tests log in as when running as root: a plain /bin/sh user. */
export const TEST_ACCOUNT = "opsexec";

/**
 * The reason to skip sshd-based tests, or `undefined` when sshd, ssh and
 * ssh-keygen are all here. Under CI=true a missing part throws instead.
 */
export function sshdMissing(): string | undefined {
  return missing(
    [SSHD !== null, "sshd (Debian package openssh-server)"],
    [SSH !== null, "ssh (openssh-client)"],
    [SSH_KEYGEN !== null, "ssh-keygen (openssh-client)"],
  );
}

/** Options of {@linkcode startSshd}. */
export interface SshdOptions {
  /** The address to listen on. Default `127.0.0.1`. */
  listenAddress?: string;
  /** The port. Default: a free port on `listenAddress`, found by binding port 0. */
  port?: number;
  /**
   * Where keys, config and log go; every directory above it must be
   * traversable by the login account. Default: a fresh temporary directory,
   * removed on stop.
   */
  stateDir?: string;
  /**
   * The account to log in as. Default: `opsexec` (created if missing) when
   * running as root, else the current user (a non-root sshd can only log in
   * the user it runs as).
   */
  user?: string;
  /**
   * A prefix for the sshd command, e.g. `["ip", "netns", "exec", "host-a"]`
   * to run it in a network namespace. With a prefix, give `port` (the free
   * port search only sees this process's namespace); default 22.
   */
  commandPrefix?: string[];
  /**
   * More sshd_config lines, after SshExec's own: e.g. a `Match User` block
   * whose `SetEnv PATH=...` gives an account a PATH without perl.
   */
  extraConfig?: string[];
}

/** A running private sshd and the files a client needs to reach it. */
export interface Sshd extends AsyncDisposable {
  /** The address it listens on. */
  host: string;
  /** Its port. */
  port: number;
  /** The account to log in as. */
  user: string;
  /** The directory holding its files. */
  stateDir: string;
  /** The client key sshd accepts. */
  clientKey: string;
  /** A client key sshd does not accept. */
  wrongKey: string;
  /** A known_hosts file with sshd's real host key. */
  knownHosts: string;
  /** A known_hosts file with a different key for the same host and port. */
  wrongKnownHosts: string;
  /** An empty known_hosts file (the host is unknown). */
  emptyKnownHosts: string;
  /** sshd's log file (LogLevel VERBOSE). */
  logFile: string;
  /** The listening sshd's pid. */
  pid: number;
  /** How many connections sshd has authenticated so far (from its log). */
  authenticatedConnections(): Promise<number>;
  /** How many sessions (commands) sshd has started so far (from its log). */
  sessions(): Promise<number>;
  /** The ssh options (`-o`, `-i`, `-p`, `-l`) of a plain client of this sshd. */
  clientArgs(): string[];
  /** Stops sshd and every connection it serves; removes a temporary state dir. */
  stop(): Promise<void>;
}

/**
 * Starts a private sshd. Resolves once it listens.
 *
 * @throws When sshd is missing or will not start (with its own words).
 */
export async function startSshd(opts: SshdOptions = {}): Promise<Sshd> {
  if (!SSHD || !SSH_KEYGEN) throw new Error("sshd or ssh-keygen is not installed");
  const listenAddress = opts.listenAddress ?? "127.0.0.1";
  const ownDir = opts.stateDir === undefined;
  const stateDir = opts.stateDir ?? await Deno.makeTempDir({ prefix: "ops-exec-sshd-" });
  await Deno.mkdir(stateDir, { recursive: true });
  // sshd reads authorized_keys as the target user: the directory must be traversable.
  await Deno.chmod(stateDir, 0o755);
  const user = opts.user ?? (isRoot() ? await ensureTestAccount() : currentUser());
  if (isRoot()) await assertTraversable(stateDir);
  if (isRoot()) await ensurePrivsepDir();

  const file = (name: string) => `${stateDir}/${name}`;
  await Promise.all([
    keygen(file("host_ed25519")),
    keygen(file("other_host_ed25519")),
    keygen(file("client_ed25519")),
    keygen(file("wrong_ed25519")),
  ]);
  await Deno.copyFile(file("client_ed25519.pub"), file("authorized_keys"));
  await Deno.chmod(file("authorized_keys"), 0o644);

  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = opts.port ?? (opts.commandPrefix ? 22 : freePort(listenAddress));
    const hostPattern = port === 22 ? bracketed(listenAddress) : `[${listenAddress}]:${port}`;
    const hostKey = (await Deno.readTextFile(file("host_ed25519.pub"))).trim();
    const otherKey = (await Deno.readTextFile(file("other_host_ed25519.pub"))).trim();
    await Deno.writeTextFile(file("known_hosts"), `${hostPattern} ${keyPart(hostKey)}\n`);
    await Deno.writeTextFile(file("wrong_known_hosts"), `${hostPattern} ${keyPart(otherKey)}\n`);
    await Deno.writeTextFile(file("empty_known_hosts"), "");
    await writeConfig(file("sshd_config"), {
      stateDir,
      listenAddress,
      port,
      extra: opts.extraConfig ?? [],
    });
    await Deno.writeTextFile(file("sshd.log"), "");

    const child = new Deno.Command(opts.commandPrefix?.[0] ?? SSHD, {
      args: [
        ...(opts.commandPrefix?.slice(1) ?? []),
        ...(opts.commandPrefix ? [SSHD] : []),
        "-D",
        "-f",
        file("sshd_config"),
        "-E",
        file("sshd.log"),
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
      detached: true,
    }).spawn();
    const ready = await waitListening(child, file("sshd.log"));
    if (ready === true) {
      return handle({ child, listenAddress, port, user, stateDir, ownDir, file });
    }
    lastError = ready;
    if (opts.port !== undefined || opts.commandPrefix) break;
  }
  if (ownDir) await Deno.remove(stateDir, { recursive: true }).catch(() => {});
  throw lastError instanceof Error ? lastError : new Error(String(lastError));
}

function handle(
  s: {
    child: Deno.ChildProcess;
    listenAddress: string;
    port: number;
    user: string;
    stateDir: string;
    ownDir: boolean;
    file: (name: string) => string;
  },
): Sshd {
  const { child, file } = s;
  let stopped: Promise<void> | null = null;
  // When the test run ends without stop() (a filtered run, a crash), still
  // leave nothing behind: unload handlers must be synchronous.
  const unload = () => {
    for (const pid of descendantsSync(child.pid)) killPid(pid, "SIGKILL");
    killGroup(child.pid, "SIGKILL");
    if (s.ownDir) {
      try {
        Deno.removeSync(s.stateDir, { recursive: true });
      } catch {
        // Already gone.
      }
    }
  };
  globalThis.addEventListener("unload", unload);
  const count = async (pattern: RegExp) => {
    const log = await Deno.readTextFile(file("sshd.log"));
    return log.split("\n").filter((line) => pattern.test(line)).length;
  };
  const sshd: Sshd = {
    host: s.listenAddress,
    port: s.port,
    user: s.user,
    stateDir: s.stateDir,
    clientKey: file("client_ed25519"),
    wrongKey: file("wrong_ed25519"),
    knownHosts: file("known_hosts"),
    wrongKnownHosts: file("wrong_known_hosts"),
    emptyKnownHosts: file("empty_known_hosts"),
    logFile: file("sshd.log"),
    pid: child.pid,
    authenticatedConnections: () => count(/^Accepted publickey for /),
    sessions: () => count(/^Starting session: /),
    clientArgs: () => [
      "-o",
      "BatchMode=yes",
      "-o",
      `UserKnownHostsFile=${file("known_hosts")}`,
      "-o",
      "StrictHostKeyChecking=yes",
      "-o",
      "IdentitiesOnly=yes",
      "-i",
      file("client_ed25519"),
      "-p",
      String(s.port),
      "-l",
      s.user,
    ],
    stop() {
      stopped ??= (async () => {
        globalThis.removeEventListener("unload", unload);
        // Each connection runs in a session of its own: find them by ancestry
        // before the listener dies and they are reparented.
        const connections = await descendants(child.pid);
        killGroup(child.pid, "SIGTERM");
        for (const pid of connections) killPid(pid, "SIGKILL");
        const exited = await Promise.race([
          child.status.then(() => true),
          new Promise<boolean>((r) => setTimeout(() => r(false), 3000)),
        ]);
        if (!exited) killGroup(child.pid, "SIGKILL");
        await child.status;
        killGroup(child.pid, "SIGKILL");
        await child.stderr.cancel().catch(() => {});
        if (s.ownDir) await Deno.remove(s.stateDir, { recursive: true }).catch(() => {});
      })();
      return stopped;
    },
    [Symbol.asyncDispose]() {
      return sshd.stop();
    },
  };
  return sshd;
}

async function writeConfig(
  path: string,
  c: { stateDir: string; listenAddress: string; port: number; extra: string[] },
): Promise<void> {
  const lines = [
    `ListenAddress ${bracketed(c.listenAddress)}:${c.port}`,
    `HostKey ${c.stateDir}/host_ed25519`,
    `AuthorizedKeysFile ${c.stateDir}/authorized_keys`,
    `PidFile none`,
    "PubkeyAuthentication yes",
    "PasswordAuthentication no",
    "KbdInteractiveAuthentication no",
    "PermitRootLogin prohibit-password",
    // The state dir lives under /tmp: do not insist on its owner and modes.
    "StrictModes no",
    "UsePAM no",
    "PrintMotd no",
    "X11Forwarding no",
    "LogLevel VERBOSE",
    // Tests run many steps at once over one master (default 10 sessions).
    "MaxSessions 64",
    "MaxStartups 64:30:128",
    "Subsystem sftp internal-sftp",
  ];
  // OpenSSH 9.8+ penalises sources that fail to authenticate; the failure
  // tests do that on purpose, from loopback. Older sshd lacks the option.
  if (await sshdAccepts("PerSourcePenalties no")) lines.push("PerSourcePenalties no");
  // Match blocks run to the end of the file: they come last.
  lines.push(...c.extra);
  await Deno.writeTextFile(path, lines.join("\n") + "\n");
}

let penaltiesKnown: boolean | undefined;

async function sshdAccepts(line: string): Promise<boolean> {
  if (penaltiesKnown !== undefined) return penaltiesKnown;
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-sshd-probe-" });
  try {
    await keygen(`${dir}/k`);
    await Deno.writeTextFile(`${dir}/c`, `HostKey ${dir}/k\n${line}\n`);
    const out = await new Deno.Command(SSHD!, {
      args: ["-t", "-f", `${dir}/c`],
      stdout: "null",
      stderr: "null",
    }).output();
    penaltiesKnown = out.success;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  return penaltiesKnown;
}

async function waitListening(child: Deno.ChildProcess, log: string): Promise<true | Error> {
  const deadline = Date.now() + 10_000;
  let exited = false;
  child.status.then(() => (exited = true));
  while (Date.now() < deadline) {
    const text = await Deno.readTextFile(log).catch(() => "");
    if (/Server listening on /.test(text)) return true;
    if (exited || /Cannot bind|Bad configuration|fatal|error:/i.test(text)) {
      killGroup(child.pid, "SIGKILL");
      await child.status;
      const stderr = await new Response(child.stderr).text().catch(() => "");
      return new Error(`sshd did not start: ${(text + stderr).trim().slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  killGroup(child.pid, "SIGKILL");
  await child.status;
  await child.stderr.cancel().catch(() => {});
  return new Error("sshd did not start listening within 10 s");
}

async function keygen(path: string): Promise<void> {
  await Deno.remove(path).catch(() => {});
  await Deno.remove(`${path}.pub`).catch(() => {});
  const out = await new Deno.Command(SSH_KEYGEN!, {
    args: ["-q", "-t", "ed25519", "-N", "", "-C", "ops-exec-test", "-f", path],
    stdin: "null",
  }).output();
  if (!out.success) throw new Error(`ssh-keygen: ${new TextDecoder().decode(out.stderr)}`);
}

/** The account to log in as under root: created once, with /bin/sh and no password. */
async function ensureTestAccount(): Promise<string> {
  await ensureAccount({ name: TEST_ACCOUNT, shell: "/bin/sh" });
  return TEST_ACCOUNT;
}

/**
 * sshd reads authorized_keys as the account it logs in: every directory
 * above the state dir must let others through.
 */
async function assertTraversable(dir: string): Promise<void> {
  for (
    let path = dir;
    path !== "/" && path !== ".";
    path = path.slice(0, path.lastIndexOf("/")) || "/"
  ) {
    const mode = (await Deno.stat(path)).mode ?? 0o755;
    if ((mode & 0o001) === 0) {
      throw new Error(
        `sshd state dir ${dir}: ${path} (mode ${
          (mode & 0o777).toString(8)
        }) is not traversable by ` +
          `the test account; use a directory under /tmp or make it o+x`,
      );
    }
  }
}

/** Debian's sshd, run as root, insists on its privilege separation directory. */
async function ensurePrivsepDir(): Promise<void> {
  try {
    await Deno.stat("/run/sshd");
  } catch {
    await Deno.mkdir("/run/sshd", { recursive: true, mode: 0o755 });
  }
}

function currentUser(): string {
  const out = new Deno.Command("id", { args: ["-un"], stdin: "null" }).outputSync();
  return new TextDecoder().decode(out.stdout).trim();
}

/** A port that was free on `hostname` a moment ago. */
export function freePort(hostname: string): number {
  const listener = Deno.listen({ hostname, port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

function bracketed(address: string): string {
  return address.includes(":") ? `[${address}]` : address;
}

function keyPart(publicKeyLine: string): string {
  return publicKeyLine.split(/\s+/).slice(0, 2).join(" ");
}

/** Every descendant of `pid`, from `ps` (Linux and macOS alike). */
async function descendants(pid: number): Promise<number[]> {
  const out = await new Deno.Command("ps", { args: ["-A", "-o", "pid=,ppid="], stdin: "null" })
    .output();
  return descendantsIn(out.stdout, pid);
}

function descendantsSync(pid: number): number[] {
  try {
    const out = new Deno.Command("ps", { args: ["-A", "-o", "pid=,ppid="], stdin: "null" })
      .outputSync();
    return descendantsIn(out.stdout, pid);
  } catch {
    return [];
  }
}

function descendantsIn(psOutput: Uint8Array, pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const line of new TextDecoder().decode(psOutput).split("\n")) {
    const [child, parent] = line.trim().split(/\s+/).map(Number);
    if (!child || !parent) continue;
    children.set(parent, [...(children.get(parent) ?? []), child]);
  }
  const found: number[] = [];
  const queue = [...(children.get(pid) ?? [])];
  while (queue.length > 0) {
    const next = queue.shift()!;
    found.push(next);
    queue.push(...(children.get(next) ?? []));
  }
  return found;
}

function killPid(pid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(pid, signal);
  } catch {
    // Already gone.
  }
}

function killGroup(pgid: number, signal: Deno.Signal): void {
  try {
    Deno.kill(-pgid, signal);
  } catch {
    // Already gone.
  }
}
