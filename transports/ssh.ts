import type { CapabilitySet } from "../capability/capability_set.ts";
import { assertAllowed } from "../capability/guard.ts";
import { ConfigError, TransportError } from "../executor/errors.ts";
import { baseEnvironment } from "../executor/_env.ts";
import { type ProcessResult, runProcess, type StdinHandle } from "../executor/_spawn.ts";
import type {
  Executor,
  HostObservation,
  LogLine,
  LogSink,
  RunOptions,
  RunOutput,
  SyncOpts,
  SyncResult,
} from "../executor/types.ts";
import type { Step } from "../step/step.ts";
import {
  checkRsyncProgram,
  gateSync,
  mkpathPlan,
  probeLocalRsync,
  pushDirectory,
  remoteShellCommand,
  runRsync,
} from "./_rsync.ts";
import { BASELINE_RSYNC, parseRsyncVersion, type RsyncFlavour } from "./_rsync_flavour.ts";
import {
  checkFileExists,
  checkSshOptions,
  checkWord,
  rsyncHost,
  sshFailure,
  sshOptionArgs,
  type SshTarget,
} from "./_ssh_args.ts";
import { hopLog, jumpProxyCommand, readSshFacts, type SshFacts } from "./_ssh_config.ts";
import { parseProbe, probeArgv } from "./_ssh_observe.ts";
import { type SessionEnd, type SessionRun, SshSession } from "./_ssh_session.ts";
import {
  connectCommand,
  isCshFamily,
  parseConnectProbe,
  type RemoteFacts,
  sessionCommand,
  stepCommand,
  supervisorProblem,
} from "./_ssh_remote.ts";
import {
  encodeFrame,
  KILL_REQUEST,
  newNonce,
  type RemoteSupervisor,
  StartGate,
  TrailerStripper,
  wrapperFailure,
} from "./_ssh_wrapper.ts";

/** Options of {@linkcode SshExec}. */
export interface SshExecOptions {
  /** The host: a name, an address, or a `Host` alias of your ssh_config. */
  host: string;
  /** The login name. Default: ssh's own (ssh_config `User`, else your login). */
  user?: string;
  /** The TCP port. Default: ssh's own (ssh_config `Port`, else 22). */
  port?: number;
  /** A private key file. When given, only this key is offered (`IdentitiesOnly=yes`). */
  identityFile?: string;
  /** A known_hosts file to check the host key against instead of `~/.ssh/known_hosts`. */
  knownHostsFile?: string;
  /**
   * An ssh config file to read instead of `~/.ssh/config` (ssh `-F`; `"none"`
   * reads none). Its `Host` aliases, `ProxyJump`, `UserKnownHostsFile` and
   * the like apply as they would to `ssh -F file`.
   */
  configFile?: string;
  /**
   * More ssh_config options, each written `Name=value` and passed as `-o`.
   * They come before SshExec's own defaults, so they win: e.g.
   * `["StrictHostKeyChecking=accept-new"]` or `["ProxyJump=bastion"]`.
   * `ControlMaster`, `ControlPath`, `ControlPersist`, `BatchMode`,
   * `RequestTTY` and the like are managed by SshExec and refused; `Include`
   * belongs in a `configFile`. A ProxyJump's hops (from here or from the
   * config file) are reached with this executor's `identityFile`,
   * `knownHostsFile` and `configFile` too.
   */
  sshOptions?: string[];
  /** How long the multiplexed master outlives its last use, in seconds. Default 60. */
  persistSeconds?: number;
  /** The ssh program. Default `/usr/bin/ssh` where it exists, else `ssh` on the base PATH. */
  sshProgram?: string;
  /**
   * How the remote side supervises a step: `perl` (on macOS and virtually
   * every Linux server), `sh` (POSIX sh and setsid(1); the exact wait
   * status where the host has util-linux `setsid -f -w` or BusyBox `time`,
   * else a status from 129 to 159 reads as a signal), or `auto` (the
   * default: perl where the remote account finds it, else sh). A choice
   * the host cannot run fails the first step with a `protocol` error.
   */
  remoteSupervisor?: RemoteSupervisor;
  /**
   * With the perl supervisor, steps share one long-lived ssh session (the
   * default, `false`): a step is a request on it, not a new session. `true`
   * opens one ssh session per step instead (a per-step supervisor, as the
   * sh supervisor always does): slower, kept for comparison and for hosts
   * where a long-lived session is not wanted.
   */
  sessionPerStep?: boolean;
  /**
   * The local rsync program for push/pull, a name (looked up on the base
   * PATH) or a path. Default `rsync`: on macOS the base PATH puts
   * Homebrew's `/opt/homebrew/bin` (Apple silicon) and `/usr/local/bin`
   * (Intel) before `/usr/bin`, so this is Homebrew's rsync 3.x when it is
   * installed, else the system's `/usr/bin/rsync`, which since macOS 15 is
   * openrsync. The remote side runs the `rsync` its account's PATH finds.
   * Either end may be rsync 3.x or openrsync (see docs/ssh.md).
   */
  rsyncProgram?: string;
}

/** The default of {@linkcode SshExecOptions.persistSeconds}. */
const DEFAULT_PERSIST_SECONDS = 60;
/** How long the remote wrapper may take beyond the step's grace before the local ssh is killed. */
const WRAPPER_MARGIN_MS = 2000;
/** A backstop for establishing the master, beyond ssh's own ConnectTimeout. */
const CONNECT_TIMEOUT_MS = 60_000;
/** How long `observe()` may take. */
const OBSERVE_TIMEOUT_MS = 30_000;

/**
 * Runs steps on a host over the system `ssh`, which authenticates exactly
 * as it does for you (keys, ssh-agent, known_hosts, your ssh_config); ops-exec
 * adds no credentials of its own.
 *
 * One ssh master per SshExec is opened on first use and multiplexes every
 * step, `observe()` and rsync transfer (`ControlMaster=auto`, a private
 * 0700 `ControlPath`, `ControlPersist=persistSeconds`); `close()` ends it.
 * Over the master, one long-lived ssh session runs a small perl supervisor
 * on the host, and each step is a request on it (hosts without perl get an
 * ssh session and a POSIX sh supervisor per step). Either way a step runs in
 * its own process group, with exactly the stated base environment plus
 * `step.env`, no tty (stdout and stderr stay apart); a timeout, a cancel or
 * a dropped connection kills the whole group. The remote account's login
 * shell may be any POSIX shell (sh, bash, dash, ksh, zsh, BusyBox ash, ...)
 * or fish; a csh is refused with a `protocol` error. See docs/ssh.md.
 *
 * @example
 * ```ts
 * import { CapabilitySet, ConsoleSink, SshExec, Step } from "@makenot/ops-exec";
 *
 * await using web = new SshExec(
 *   { host: "web-1.example.com", user: "deploy" },
 *   CapabilitySet.of("sando.*", "observe", "sync.push:/srv/app"),
 * );
 * const out = await web.runStreaming(
 *   Step.shell("sando.promote", "set -e; systemctl --user restart app", { timeoutMs: 60_000 }),
 *   new ConsoleSink({ host: web.host }),
 * );
 * console.log(out.success, out.exitCode);
 * ```
 */
export class SshExec implements Executor {
  /** The host, as given in the options. */
  readonly host: string;
  readonly #caps: CapabilitySet;
  readonly #target: SshTarget;
  readonly #program: string;
  readonly #supervisor: RemoteSupervisor;
  readonly #sessionPerStep: boolean;
  readonly #rsyncProgram: string;
  #resolved: "perl" | "sh" = "sh";
  /** What ssh makes of the options (`ssh -G`), read before the first connection. */
  #facts: SshFacts | null = null;
  /** What the connect probe found on the host (login shell, perl, setsid, waiter). */
  #remote: RemoteFacts | null = null;
  #localRsync: Promise<RsyncFlavour> | null = null;
  #remoteRsync: Promise<RsyncFlavour> | null = null;
  #controlDir: string | null = null;
  #master: Promise<void> | null = null;
  #session: SshSession | null = null;
  #lastUse = 0;
  #active = 0;

  /**
   * Checks the options; connects nothing until the first call.
   *
   * @param opts Where and how to reach the host.
   * @param caps The caller-side grant every call is checked against.
   * @throws {ConfigError} When an option is malformed, or `identityFile` or
   *   `configFile` names no file (the message names the option).
   */
  constructor(opts: SshExecOptions, caps: CapabilitySet) {
    if (typeof opts !== "object" || opts === null) {
      throw new ConfigError("", "SshExec needs an options object with at least a host");
    }
    const persist = opts.persistSeconds ?? DEFAULT_PERSIST_SECONDS;
    if (!Number.isInteger(persist) || persist < 1 || persist > 86_400) {
      throw new ConfigError("persistSeconds", `must be an integer from 1 to 86400, got ${persist}`);
    }
    if (
      opts.port !== undefined &&
      (!Number.isInteger(opts.port) || opts.port < 1 || opts.port > 65535)
    ) {
      throw new ConfigError("port", `must be an integer from 1 to 65535, got ${opts.port}`);
    }
    const supervisor = opts.remoteSupervisor ?? "auto";
    if (!["auto", "perl", "sh"].includes(supervisor)) {
      throw new ConfigError(
        "remoteSupervisor",
        `must be "auto", "perl" or "sh", got ${supervisor}`,
      );
    }
    this.#target = {
      host: checkWord("host", opts.host, true)!,
      user: checkWord("user", opts.user),
      port: opts.port,
      identityFile: checkWord("identityFile", opts.identityFile),
      knownHostsFile: checkWord("knownHostsFile", opts.knownHostsFile),
      configFile: checkWord("configFile", opts.configFile),
      sshOptions: checkSshOptions(opts.sshOptions),
      persistSeconds: persist,
    };
    checkFileExists(
      "identityFile",
      this.#target.identityFile,
      "it is the private key SshExec offers the host: check the path",
    );
    if (this.#target.configFile !== "none") {
      checkFileExists("configFile", this.#target.configFile, "it is the ssh config file (ssh -F)");
    }
    this.#program = checkWord("sshProgram", opts.sshProgram) ?? defaultSshProgram();
    if (opts.sessionPerStep !== undefined && typeof opts.sessionPerStep !== "boolean") {
      throw new ConfigError("sessionPerStep", `must be true or false, got ${opts.sessionPerStep}`);
    }
    this.#supervisor = supervisor;
    this.#sessionPerStep = opts.sessionPerStep ?? false;
    this.#rsyncProgram = checkRsyncProgram(opts.rsyncProgram);
    this.host = this.#target.host;
    this.#caps = caps;
  }

  /** The caller-side grant this executor is scoped to. */
  capabilities(): CapabilitySet {
    return this.#caps;
  }

  /**
   * Runs `step` on the host, delivering its lines to `sink`.
   *
   * @throws {CapabilityDenied} Before any ssh process starts, when the set does not allow the action.
   * @throws {TransportError} When ssh itself fails: `unreachable`, `auth_refused`,
   *   `host_key_changed`, `host_key_unknown`, `connection_lost`, `protocol`. A step's own
   *   non-zero exit (255 included) is a result, never one of these.
   */
  async runStreaming(step: Step, sink: LogSink, opts: RunOptions = {}): Promise<RunOutput> {
    assertAllowed(this.#caps, step.action, { host: this.host });
    if (opts.signal?.aborted) return this.#notStarted(step.action);
    this.#active++;
    try {
      try {
        await this.#connect(opts.signal);
      } catch (error) {
        // Cancelled while the master was being opened: nothing of the step ran.
        if (opts.signal?.aborted) return this.#notStarted(step.action);
        throw error;
      }
      return await this.#runRemote(
        step.action,
        {
          argv: step.argv,
          env: step.env,
          cwd: step.cwd,
          stdin: step.stdin,
          timeoutMs: step.timeoutMs,
          killGraceMs: step.killGraceMs,
        },
        sink,
        opts.signal,
      );
    } finally {
      this.#active--;
      this.#lastUse = Date.now();
    }
  }

  /**
   * Copies `remotePath` on the host to `localPath`, with rsync over the master.
   *
   * @throws {CapabilityDenied} Before rsync starts, when `sync.pull` on `remotePath` is not granted.
   * @throws {TransportError} `sync_failed` when rsync fails (its stderr is in `.detail`).
   */
  pull(remotePath: string, localPath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.pull", localPath, remotePath, opts);
  }

  /**
   * Copies `localPath` to `remotePath` on the host, with rsync over the master.
   *
   * @throws {CapabilityDenied} Before rsync starts, when `sync.push` on `remotePath` is not granted.
   * @throws {TransportError} `sync_failed` when rsync fails (its stderr is in `.detail`).
   */
  push(localPath: string, remotePath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.push", localPath, remotePath, opts);
  }

  /**
   * Reads the host's facts with one POSIX probe (Linux or macOS): hostname,
   * OS, arch, kernel, uptime, load, memory, and disk use of the granted sync
   * roots (or `/`).
   *
   * @throws {CapabilityDenied} When `observe` is not granted.
   * @throws {TransportError} When ssh fails or the probe's output cannot be read.
   */
  async observe(): Promise<HostObservation> {
    assertAllowed(this.#caps, "observe", { host: this.host });
    const granted = this.#caps.syncRoots();
    const roots = granted.length > 0 ? granted : ["/"];
    const stdout: string[] = [];
    const stderr: string[] = [];
    this.#active++;
    try {
      await this.#connect();
      const out = await this.#runRemote("observe", {
        argv: probeArgv(roots),
        env: {},
        timeoutMs: OBSERVE_TIMEOUT_MS,
        killGraceMs: 1000,
      }, {
        write(line: LogLine) {
          (line.stream === "stdout" ? stdout : stderr).push(line.text);
        },
      });
      if (!out.success) {
        const detail = stderr.join("\n").trim();
        throw new TransportError(
          "protocol",
          this.host,
          `the observe probe failed (${describeEnd(out)})${detail ? `: ${detail}` : ""}`,
          { detail },
        );
      }
      return parseProbe(stdout.join("\n"), this.host, roots);
    } finally {
      this.#active--;
      this.#lastUse = Date.now();
    }
  }

  /**
   * Ends the steps' session and the ssh master (`ssh -O exit`) and removes
   * its private directory. Steps still running are killed on the host.
   * Idempotent; a later call opens a new master.
   */
  async close(): Promise<void> {
    const session = this.#session;
    this.#session = null;
    await session?.close();
    const dir = this.#controlDir;
    if (dir === null) return;
    this.#controlDir = null;
    this.#master = null;
    this.#remoteRsync = null;
    await this.#control("exit", dir).catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }

  /** Same as {@linkcode SshExec.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- the master ---------------------------------------------------------

  /**
   * Makes sure a master is up before anything rides it, so that ssh's own
   * failures (refused key, changed host key, no route) surface here, read in
   * full, and never as a step's stderr. A master idle for about its persist
   * time may have exited: check again then.
   */
  async #connect(signal?: AbortSignal): Promise<void> {
    const idle = this.#active <= 1 && this.#lastUse > 0 &&
      Date.now() - this.#lastUse > this.#target.persistSeconds * 1000 - 2000;
    if (this.#master === null || idle) {
      const opening = this.#openMaster();
      this.#master = opening;
      opening.catch(() => {
        if (this.#master === opening) this.#master = null;
      });
    }
    // The master is shared: one caller's cancel stops its own wait, not the opening.
    await raceAbort(this.#master, signal);
  }

  async #openMaster(): Promise<void> {
    // What ssh makes of the options, before anything connects: a rejected
    // option is a ConfigError here, and ProxyJump hops get our options.
    this.#facts ??= await readSshFacts(this.#program, this.#target, this.#sshEnvironment());
    this.#controlDir ??= await Deno.makeTempDir({ dir: "/tmp", prefix: "oe-" });
    await Deno.chmod(this.#controlDir, 0o700);
    const hopLogs = this.#facts.jumps.map((_, i) => hopLog(this.#controlDir!, i));
    // ssh -E appends: each opening starts with empty hop logs.
    await Promise.all(hopLogs.map((path) => Deno.writeTextFile(path, "")));
    const marker = newNonce();
    const lines: LogLine[] = [];
    // One command proves the login shell runs commands, names it, and finds
    // out which supervisor the host can use.
    const result = await runProcess({
      argv: [this.#program, ...this.#sshArgs(), "--", this.host, connectCommand(marker)],
      env: this.#sshEnvironment(),
      killGraceMs: 1000,
      timeoutMs: CONNECT_TIMEOUT_MS,
      ownSession: false,
    }, { write: (line) => void lines.push(line) });
    if (!result.started) {
      throw new TransportError(
        "spawn_failed",
        this.host,
        `cannot run the ssh client ${this.#program}: ${lines.map((l) => l.text).join(" ")}`,
      );
    }
    const stdout = lines.filter((l) => l.stream === "stdout").map((l) => l.text);
    const facts = parseConnectProbe(stdout, marker);
    if (facts) {
      this.#checkLoginShell(facts);
      this.#remote = facts;
      this.#resolved = this.#supervisor === "auto"
        ? (facts.perl ? "perl" : "sh")
        : this.#supervisor;
      return;
    }
    const stderr = lines.filter((l) => l.stream === "stderr").map((l) => l.text).join("\n");
    if (result.timedOut) {
      throw new TransportError(
        "timeout",
        this.host,
        `no ssh connection within ${CONNECT_TIMEOUT_MS / 1000} s`,
        { detail: stderr },
      );
    }
    if (result.exitCode === 255 || stderr !== "") {
      const hops = await Promise.all(this.#facts.jumps.map(async (jump, i) => ({
        spec: jump.spec,
        said: (await Deno.readTextFile(hopLogs[i]).catch(() => "")).replaceAll("\r", ""),
      })));
      throw sshFailure(this.#target, stderr, "connect", {
        knownHostsFiles: this.#facts.knownHostsFiles,
        hops,
      });
    }
    throw new TransportError(
      "protocol",
      this.host,
      `the remote login shell did not run a plain command (exit ${result.exitCode}); ` +
        `SshExec needs a POSIX shell on the remote account`,
      { detail: stdout.join("\n") },
    );
  }

  /** A csh reads none of SshExec's commands as meant: say so, by name, before anything runs. */
  #checkLoginShell(facts: RemoteFacts): void {
    if (!isCshFamily(facts.shell)) return;
    const account = this.#target.user ?? "the remote account";
    throw new TransportError(
      "protocol",
      this.host,
      `the login shell of ${account} is ${facts.shell}, a csh; SshExec needs a POSIX login ` +
        `shell (sh, bash, dash, ksh, zsh, ...) or fish on the remote account: give it one ` +
        `(chsh -s /bin/sh${this.#target.user ? ` ${this.#target.user}` : ""})`,
    );
  }

  /** Runs `ssh -O <command>` against the master; resolves to ssh's exit code. */
  async #control(command: "check" | "exit", dir = this.#controlDir): Promise<number | null> {
    if (dir === null) return null;
    const result = await runProcess({
      argv: [this.#program, ...this.#sshArgs(dir), "-O", command, "--", this.host],
      env: this.#sshEnvironment(),
      killGraceMs: 500,
      timeoutMs: 10_000,
      ownSession: false,
    }, { write() {} });
    return result.exitCode;
  }

  #sshArgs(dir = this.#controlDir!): string[] {
    const jumps = this.#facts?.jumps ?? [];
    const proxy = jumps.length === 0
      ? undefined
      : jumpProxyCommand(this.#program, this.#target, jumps, dir);
    return sshOptionArgs(this.#target, `${dir}/m`, proxy);
  }

  /**
   * ssh's environment: the base one plus the agent socket, so agent keys
   * work as for plain ssh; `SHELL` is sh, which runs a ProxyCommand (the
   * jump hops' commands are quoted for a POSIX shell).
   */
  #sshEnvironment(): Record<string, string> {
    const env = baseEnvironment();
    env.SHELL = "/bin/sh";
    const agent = readEnv("SSH_AUTH_SOCK");
    if (agent) env.SSH_AUTH_SOCK = agent;
    return env;
  }

  // ---- one run --------------------------------------------------------------

  #runRemote(
    action: string,
    run: SessionRun,
    sink: LogSink,
    signal?: AbortSignal,
  ): Promise<RunOutput> {
    const problem = this.#remote && supervisorProblem(this.#supervisor, this.#remote);
    if (problem) {
      // Found when the master opened: nothing of the step is sent.
      return Promise.reject(new TransportError("protocol", this.host, problem));
    }
    return this.#resolved === "perl" && !this.#sessionPerStep
      ? this.#runInSession(action, run, sink, signal)
      : this.#runOwnSession(action, run, sink, signal);
  }

  /** A step as a request on the executor's long-lived session (perl supervisor). */
  async #runInSession(
    action: string,
    run: SessionRun,
    sink: LogSink,
    signal?: AbortSignal,
  ): Promise<RunOutput> {
    const result = await this.#liveSession().run(run, sink, signal);
    return {
      host: this.host,
      action,
      exitCode: result.status?.exitCode ?? null,
      signal: result.status?.signal ?? null,
      success: result.status?.exitCode === 0 && !result.timedOut && !result.cancelled,
      timedOut: result.timedOut,
      cancelled: result.cancelled,
      durationMs: result.durationMs,
      lines: result.lines,
    };
  }

  /** The session steps are sent on: the open one, or a new one over the master. */
  #liveSession(): SshSession {
    if (this.#session?.usable) return this.#session;
    if (this.#controlDir === null) {
      throw new TransportError("connection_lost", this.host, "the executor was closed");
    }
    this.#session = new SshSession({
      argv: [this.#program, ...this.#sshArgs(), "--", this.host, sessionCommand()],
      env: this.#sshEnvironment(),
      // An idle session lets the master's own ControlPersist clock run.
      idleMs: this.#target.persistSeconds * 1000,
      lost: (end) => this.#sessionLost(end),
    });
    return this.#session;
  }

  /** The error a step fails with when its session ended before the step's status came. */
  async #sessionLost(end: SessionEnd): Promise<Error> {
    const detail = end.stderr;
    if (end.closed) {
      return new TransportError(
        "connection_lost",
        this.host,
        "the executor was closed while the step ran; the remote supervisor kills its process group",
        { detail },
      );
    }
    if (!end.started && end.reason === null && end.exitCode !== 255 && end.signal === null) {
      return new TransportError(
        "protocol",
        this.host,
        `the remote supervisor did not start (exit ${end.exitCode}); it needs perl on the ` +
          `remote account's PATH (remoteSupervisor: "sh" does without)${
            detail ? `: ${detail}` : ""
          }`,
        { detail },
      );
    }
    if (end.protocolError) {
      return new TransportError(
        "protocol",
        this.host,
        `the remote supervisor broke its framing (${end.reason}); its steps were killed`,
        { detail },
      );
    }
    const masterUp = (await this.#control("check")) === 0;
    if (!masterUp) this.#master = null;
    // Before the supervisor said hello, ssh's own words say what failed (this
    // session may have had to open a new master); after it, the connection was lost.
    if (!end.started) {
      const error = sshFailure(this.#target, detail, "step");
      if (!(error instanceof TransportError) || error.kind !== "connection_lost") return error;
    }
    const how = end.reason ??
      (end.signal ? `ssh killed by ${end.signal}` : `ssh exit ${end.exitCode}`);
    return new TransportError(
      "connection_lost",
      this.host,
      `the ssh session ended (${how}) before the step reported its status; the master is ${
        masterUp ? "still up" : "gone"
      }. The remote supervisor kills the process groups of its steps when its connection closes.${
        detail ? ` ssh said: ${detail.split("\n").slice(-2).join(" / ")}` : ""
      }`,
      { detail },
    );
  }

  /** A step in an ssh session of its own (the per-step perl or sh supervisor). */
  async #runOwnSession(
    action: string,
    run: SessionRun,
    sink: LogSink,
    signal?: AbortSignal,
  ): Promise<RunOutput> {
    const nonce = newNonce();
    const started = { stdout: new StartGate(nonce), stderr: new StartGate(nonce) };
    const trailer = new TrailerStripper(nonce);
    const tail = new StderrTail(sink);
    const result = await runProcess({
      argv: [this.#program, ...this.#sshArgs(), "--", this.host, stepCommand(this.#resolved)],
      env: this.#sshEnvironment(),
      stdin: encodeFrame({
        nonce,
        waiter: this.#remote?.waiter ?? "none",
        killGraceMs: run.killGraceMs,
        argv: run.argv,
        env: run.env,
        cwd: run.cwd,
        stdin: run.stdin,
      }),
      keepStdinOpen: true,
      ownSession: false,
      timeoutMs: run.timeoutMs,
      killGraceMs: run.killGraceMs,
      signal,
      stdoutTransform: started.stdout.transform,
      stderrTransform: pipeline(started.stderr.transform, trailer.transform),
      terminate: (child, graceMs, stdin) => stopRemote(child, graceMs, stdin),
    }, tail);
    return await this.#outcome(action, result, trailer, tail, started);
  }

  /** Reads the run's outcome: the wrapper's trailer when there is one, else what ssh did. */
  async #outcome(
    action: string,
    result: ProcessResult,
    trailer: TrailerStripper,
    tail: StderrTail,
    started: { stdout: StartGate; stderr: StartGate },
  ): Promise<RunOutput> {
    const output = (exitCode: number | null, signal: string | null): RunOutput => ({
      host: this.host,
      action,
      exitCode,
      signal,
      success: exitCode === 0 && !result.timedOut && !result.cancelled,
      timedOut: result.timedOut,
      cancelled: result.cancelled,
      durationMs: result.durationMs,
      lines: result.lines,
    });
    if (trailer.status) return output(trailer.status.exitCode, trailer.status.signal);
    // No trailer: the wrapper never finished. When we stopped the run, the
    // wrapper had the grace and a margin to answer and did not: the
    // connection is gone and the step's fate on the host is unknown.
    if (result.timedOut || result.cancelled) return output(null, null);
    // Before the start marker, stderr carried ssh's and the supervisor's own
    // words (and rc-file output), none of it the step's.
    const detail = [started.stderr.junk, tail.text(), started.stdout.junk]
      .map((text) => text.trim()).filter(Boolean).join("\n");
    if (result.exitCode === 255 || result.signal !== null) {
      const masterUp = (await this.#control("check")) === 0;
      if (!masterUp) this.#master = null;
      const error = sshFailure(this.#target, detail, "step");
      if (error instanceof TransportError && error.kind !== "connection_lost") throw error;
      throw new TransportError(
        "connection_lost",
        this.host,
        `the ssh session ended (${
          result.signal ? `ssh killed by ${result.signal}` : "ssh exit 255"
        }) before the step reported its status; the master is ${
          masterUp ? "still up" : "gone"
        }. The remote wrapper kills the step's process group when its connection closes.${
          detail ? ` ssh said: ${detail.split("\n").slice(-2).join(" / ")}` : ""
        }`,
        { detail },
      );
    }
    throw wrapperFailure(this.host, result.exitCode, detail);
  }

  #notStarted(action: string): RunOutput {
    return {
      host: this.host,
      action,
      exitCode: null,
      signal: null,
      success: false,
      timedOut: false,
      cancelled: true,
      durationMs: 0,
      lines: { stdout: 0, stderr: 0 },
    };
  }

  // ---- rsync ----------------------------------------------------------------

  async #sync(
    action: "sync.push" | "sync.pull",
    localPath: string,
    remotePath: string,
    opts: SyncOpts,
  ): Promise<SyncResult> {
    const target = gateSync(this.#caps, action, remotePath, this.host);
    opts.signal?.throwIfAborted();
    this.#active++;
    try {
      await this.#connect(opts.signal);
      const [local, remote] = await Promise.all([this.#localFlavour(), this.#remoteFlavour()]);
      const plan = mkpathPlan(action, local, remote);
      if (action === "sync.push" && plan === "none" && !opts.dryRun) {
        await this.#makeRemoteDirectory(target, opts.signal);
      }
      return await runRsync({
        host: this.host,
        action,
        localPath,
        remotePath: target,
        remotePrefix: `${rsyncHost(this.host)}:`,
        remoteShellParsesPath: true,
        program: this.#rsyncProgram,
        local,
        remote,
        mkpath: plan === "option",
        remoteShell: await remoteShellCommand([this.#program, ...this.#sshArgs()], {
          local,
          scriptDir: this.#controlDir!,
        }),
        // What the remote account's PATH finds, as probed; with --mkpath
        // added where the receiver knows it and the local rsync cannot send it.
        rsyncPath: plan === "inject"
          ? "rsync --mkpath"
          : local.kind === "openrsync"
          ? "rsync"
          : undefined,
        env: this.#sshEnvironment(),
      }, opts);
    } finally {
      this.#active--;
      this.#lastUse = Date.now();
    }
  }

  /** What the local rsync is (asked once). */
  #localFlavour(): Promise<RsyncFlavour> {
    const probe = this.#localRsync ??= probeLocalRsync(this.#rsyncProgram, this.host);
    probe.catch(() => {
      if (this.#localRsync === probe) this.#localRsync = null;
    });
    return probe;
  }

  /**
   * What `rsync` is on the remote account's PATH, found the way rsync's own
   * `rsync --server` is (a command over the master, through the login
   * shell). Asked once per master.
   */
  #remoteFlavour(): Promise<RsyncFlavour> {
    const probe = this.#remoteRsync ??= this.#probeRemoteRsync();
    probe.catch(() => {
      if (this.#remoteRsync === probe) this.#remoteRsync = null;
    });
    return probe;
  }

  async #probeRemoteRsync(): Promise<RsyncFlavour> {
    const lines: LogLine[] = [];
    const result = await runProcess({
      argv: [this.#program, ...this.#sshArgs(), "--", this.host, "rsync --version"],
      env: this.#sshEnvironment(),
      killGraceMs: 1000,
      timeoutMs: OBSERVE_TIMEOUT_MS,
      ownSession: false,
    }, { write: (line) => void lines.push(line) });
    const text = lines.map((line) => line.text).join("\n");
    const flavour = parseRsyncVersion(text);
    if (flavour) return flavour;
    const stderr = lines.filter((l) => l.stream === "stderr").map((l) => l.text).join("\n");
    if (result.exitCode === 255) throw sshFailure(this.#target, stderr, "step");
    if (result.exitCode === 127 || /not found/i.test(stderr)) {
      throw new TransportError(
        "sync_failed",
        this.host,
        `the remote account has no rsync on its PATH: install rsync on ${this.host}` +
          `${stderr ? ` (${stderr.split("\n").slice(-1)[0]})` : ""}`,
        { detail: text },
      );
    }
    // An rsync that answers in words we do not know: assume the oldest 3.x.
    return BASELINE_RSYNC;
  }

  /**
   * For a receiver that cannot create missing parents (no --mkpath): makes
   * the gated target directory (or its parent, where the same grant covers
   * it) with `mkdir -p`, as a step over the master.
   */
  async #makeRemoteDirectory(target: string, signal?: AbortSignal): Promise<void> {
    const dir = pushDirectory(this.#caps, target);
    if (dir === null) return;
    const stderr: string[] = [];
    const out = await this.#runRemote("sync.push", {
      argv: ["mkdir", "-p", "--", dir],
      env: {},
      timeoutMs: OBSERVE_TIMEOUT_MS,
      killGraceMs: 1000,
    }, {
      write(line: LogLine) {
        if (line.stream === "stderr") stderr.push(line.text);
      },
    }, signal);
    if (out.cancelled) throw signal?.reason;
    if (!out.success) {
      const detail = stderr.join("\n").trim();
      throw new TransportError(
        "sync_failed",
        this.host,
        `sync.push ${target}: cannot create ${dir} (${describeEnd(out)})${
          detail ? `: ${detail.split("\n")[0]}` : ""
        }`,
        { detail },
      );
    }
  }
}

/**
 * Stops a remote step: asks the wrapper (a byte on its stdin) to SIGTERM the
 * step's group, wait the grace and SIGKILL it. When the wrapper has not
 * answered by the grace plus a margin, the connection is presumed gone: the
 * local ssh is killed, which closes the session, and the wrapper kills the
 * group when it sees its stdin close.
 */
async function stopRemote(
  child: Deno.ChildProcess,
  graceMs: number,
  stdin: StdinHandle,
): Promise<void> {
  await stdin.write(KILL_REQUEST);
  if (await exitsWithin(child, graceMs + WRAPPER_MARGIN_MS)) return;
  try {
    child.kill("SIGTERM");
  } catch {
    // Already gone.
  }
  if (await exitsWithin(child, 1000)) return;
  try {
    child.kill("SIGKILL");
  } catch {
    // Already gone.
  }
}

/** Two transforms as one. */
function pipeline(
  first: TransformStream<Uint8Array, Uint8Array>,
  second: TransformStream<Uint8Array, Uint8Array>,
): ReadableWritablePair<Uint8Array, Uint8Array> {
  return { writable: first.writable, readable: first.readable.pipeThrough(second) };
}

/** `promise`, or the signal's reason as soon as it aborts. */
async function raceAbort<T>(promise: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return await promise;
  signal.throwIfAborted();
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, aborted]);
  } finally {
    signal.removeEventListener("abort", onAbort!);
  }
}

async function exitsWithin(child: Deno.ChildProcess, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    child.status.then(() => true),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms))),
  ]);
  clearTimeout(timer);
  return outcome;
}

/** Passes lines on to the sink, keeping the last stderr lines for a diagnostic. */
class StderrTail implements LogSink {
  readonly #sink: LogSink;
  readonly #lines: string[] = [];

  constructor(sink: LogSink) {
    this.#sink = sink;
  }

  write(line: LogLine): void | Promise<void> {
    if (line.stream === "stderr") {
      this.#lines.push(line.text.slice(0, 2000));
      if (this.#lines.length > 20) this.#lines.shift();
    }
    return this.#sink.write(line);
  }

  text(): string {
    return this.#lines.join("\n").trim();
  }
}

function describeEnd(out: RunOutput): string {
  if (out.timedOut) return "timed out";
  return out.signal ? `killed by ${out.signal}` : `exit ${out.exitCode}`;
}

function defaultSshProgram(): string {
  try {
    if (Deno.statSync("/usr/bin/ssh").isFile) return "/usr/bin/ssh";
  } catch {
    // Not there (or not readable under this permission set): use the PATH.
  }
  return "ssh";
}

function readEnv(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}
