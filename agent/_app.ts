// The agent's HTTP surface (SPEC §5) as a Hono app: identity from the
// connection, grants from the config and CapMap under the host's ceiling, an
// audit line per decision, steps through the shared spawn core.

import { Hono } from "npm:hono@^4.7.0";
import type { Context } from "npm:hono@^4.7.0";
import { StepError } from "../executor/errors.ts";
import { baseEnvironment, homeDirectory } from "../executor/_env.ts";
import { execViaShell } from "../executor/_exec_via_shell.ts";
import { observeLocalHost } from "../executor/_observe.ts";
import { type ProcessResult, runProcess, signalGroup } from "../executor/_spawn.ts";
import type { HostObservation } from "../executor/types.ts";
import { Step } from "../step/step.ts";
import {
  type CapabilitiesBody,
  type ErrorBody,
  type ExitEvent,
  type HealthBody,
  HEARTBEAT_HEADER,
  heartbeatInterval,
  NDJSON_TYPE,
  PATHS,
  PROTOCOL_VERSION,
  type RsyncFlavour,
} from "../transports/_agent_protocol.ts";
import type { AgentConfig } from "./config.ts";
import { AuditLog, type AuditRecord, stepDigest } from "./_audit.ts";
import type { Refusal } from "./_front.ts";
import { chooseNamespaceMode } from "./_namespaces.ts";
import { RefusalAudit } from "./_refusals.ts";
import { isolatedArgv, setUpStepIsolation, type StepIsolation } from "./_step_isolation.ts";
import { probeSystemLog, SystemLog } from "./_system_log.ts";
import { denialReason, type Entitlement, entitlement } from "./_grants.ts";
import {
  createIdentityProvider,
  type IdentityProvider,
  IdentityUnavailable,
  UnknownPeer,
} from "./_identity.ts";
import { formatHostPort, unmapAddress } from "./_net.ts";
import { EventStream, LineBatcher } from "./_stream.ts";
import { type CallerIdentity, summarize } from "./_whois.ts";
import { AGENT_VERSION } from "./_version.ts";
import {
  agentRsync,
  parseSyncRequest,
  RsyncArgvError,
  runSyncTunnel,
  type SyncRequest,
} from "./_sync.ts";
import {
  describeSync,
  isDryRun,
  probeConfinement,
  probeRsync,
  syncCommand,
  SyncRoots,
  type SyncSetup,
} from "./_sync_confine.ts";
import { resolvePaths } from "../executor/_resolve.ts";
import { ConfigError } from "../executor/errors.ts";

/** Hono's environment for the agent: the connection info of `Deno.serve`. */
export type AgentEnv = { Bindings: Deno.ServeHandlerInfo<Deno.NetAddr> };

/**
 * The argv the agent spawns for a step. Exec steps run through the shell
 * too: under the agent's permission set Deno may spawn only what its `run`
 * scope names, and `/bin/sh` is the one program every step needs.
 */
export function agentArgv(step: Step): string[] {
  return step.kind === "shell" ? [...step.argv] : execViaShell(step.argv);
}

/**
 * One of the `max_concurrent` slots, held by a running step (or transfer).
 * Release it once the work has ended and been audited.
 */
export interface Slot {
  /** Called when the agent shuts down: end the work (with its grace). Set it at once. */
  onStop: ((reason: string) => void) | null;
  /** Gives the slot back. Idempotent. */
  release(): void;
}

interface HeldSlot {
  slot: Slot;
  released: Promise<void>;
}

/** An identified request: who, from where, and what they may do. */
export interface RequestContext {
  /** The caller. */
  caller: CallerIdentity;
  /** The peer address, `IP:PORT`. */
  from: string;
  /** What the caller may do here. */
  grant: Entitlement;
  /** `performance.now()` when the request arrived. */
  started: number;
  /** `METHOD /path`. */
  endpoint: string;
}

/**
 * The agent's state and its Hono app. One per served config.
 */
export class AgentCore {
  readonly config: AgentConfig;
  readonly app: Hono<AgentEnv>;
  readonly audit: AuditLog;
  readonly provider: IdentityProvider;
  readonly version: string;
  /** How transfers are confined here (`null` when the ceiling grants no sync). */
  readonly sync: SyncSetup | null;
  readonly #syncRoots: SyncRoots;
  /** The rsync `/v1/sync` runs (`agent.rsync`), as its `--version` told at start; `null` if none runs. */
  readonly rsync: RsyncFlavour | null;
  /** How steps are isolated (`null`: `step_isolation = "none"`). */
  readonly isolation: StepIsolation | null;
  /** Where the audit lines are copied, in words (the start-up line says it). */
  readonly auditCopy: string;
  readonly #refusals: RefusalAudit;
  readonly #runs = new Set<HeldSlot>();
  #stopping: string | null = null;

  private constructor(
    config: AgentConfig,
    audit: { log: AuditLog; copy: string },
    provider: IdentityProvider,
    sync: { setup: SyncSetup | null; roots: SyncRoots },
    rsync: RsyncFlavour | null,
    isolation: StepIsolation | null,
  ) {
    this.config = config;
    this.audit = audit.log;
    this.auditCopy = audit.copy;
    this.#refusals = new RefusalAudit(audit.log);
    this.provider = provider;
    this.version = AGENT_VERSION;
    this.sync = sync.setup;
    this.#syncRoots = sync.roots;
    this.rsync = rsync;
    this.isolation = isolation;
    this.app = this.#routes();
  }

  /** The app's fetch handler, for `Deno.serve`. */
  readonly fetch = (
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ): Response | Promise<Response> => this.app.fetch(request, info);

  /**
   * Opens the audit log and the identity provider for `config`, resolves its
   * sync roots and, when the ceiling grants any sync, finds out how
   * transfers will be confined.
   *
   * @throws {ConfigError} `agent.sync_confinement` or `agent.step_isolation`
   *   when it says "namespace" and this host cannot make them;
   *   `agent.audit_syslog` when it is true and the system log cannot be reached.
   */
  static async create(config: AgentConfig): Promise<AgentCore> {
    const rsync = await agentRsync(config.agent.rsync);
    const [setup, roots, isolation, systemLog] = await Promise.all([
      syncSetup(config, rsync),
      SyncRoots.resolve([config.ceiling, ...config.grants.map((grant) => grant.allow)]),
      config.agent.stepIsolation === "none"
        ? Promise.resolve(null)
        : setUpStepIsolation(config.agent.auditLog),
      openSystemLog(config),
    ]);
    const log = await AuditLog.open(config.agent.auditLog, { systemLog: systemLog.log });
    const provider = createIdentityProvider(config.identity);
    return new AgentCore(
      config,
      { log, copy: systemLog.copy },
      provider,
      { setup, roots },
      rsync,
      isolation,
    );
  }

  /**
   * Audits a connection the front closed before it reached the app, at a
   * bounded rate (see `_refusals.ts`).
   */
  refused(refusal: Refusal): void {
    this.#refusals.record(refusal);
  }

  /** How steps are kept apart here, in words. */
  get stepIsolation(): string {
    const isolation = this.isolation;
    if (isolation === null) {
      return 'not isolated (step_isolation = "none"): each is a process of the agent\'s account among the others';
    }
    return `each in PID and mount namespaces of its own with a private /proc${
      isolation.mode.userNamespace ? ", inside a user namespace (the agent is not root)" : ""
    }; ${isolation.hide} covered`;
  }

  /** How transfers are confined here, in words; `null` when the ceiling grants no sync. */
  get syncConfinement(): string | null {
    return this.sync === null ? null : describeSync(this.sync);
  }

  /** Steps (and later transfers) running now. */
  get running(): number {
    return this.#runs.size;
  }

  /**
   * Cancels every running step (SIGTERM to its group, its `killGraceMs`,
   * SIGKILL) and resolves once each has ended and been audited. New runs are
   * refused from now on.
   */
  async stopRuns(reason: string): Promise<void> {
    this.#stopping ??= reason;
    const runs = [...this.#runs];
    for (const run of runs) run.slot.onStop?.(reason);
    await Promise.all(runs.map((run) => run.released));
  }

  /** Closes the audit log and the provider. Call after {@linkcode AgentCore.stopRuns}. */
  async close(): Promise<void> {
    this.#refusals.close();
    await this.audit.close();
    this.provider.close();
  }

  #routes(): Hono<AgentEnv> {
    const app = new Hono<AgentEnv>();
    app.get(
      PATHS.health,
      (c) =>
        c.json(
          {
            ok: true,
            version: this.version,
            protocol: PROTOCOL_VERSION,
            rsync: this.rsync,
          } satisfies HealthBody,
        ),
    );
    app.get(PATHS.capabilities, (c) => this.#capabilities(c));
    app.post(PATHS.run, (c) => this.#run(c));
    app.get(PATHS.observe, (c) => this.#observe(c));
    app.get(PATHS.sync, (c) => this.#sync(c));
    app.notFound((c) =>
      errorResponse(404, {
        code: "not_found",
        message: `${c.req.method} ${c.req.path} is not an endpoint of ops-agent ${this.version}`,
      })
    );
    app.onError((error, c) => {
      console.error(`ops-agent: ${c.req.method} ${c.req.path}: ${error?.stack ?? error}`);
      return errorResponse(500, {
        code: "internal_error",
        message: `the agent failed: ${error instanceof Error ? error.message : error}`,
      });
    });
    return app;
  }

  /**
   * Identifies the caller from the connection's peer address (never from a
   * header). Answers 401 (unknown peer) or 503 (provider down) itself, with
   * an audit line, and returns that response instead of a context.
   */
  async identify(c: Context<AgentEnv>): Promise<RequestContext | Response> {
    const started = performance.now();
    const endpoint = `${c.req.method} ${c.req.path}`;
    const remote = c.env?.remoteAddr;
    if (!remote || typeof remote.hostname !== "string") {
      return errorResponse(401, {
        code: "unknown_peer",
        message: "the connection has no peer address to identify",
      });
    }
    const ip = unmapAddress(remote.hostname);
    const from = formatHostPort(ip, remote.port);
    try {
      const caller = await this.provider.identify(ip, remote.port);
      return { caller, from, grant: entitlement(this.config, caller), started, endpoint };
    } catch (error) {
      const unknown = error instanceof UnknownPeer;
      if (!unknown && !(error instanceof IdentityUnavailable)) throw error;
      const message = error instanceof Error ? error.message : String(error);
      await this.audit.write({
        time: new Date().toISOString(),
        endpoint,
        from,
        who: null,
        decision: "denied",
        reason: unknown ? `unknown peer: ${message}` : `identity unavailable: ${message}`,
        status: unknown ? 401 : 503,
        durationMs: performance.now() - started,
      });
      return errorResponse(unknown ? 401 : 503, {
        code: unknown ? "unknown_peer" : "identity_unavailable",
        message: unknown
          ? `the agent does not know this caller: ${message}`
          : `the agent cannot identify callers right now: ${message}`,
      });
    }
  }

  /**
   * Answers 403 with an audit line unless the caller may do `action` (on
   * `path`, for sync actions). Returns `null` when allowed.
   */
  async deny(
    ctx: RequestContext,
    action: string,
    extra: Partial<AuditRecord> & { path?: string } = {},
  ): Promise<Response | null> {
    const reason = denialReason(ctx.grant, action, extra.path);
    if (reason === null) return null;
    await this.auditLine(ctx, { ...extra, action, decision: "denied", reason, status: 403 });
    return errorResponse(403, {
      code: "capability_denied",
      message: `action "${action}"${
        extra.path ? ` on path ${extra.path}` : ""
      } is not allowed by this agent: ${reason}`,
      action,
      reason,
      ...(extra.path ? { path: extra.path } : {}),
    });
  }

  /** Writes one audit line for an identified request. */
  auditLine(
    ctx: RequestContext,
    record: Omit<AuditRecord, "time" | "endpoint" | "from" | "who">,
  ): Promise<void> {
    const rest = record;
    return this.audit.write({
      time: new Date().toISOString(),
      endpoint: ctx.endpoint,
      from: ctx.from,
      who: summarize(ctx.caller),
      ...rest,
      durationMs: rest.durationMs ?? performance.now() - ctx.started,
    });
  }

  /**
   * Takes one of the `max_concurrent` slots for a step or transfer, or
   * answers 429 (503 while shutting down) with an audit line. Nothing may
   * start without a slot.
   */
  async admit(
    ctx: RequestContext,
    action: string,
    about: Partial<AuditRecord> = {},
  ): Promise<Slot | Response> {
    const limit = this.config.agent.maxConcurrent;
    if (this.#stopping === null && this.#runs.size < limit) {
      let done!: () => void;
      const released = new Promise<void>((resolve) => (done = resolve));
      const held: HeldSlot = {
        released,
        slot: {
          onStop: null,
          release: () => {
            this.#runs.delete(held);
            done();
          },
        },
      };
      this.#runs.add(held);
      return held.slot;
    }
    const stopping = this.#stopping !== null;
    await this.auditLine(ctx, {
      ...about,
      action,
      decision: "denied",
      reason: this.#stopping ?? `over max_concurrent (${limit})`,
      status: stopping ? 503 : 429,
    });
    return stopping
      ? errorResponse(503, { code: "shutting_down", message: "the agent is shutting down" })
      : errorResponse(429, {
        code: "too_many_steps",
        message:
          `the agent is running ${this.#runs.size} steps, its limit (agent.max_concurrent); retry later`,
      }, { "retry-after": "1" });
  }

  async #capabilities(c: Context<AgentEnv>): Promise<Response> {
    const ctx = await this.identify(c);
    if (ctx instanceof Response) return ctx;
    await this.auditLine(ctx, { decision: "allowed", status: 200 });
    return c.json(
      {
        capabilities: ctx.grant.effective.toJSON(),
        caller: summarize(ctx.caller),
      } satisfies CapabilitiesBody,
    );
  }

  async #observe(c: Context<AgentEnv>): Promise<Response> {
    const ctx = await this.identify(c);
    if (ctx instanceof Response) return ctx;
    const denied = await this.deny(ctx, "observe");
    if (denied) return denied;
    // df may hang (a dead NFS mount): it takes a slot like a step, and has a deadline.
    const slot = await this.admit(ctx, "observe");
    if (slot instanceof Response) return slot;
    const roots = ctx.grant.effective.syncRoots();
    const abort = new AbortController();
    slot.onStop = () => abort.abort();
    const work = Promise.all([
      observeLocalHost(Deno.hostname(), roots.length > 0 ? roots : ["/"], {
        signal: abort.signal,
      }),
      this.provider.self(this.config.agent.listen.hostname),
    ]);
    // The slot is held until df has really ended (one stuck in a dead mount
    // may outlive its SIGTERM): stuck dfs fill slots, never the process table.
    void work.catch(() => {}).finally(() => slot.release());
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timedOut = new Promise<null>((resolve) => {
      timer = setTimeout(() => {
        abort.abort();
        resolve(null);
      }, OBSERVE_TIMEOUT_MS);
    });
    const done = await Promise.race([
      work.catch((error) => {
        if (abort.signal.aborted) return null;
        throw error;
      }),
      timedOut,
    ]).finally(() => clearTimeout(timer));
    if (done === null) {
      const reason = `df did not answer within ${OBSERVE_TIMEOUT_MS / 1000} s`;
      await this.auditLine(ctx, { action: "observe", decision: "denied", status: 504, reason });
      return errorResponse(504, {
        code: "observe_timeout",
        message: `the agent could not observe this host: ${reason}`,
      });
    }
    const [facts, self] = done;
    const observation: HostObservation = {
      ...facts,
      agent: { version: this.version, ...(self ? { tailnetSelf: self } : {}) },
    };
    await this.auditLine(ctx, { action: "observe", decision: "allowed", status: 200 });
    return c.json(observation);
  }

  /**
   * The rsync tunnel (SPEC §6): after whois, only a genuine `rsync --server`
   * vector from the allowlist; `sync.push` (receiver) or `sync.pull`
   * (`--sender`) checked on the path as asked and on where it really leads
   * (after `..` and symlinks); then `rsync --server` runs with the WebSocket
   * as its stdin/stdout. Every refusal happens before the upgrade, as an HTTP
   * status with an audit line.
   */
  async #sync(c: Context<AgentEnv>): Promise<Response> {
    const ctx = await this.identify(c);
    if (ctx instanceof Response) return ctx;
    if (c.req.header("upgrade")?.toLowerCase() !== "websocket") {
      return await this.#malformed(ctx, `${PATHS.sync} expects a WebSocket upgrade`);
    }
    let request: SyncRequest;
    try {
      request = parseSyncRequest(c.req.query("argv"));
    } catch (error) {
      if (!(error instanceof RsyncArgvError)) throw error;
      return await this.#malformed(ctx, error.message);
    }
    const { action, path } = request;
    const denied = await this.deny(ctx, action, { path });
    if (denied) return denied;
    const [resolved] = await resolvePaths([path]);
    const root = resolved === null
      ? null
      : this.#syncRoots.confinementRoot(ctx.grant.effective, action, resolved);
    // (this.sync is null only when the ceiling grants no sync: refused above.)
    if (resolved === null || root === null || this.sync === null) {
      const reason = resolved === null
        ? "the path cannot be resolved"
        : `the path leads to ${resolved} (through a symlink), outside the granted roots`;
      await this.auditLine(ctx, { action, path, decision: "denied", reason, status: 403 });
      return errorResponse(403, {
        code: "capability_denied",
        message: `action "${action}" on path ${path} is not allowed by this agent: ${reason}`,
        action,
        path,
        reason,
      });
    }
    const slot = await this.admit(ctx, action, { path });
    if (slot instanceof Response) return slot;

    const setup = this.sync;
    // Deno pings a silent peer and closes one that does not answer: a dead
    // peer within 30 s (or the idle limit); a live but silent one is ended by
    // rsync's own --timeout.
    const { socket, response } = Deno.upgradeWebSocket(c.req.raw, {
      idleTimeout: Math.min(setup.idleTimeoutS, 30),
    });
    const abort = new AbortController();
    let stopReason: string | undefined;
    slot.onStop = (reason) => {
      stopReason ??= reason;
      abort.abort();
    };
    const target = `${resolved}${request.trailingSlash && resolved !== "/" ? "/" : ""}`;
    const dryRun = isDryRun(request.argv);
    const argv = syncCommand({ action, root, target, dryRun }, request.argv, setup);
    const confinement = root === "/" ? "none" : setup.confinement;
    const about = { action, path, resolvedPath: resolved, root, confinement };
    // The transfer is on record before rsync starts.
    await this.auditLine(ctx, { ...about, decision: "allowed", status: 101, event: "start" });
    void runSyncTunnel(socket, argv, { signal: abort.signal })
      .then(async (ended) => {
        const result = ended.result;
        await this.auditLine(ctx, {
          ...about,
          decision: "allowed",
          status: 101,
          event: "end",
          exitCode: result?.exitCode ?? null,
          signal: result?.signal ?? null,
          cancelled: result?.cancelled ?? false,
          bytesIn: ended.bytesIn,
          bytesOut: ended.bytesOut,
          ...(stopReason
            ? { reason: stopReason }
            : ended.violation
            ? { reason: `cut off: ${ended.violation}` }
            : ended.failure
            ? { reason: `rsync could not run: ${describe(ended.failure)}` }
            : result?.exitCode
            ? { reason: ended.stderr.slice(-3).join(" / ") }
            : {}),
        });
      })
      .catch((error) => console.error(`ops-agent: sync ${path}: ${describe(error)}`))
      .finally(() => slot.release());
    return response;
  }

  async #run(c: Context<AgentEnv>): Promise<Response> {
    const ctx = await this.identify(c);
    if (ctx instanceof Response) return ctx;
    const body = await readLimited(
      c.req.raw,
      this.config.agent.maxRequestBytes,
      this.config.agent.requestTimeoutMs,
    );
    if (body === "timeout") {
      const limit = this.config.agent.requestTimeoutMs / 1000;
      await this.auditLine(ctx, {
        decision: "denied",
        reason: `the request body did not arrive within ${limit} s`,
        status: 408,
      });
      return errorResponse(408, {
        code: "request_timeout",
        message:
          `the request did not arrive within this agent's limit of ${limit} s (agent.request_timeout)`,
      }, { connection: "close" });
    }
    if (body === null) {
      const limit = this.config.agent.maxRequestBytes;
      await this.auditLine(ctx, {
        decision: "denied",
        reason: `request body over ${limit} bytes`,
        status: 413,
      });
      return errorResponse(413, {
        code: "request_too_large",
        message:
          `the request body is over this agent's limit of ${limit} bytes (agent.max_request_bytes)`,
      });
    }
    let json: unknown;
    try {
      json = JSON.parse(new TextDecoder().decode(body));
    } catch {
      return await this.#malformed(ctx, "the body is not JSON: send Step.toJSON()");
    }
    let step: Step;
    try {
      step = Step.fromJSON(json);
    } catch (error) {
      if (!(error instanceof StepError)) throw error;
      return await this.#malformed(ctx, error.message, error.field);
    }
    const digest = await stepDigest(json as Record<string, unknown>);
    const about = { digest, ...(step.label !== undefined ? { label: step.label } : {}) };
    const denied = await this.deny(ctx, step.action, about);
    if (denied) return denied;
    const slot = await this.admit(ctx, step.action, about);
    if (slot instanceof Response) return slot;
    return this.#stream(ctx, step, about, slot, c.req.header(HEARTBEAT_HEADER));
  }

  async #malformed(ctx: RequestContext, message: string, field?: string): Promise<Response> {
    await this.auditLine(ctx, {
      decision: "denied",
      reason: `malformed request: ${message}`,
      status: 400,
    });
    return errorResponse(400, {
      code: field === undefined ? "malformed_request" : "invalid_step",
      message,
      ...(field === undefined ? {} : { field }),
    });
  }

  /** Starts the step and answers with its events as they come. */
  #stream(
    ctx: RequestContext,
    step: Step,
    about: { digest: string; label?: string },
    slot: Slot,
    heartbeatHeader: string | undefined,
  ): Response {
    const id = crypto.randomUUID();
    const out = new EventStream();
    const batcher = new LineBatcher(out);
    const abort = new AbortController();
    let stopReason: string | undefined;
    const stop = (reason: string) => {
      stopReason ??= reason;
      abort.abort();
    };
    out.onCancel = () => stop("the client went away");
    out.send({ type: "start", id, protocol: PROTOCOL_VERSION });
    const every = heartbeatInterval(heartbeatHeader);
    const heartbeat = setInterval(() => {
      if (!out.full && performance.now() - out.lastSent >= every) out.send({ type: "ping" });
    }, every / 2);

    // The agent's ceiling on the caller's timing: no step holds a stop (or a
    // shutdown) past max_kill_grace.
    const killGraceMs = Math.min(step.killGraceMs, this.config.agent.maxKillGraceMs);
    let group: number | undefined;
    let shutdownKill: ReturnType<typeof setTimeout> | undefined;
    slot.onStop = (reason) => {
      // Shutting down: never wait on a stalled reader, drop instead.
      batcher.nonBlocking = true;
      out.releaseWriters();
      stop(reason);
      // ...and no step keeps the agent past shutdown_grace, whatever its own grace.
      shutdownKill = setTimeout(() => {
        if (group !== undefined) void signalGroup(group, "SIGKILL");
      }, Math.min(killGraceMs, this.config.agent.shutdownGraceMs));
    };
    const isolation = this.isolation;
    const started = {
      id,
      ...about,
      action: step.action,
      decision: "allowed" as const,
      status: 200,
      isolation: isolation === null ? "none" as const : "namespace" as const,
      ...(killGraceMs < step.killGraceMs ? { killGraceMs } : {}),
    };
    void (async () => {
      try {
        // The run is on record before the step starts: a step that kills the
        // agent or rewrites the file cannot take that back.
        await this.auditLine(ctx, { ...started, event: "start" });
        let result: ProcessResult | undefined;
        let failure: unknown;
        try {
          const argv = agentArgv(step);
          result = await runProcess({
            argv: isolation === null ? argv : isolatedArgv(argv, isolation),
            env: { ...baseEnvironment(), ...step.env },
            cwd: step.cwd ?? homeDirectory(),
            stdin: step.stdin,
            timeoutMs: step.timeoutMs,
            killGraceMs,
            signal: abort.signal,
            onSpawn: (child) => void (group = child.pid),
          }, batcher);
        } catch (error) {
          failure = error;
        }
        clearTimeout(shutdownKill);
        clearInterval(heartbeat);
        batcher.flush();
        const record: Parameters<AgentCore["auditLine"]>[1] = { ...started, event: "end" };
        if (result) {
          Object.assign(record, {
            exitCode: result.exitCode,
            signal: result.signal,
            timedOut: result.timedOut,
            cancelled: result.cancelled,
          });
          if (stopReason) record.reason = stopReason;
        } else {
          record.reason = `the agent could not run the step: ${describe(failure)}`;
        }
        // The audit line is written before the last event: before the response completes.
        await this.auditLine(ctx, record);
        if (result) {
          const exit: ExitEvent = {
            type: "exit",
            exitCode: result.exitCode,
            signal: result.signal,
            timedOut: result.timedOut,
            cancelled: result.cancelled,
            durationMs: result.durationMs,
            lines: result.lines,
          };
          if (batcher.dropped > 0) exit.dropped = batcher.dropped;
          if (stopReason) exit.reason = stopReason;
          out.send(exit);
        } else {
          out.send({
            type: "error",
            code: failure instanceof Deno.errors.NotCapable ? "not_capable" : "spawn_failed",
            message: `the agent could not run the step: ${describe(failure)}`,
          });
        }
        out.close();
      } catch (error) {
        // A bug here must not leak the slot nor leave the client waiting.
        console.error(`ops-agent: run ${id}: ${describe(error)}`);
        out.close();
      } finally {
        clearInterval(heartbeat);
        slot.release();
      }
    })();
    return new Response(out.readable, {
      headers: { "content-type": NDJSON_TYPE, "cache-control": "no-store" },
    });
  }
}

/**
 * How this host will run transfers under `config`, or `null` when its
 * ceiling grants no sync at all (nothing is probed then).
 */
async function syncSetup(
  config: AgentConfig,
  flavour: RsyncFlavour | null,
): Promise<SyncSetup | null> {
  const ceiling = config.ceiling;
  const syncs = ceiling.syncRoots().length > 0 || ceiling.allows("sync.push") ||
    ceiling.allows("sync.pull");
  if (!syncs) return null;
  const { syncConfinement: confinement, syncIdleTimeoutS: idleTimeoutS } = config.agent;
  const program = config.agent.rsync;
  const rsync = await probeRsync(program, flavour);
  const setup = { confinement, userNamespace: false, program, rsync, idleTimeoutS };
  if (confinement === "none") return setup;
  const mode = await chooseNamespaceMode(
    "agent.sync_confinement",
    "a transfer",
    (mode) => probeConfinement({ ...setup, ...mode }),
  );
  return { ...setup, ...mode };
}

/** How long `/v1/observe` waits for df. */
const OBSERVE_TIMEOUT_MS = 10_000;

/** The system log copy `config` asks for, and where the lines go, in words. */
async function openSystemLog(
  config: AgentConfig,
): Promise<{ log: SystemLog | undefined; copy: string }> {
  const { auditSyslog, auditSyslogSocket: socket } = config.agent;
  if (auditSyslog === false) return { log: undefined, copy: "none (audit_syslog = false)" };
  const problem = await probeSystemLog({ socket });
  const where = Deno.build.os === "darwin"
    ? "the unified log"
    : `the system log (${socket ?? "/dev/log"})`;
  if (problem === null) {
    return { log: new SystemLog({ socket }), copy: `${where}, tag ops-agent, authpriv.notice` };
  }
  if (auditSyslog === true) {
    throw new ConfigError(
      "agent.audit_syslog",
      `true, but the agent cannot write to ${where}: ${problem}. Start journald or a syslog daemon, set audit_syslog_socket, or set audit_syslog = false`,
    );
  }
  return { log: undefined, copy: `none: ${where} is not there (${problem})` };
}

/** A JSON error answer in the shape of {@linkcode ErrorBody}. */
export function errorResponse(
  status: number,
  error: ErrorBody["error"],
  headers?: Record<string, string>,
): Response {
  return new Response(JSON.stringify({ error } satisfies ErrorBody), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/**
 * The request body; `null` when it is larger than `limit` bytes, `"timeout"`
 * when it has not all arrived within `timeoutMs` (a body dribbled in).
 */
async function readLimited(
  request: Request,
  limit: number,
  timeoutMs: number,
): Promise<Uint8Array | null | "timeout"> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) return null;
  if (!request.body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let total = 0;
  const reader = request.body.getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), timeoutMs);
  });
  try {
    for (;;) {
      const next = await Promise.race([reader.read(), deadline]);
      if (next === "timeout") {
        await reader.cancel().catch(() => {});
        return "timeout";
      }
      const { value, done } = next;
      if (done) break;
      total += value.byteLength;
      if (total > limit) {
        await reader.cancel().catch(() => {});
        return null;
      }
      chunks.push(value);
    }
  } finally {
    clearTimeout(timer);
  }
  if (chunks.length === 1) return chunks[0];
  const body = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    body.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return body;
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}
