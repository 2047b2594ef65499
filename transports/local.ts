import type { CapabilitySet } from "../capability/capability_set.ts";
import { assertAllowed } from "../capability/guard.ts";
import { baseEnvironment, homeDirectory } from "../executor/_env.ts";
import { observeLocalHost } from "../executor/_observe.ts";
import { runProcess, toRunOutput } from "../executor/_spawn.ts";
import type {
  Executor,
  HostObservation,
  LogSink,
  RunOptions,
  RunOutput,
  SyncOpts,
  SyncResult,
} from "../executor/types.ts";
import type { Step } from "../step/step.ts";
import { assertLeadsInside } from "../executor/_resolve.ts";
import {
  checkRsyncProgram,
  gateSync,
  mkpathPlan,
  probeLocalRsync,
  pushDirectory,
  runRsync,
} from "./_rsync.ts";
import type { RsyncFlavour } from "./_rsync_flavour.ts";

/** Options of {@linkcode LocalExec}. */
export interface LocalExecOptions {
  /** The name results and errors give this host. Default `localhost`. */
  host?: string;
  /**
   * The rsync program for push/pull, a name (looked up on the base PATH) or
   * a path. Default `rsync`: on macOS the base PATH puts Homebrew's
   * `/opt/homebrew/bin` (Apple silicon) and `/usr/local/bin` (Intel) before
   * `/usr/bin`, so this is Homebrew's rsync 3.x when it is installed, else
   * the system's `/usr/bin/rsync`, which since macOS 15 is openrsync.
   */
  rsyncProgram?: string;
}

/**
 * Runs steps on this machine, each in its own process group, under a
 * capability set checked before anything starts.
 *
 * @example
 * ```ts
 * import { CapabilitySet, CollectingSink, LocalExec, Step } from "@makenot/ops-exec";
 *
 * await using exec = new LocalExec(CapabilitySet.of("bento.*"));
 * const sink = new CollectingSink();
 * const out = await exec.runStreaming(
 *   Step.shell("bento.build", "echo built; echo warn >&2; exit 3"),
 *   sink,
 * );
 * console.log(out.exitCode, sink.text("stdout")); // 3 "built"
 * ```
 */
export class LocalExec implements Executor {
  /** The name of this host in results and errors. */
  readonly host: string;
  readonly #caps: CapabilitySet;
  readonly #rsyncProgram: string;
  #rsync: Promise<RsyncFlavour> | null = null;

  /**
   * An executor for this machine, scoped to `caps`.
   *
   * @param caps The caller-side grant every call is checked against.
   * @param opts The host name to report, the rsync to use.
   * @throws {ConfigError} When `rsyncProgram` is not a one-line string.
   */
  constructor(caps: CapabilitySet, opts: LocalExecOptions = {}) {
    this.#caps = caps;
    this.host = opts.host ?? "localhost";
    this.#rsyncProgram = checkRsyncProgram(opts.rsyncProgram);
  }

  /** The caller-side grant this executor is scoped to. */
  capabilities(): CapabilitySet {
    return this.#caps;
  }

  /**
   * Runs `step`, delivering its lines to `sink`.
   *
   * @throws {CapabilityDenied} Before anything starts, when the set does not allow the action.
   */
  async runStreaming(step: Step, sink: LogSink, opts: RunOptions = {}): Promise<RunOutput> {
    assertAllowed(this.#caps, step.action, { host: this.host });
    const result = await runProcess({
      argv: step.argv,
      env: { ...baseEnvironment(), ...step.env },
      cwd: step.cwd ?? homeDirectory(),
      stdin: step.stdin,
      timeoutMs: step.timeoutMs,
      killGraceMs: step.killGraceMs,
      signal: opts.signal,
    }, sink);
    return toRunOutput(this.host, step.action, result);
  }

  /**
   * Copies `remotePath` to `localPath` with rsync (both on this machine).
   *
   * @throws {CapabilityDenied} When `sync.pull` on `remotePath` (as written, or where it
   *   leads after symlinks) is not granted.
   */
  pull(remotePath: string, localPath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.pull", localPath, remotePath, opts);
  }

  /**
   * Copies `localPath` to `remotePath` with rsync (both on this machine).
   *
   * @throws {CapabilityDenied} When `sync.push` on `remotePath` (as written, or where it
   *   leads after symlinks) is not granted.
   */
  push(localPath: string, remotePath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.push", localPath, remotePath, opts);
  }

  /**
   * Reads this machine's facts.
   *
   * @throws {CapabilityDenied} When `observe` is not granted.
   */
  async observe(): Promise<HostObservation> {
    assertAllowed(this.#caps, "observe", { host: this.host });
    const roots = this.#caps.syncRoots();
    return await observeLocalHost(this.host, roots.length > 0 ? roots : ["/"]);
  }

  /** Nothing to release for local execution. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  /** Same as {@linkcode LocalExec.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #sync(
    action: "sync.push" | "sync.pull",
    localPath: string,
    remotePath: string,
    opts: SyncOpts,
  ): Promise<SyncResult> {
    const target = gateSync(this.#caps, action, remotePath, this.host);
    // This machine's own paths: checked after symlinks too, as an agent does,
    // before anything (rsync, or the directory made for it) touches them.
    await assertLeadsInside(this.#caps, action, target, this.host);
    opts.signal?.throwIfAborted();
    const probe = this.#rsync ??= probeLocalRsync(this.#rsyncProgram, this.host);
    probe.catch(() => {
      if (this.#rsync === probe) this.#rsync = null;
    });
    const flavour = await probe;
    // Both ends are this program (openrsync runs its receiver as
    // `--rsync-path`, else `rsync` from the PATH).
    const plan = mkpathPlan(action, flavour, flavour);
    if (action === "sync.push" && plan === "none" && !opts.dryRun) {
      const dir = pushDirectory(this.#caps, target);
      if (dir !== null) await Deno.mkdir(dir, { recursive: true });
    }
    return await runRsync({
      host: this.host,
      action,
      localPath,
      remotePath: target,
      program: this.#rsyncProgram,
      local: flavour,
      remote: flavour,
      mkpath: plan === "option",
      rsyncPath: flavour.kind === "openrsync" ? this.#rsyncProgram : undefined,
    }, opts);
  }
}
