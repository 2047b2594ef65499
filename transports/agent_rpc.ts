import type { CapabilitySet } from "../capability/capability_set.ts";
import { CapabilitySet as Capabilities } from "../capability/capability_set.ts";
import { assertAllowed } from "../capability/guard.ts";
import {
  CapabilityDenied,
  ConfigError,
  OpsExecError,
  StepError,
  TransportError,
} from "../executor/errors.ts";
import { decodeJsonLines } from "../executor/_ndjson.ts";
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
import {
  type CapabilitiesBody,
  type ErrorBody,
  type HealthBody,
  HEARTBEAT_HEADER,
  NDJSON_TYPE,
  parseRefusal,
  PATHS,
  type RunEvent,
  type SyncRefusal,
} from "./_agent_protocol.ts";
import {
  checkRsyncProgram,
  gateSync,
  mkpathPlan,
  probeLocalRsync,
  remoteShellCommand,
  runRsync,
} from "./_rsync.ts";
import { givesNonBlockingStdio, protectsRemoteArgs, type RsyncFlavour } from "./_rsync_flavour.ts";

/** Where the agent is, and how to reach it. */
export interface AgentRpcOptions {
  /**
   * The agent's address as a URL, e.g. `http://100.101.102.103:7070`: a
   * scheme, a host and a port, nothing more (a path, query, fragment or user
   * name is refused: the agent serves at the root of its address). ops-agent
   * speaks plain HTTP (`https://` is refused); the tailnet (WireGuard)
   * encrypts and authenticates the traffic.
   */
  url: string;
  /**
   * The local address to connect from (e.g. this machine's tailnet address
   * when it has several). The agent identifies callers by this address.
   */
  localAddress?: string;
  /** The name results and errors give the host. Default: the URL's `host:port`. */
  host?: string;
  /** How long to wait for the agent to answer a request's headers. Default 30 000 ms. */
  connectTimeoutMs?: number;
  /**
   * How long a running step's stream may stay silent before the connection
   * counts as lost (a frozen host, a dropped route). The agent is asked for
   * a heartbeat every third of it, so a quiet step never trips it. Default
   * 45 000 ms; at least 1 500.
   */
  idleTimeoutMs?: number;
  /**
   * A step with a `timeoutMs` ends on the agent within that timeout plus its
   * `killGraceMs`. When its end has not arrived by then plus this margin,
   * and nothing has arrived for this long either, the host counts as cut off
   * (a dropped link sends no FIN and silences the heartbeat too) and the run
   * fails with `TransportError` `timeout`. Default 5 000 ms; at least 500.
   */
  timeoutMarginMs?: number;
  /**
   * The local rsync program for push/pull, a name (looked up on the base
   * PATH) or a path. Default `rsync`: on macOS the base PATH puts
   * Homebrew's `/opt/homebrew/bin` (Apple silicon) and `/usr/local/bin`
   * (Intel) before `/usr/bin`, so this is Homebrew's rsync 3.x when it is
   * installed, else the system's `/usr/bin/rsync`, which since macOS 15 is
   * openrsync. Both work; see docs/protocol.md for what differs.
   */
  rsyncProgram?: string;
}

/**
 * Runs steps on a host through its `ops-agent`, over HTTP on the tailnet.
 * Capabilities are enforced twice: here, before anything is sent, and by the
 * agent, which identifies this machine by its tailnet node and applies the
 * host's own ceiling (a refusal there is a {@linkcode CapabilityDenied} with
 * scope `agent`). Lines stream back as NDJSON with backpressure: a slow sink
 * slows the step on the agent host. HTTP connections are reused until
 * {@linkcode AgentRpc.close}.
 *
 * @example
 * ```ts
 * import { CapabilitySet, ConsoleSink, Step } from "@makenot/ops-exec";
 * import { AgentRpc } from "@makenot/ops-exec/rpc";
 *
 * await using mac = new AgentRpc(
 *   { url: "http://100.101.102.103:7070" },
 *   CapabilitySet.of("bento.*", "observe"),
 * );
 * const out = await mac.runStreaming(
 *   Step.shell("bento.build", "xcodebuild -version"),
 *   new ConsoleSink({ host: mac.host }),
 * );
 * console.log(out.exitCode, await mac.remoteCapabilities());
 * ```
 */
export class AgentRpc implements Executor {
  /** The name of the host in results and errors. */
  readonly host: string;
  readonly #caps: CapabilitySet;
  readonly #base: URL;
  readonly #localAddress?: string;
  readonly #connectTimeoutMs: number;
  readonly #idleTimeoutMs: number;
  readonly #timeoutMarginMs: number;
  readonly #rsyncProgram: string;
  #client: Deno.HttpClient | null = null;
  #localRsync: Promise<RsyncFlavour> | null = null;
  #agentRsync: Promise<RsyncFlavour> | null = null;
  #scriptDir: Promise<string> | null = null;

  /**
   * Creates a client for one agent. Nothing is connected until the first call.
   *
   * @param opts The agent's URL and how to reach it.
   * @param caps The caller-side grant every call is checked against first.
   * @throws {ConfigError} When the URL is not the `http://` URL of a bare
   *   address (the message names what is wrong and the URL to use): an
   *   `https://` URL too, since ops-agent speaks plain HTTP.
   */
  constructor(opts: AgentRpcOptions, caps: CapabilitySet) {
    const base = agentBase(opts.url);
    this.#base = base;
    this.#caps = caps;
    this.host = opts.host ?? base.host;
    if (opts.localAddress !== undefined) this.#localAddress = opts.localAddress;
    this.#connectTimeoutMs = opts.connectTimeoutMs ?? 30_000;
    this.#idleTimeoutMs = Math.max(1500, opts.idleTimeoutMs ?? 45_000);
    this.#timeoutMarginMs = Math.max(500, opts.timeoutMarginMs ?? 5_000);
    this.#rsyncProgram = checkRsyncProgram(opts.rsyncProgram);
  }

  /** The caller-side grant this executor is scoped to. */
  capabilities(): CapabilitySet {
    return this.#caps;
  }

  /**
   * Runs `step` on the agent's host, delivering its lines to `sink`.
   *
   * Aborting `opts.signal` closes the request: the agent then stops the step
   * (SIGTERM to its group, its grace, SIGKILL) and the result, returned at
   * once, says `cancelled`.
   *
   * @throws {CapabilityDenied} Scope `caller` before anything is sent; scope `agent` when the agent refuses.
   * @throws {TransportError} `unreachable`, `unknown_peer`, `connection_lost`, `spawn_failed`,
   * `protocol`; `timeout` when a step with a `timeoutMs` has not ended by its timeout, grace and
   * `timeoutMarginMs` and the agent has gone silent (the host is cut off; the agent still stops
   * the step at its timeout, but how it ended is unknown here).
   */
  async runStreaming(step: Step, sink: LogSink, opts: RunOptions = {}): Promise<RunOutput> {
    assertAllowed(this.#caps, step.action, { host: this.host });
    const started = performance.now();
    const lines = { stdout: 0, stderr: 0 };
    const output = (fields: Partial<RunOutput>): RunOutput => ({
      host: this.host,
      action: step.action,
      exitCode: null,
      signal: null,
      success: false,
      timedOut: false,
      cancelled: false,
      durationMs: performance.now() - started,
      lines: { ...lines },
      ...fields,
    });
    if (opts.signal?.aborted) return output({ cancelled: true, durationMs: 0 });

    const abort = new AbortController();
    const onAbort = () => abort.abort();
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    // Why the watchdog gave up on the connection, if it did.
    let lost: "idle" | "overdue" | null = null;
    let streaming = false;
    let inSink = false;
    let lastEvent = started;
    const deadline = step.timeoutMs === undefined
      ? Infinity
      : started + step.timeoutMs + step.killGraceMs + this.#timeoutMarginMs;
    const watchdog = setInterval(() => {
      const now = performance.now();
      if (inSink) return;
      if (now >= deadline && now - lastEvent >= this.#timeoutMarginMs) lost = "overdue";
      else if (streaming && now - lastEvent > this.#idleTimeoutMs) lost = "idle";
      if (lost) abort.abort();
    }, Math.min(1000, this.#idleTimeoutMs / 4, this.#timeoutMarginMs / 4));
    const overdue = () =>
      new TransportError(
        "timeout",
        this.host,
        `no word from the agent for ${Math.round(performance.now() - lastEvent)} ms, and the ` +
          `step's timeout (${step.timeoutMs} ms) and grace (${step.killGraceMs} ms) are over by ` +
          `more than ${this.#timeoutMarginMs} ms: the host is unreachable (a cut link or a frozen ` +
          `host). Its agent stops the step at the timeout by itself; how it ended is unknown here.`,
      );
    try {
      let response: Response;
      try {
        response = await this.#fetch(PATHS.run, {
          method: "POST",
          headers: {
            "content-type": "application/json",
            accept: NDJSON_TYPE,
            // A heartbeat well inside the idle timeout: a quiet step is not a dead agent.
            [HEARTBEAT_HEADER]: String(Math.floor(this.#idleTimeoutMs / 3)),
          },
          body: JSON.stringify(step.toJSON()),
        }, abort.signal);
      } catch (error) {
        if (opts.signal?.aborted) return output({ cancelled: true });
        if (lost === "overdue") throw overdue();
        throw error;
      }
      if (!response.ok) throw await this.#errorFor(response, step.action);
      if (!response.body) throw this.#protocol("the agent sent no event stream");
      lastEvent = performance.now();
      streaming = true;

      let nextSeq = 0;
      try {
        for await (const value of decodeJsonLines(response.body)) {
          lastEvent = performance.now();
          const event = value as RunEvent;
          switch (event?.type) {
            case "lines": {
              // A gap (seq ahead) means lines the agent dropped while shutting down.
              if (!(event.seq >= nextSeq) || typeof event.text !== "string") {
                throw this.#protocol(
                  `lines out of order: expected seq ${nextSeq}, got ${event.seq}`,
                );
              }
              nextSeq = event.seq;
              const stream = event.stream === "stderr" ? "stderr" : "stdout";
              const text = event.text.split("\n");
              inSink = true;
              try {
                for (let i = 0; i < text.length; i++) {
                  const wait = sink.write({ stream, text: text[i], seq: nextSeq++ });
                  lines[stream]++;
                  if (wait) {
                    // An abort does not wait for a sink that is stuck.
                    await (opts.signal ? untilAborted(wait, opts.signal) : wait);
                    if (opts.signal?.aborted) return output({ cancelled: true });
                    lastEvent = performance.now();
                  }
                }
              } catch (error) {
                throw new SinkFailure(error);
              } finally {
                inSink = false;
              }
              break;
            }
            case "exit": {
              const got = event.lines;
              if (
                !event.dropped &&
                (got?.stdout !== lines.stdout || got?.stderr !== lines.stderr)
              ) {
                throw this.#protocol(
                  `the agent sent ${got?.stdout}+${got?.stderr} lines, ${lines.stdout}+${lines.stderr} arrived`,
                );
              }
              return output({
                exitCode: event.exitCode,
                signal: event.signal,
                success: event.exitCode === 0 && !event.timedOut && !event.cancelled,
                timedOut: event.timedOut,
                cancelled: event.cancelled,
                durationMs: event.durationMs,
              });
            }
            case "error":
              throw new TransportError("spawn_failed", this.host, event.message, {
                detail: event.code,
              });
            case "start":
            case "ping":
              break;
            default:
              throw this.#protocol(`unknown event ${JSON.stringify(value).slice(0, 80)}`);
          }
        }
      } catch (error) {
        // The sink's own error is passed on; the finally block closes the
        // request, so the agent kills the step's group.
        if (error instanceof SinkFailure) throw error.error;
        if (error instanceof OpsExecError) throw error;
        if (opts.signal?.aborted) return output({ cancelled: true });
        if (lost === "overdue") throw overdue();
        if (lost === "idle") {
          throw new TransportError(
            "connection_lost",
            this.host,
            `no data from the agent for ${this.#idleTimeoutMs} ms (not even its heartbeat): the connection is lost`,
          );
        }
        throw new TransportError(
          "connection_lost",
          this.host,
          `the connection to the agent broke mid-step: ${message(error)}`,
          { cause: error },
        );
      }
      if (opts.signal?.aborted) return output({ cancelled: true });
      throw new TransportError(
        "connection_lost",
        this.host,
        "the agent closed the connection mid-step, before the step's exit (did the agent stop or crash?)",
      );
    } finally {
      clearInterval(watchdog);
      opts.signal?.removeEventListener("abort", onAbort);
      // Closing an unfinished response closes its connection: the agent stops the step.
      abort.abort();
    }
  }

  /**
   * Reads the agent host's facts, with the agent's version and tailnet self.
   *
   * @throws {CapabilityDenied} When `observe` is not granted here or by the agent.
   */
  async observe(): Promise<HostObservation> {
    assertAllowed(this.#caps, "observe", { host: this.host });
    const response = await this.#fetch(PATHS.observe, { method: "GET" });
    if (!response.ok) throw await this.#errorFor(response, "observe");
    const facts = await this.#json(response) as HostObservation;
    if (typeof facts?.hostname !== "string") throw this.#protocol("observe answered no hostname");
    return { ...facts, host: this.host };
  }

  /**
   * What the agent grants this caller after its host ceiling: (its config
   * grants ∪ tailnet CapMap grants) ∩ ceiling. Actions outside it are refused
   * by the agent even when this executor's own set allows them.
   *
   * @example
   * ```ts
   * import { CapabilitySet } from "@makenot/ops-exec";
   * import { AgentRpc } from "@makenot/ops-exec/rpc";
   *
   * const agent = new AgentRpc({ url: "http://100.101.102.103:7070" }, CapabilitySet.of("*"));
   * const granted = await agent.remoteCapabilities();
   * console.log(granted.allows("bento.sign"));
   * ```
   *
   * @returns The effective grant.
   * @throws {TransportError} `unknown_peer` when the agent does not know this machine.
   */
  async remoteCapabilities(): Promise<CapabilitySet> {
    const response = await this.#fetch(PATHS.capabilities, { method: "GET" });
    if (!response.ok) throw await this.#errorFor(response);
    const body = await this.#json(response) as CapabilitiesBody;
    try {
      return Capabilities.fromJSON(body?.capabilities, "capabilities");
    } catch (error) {
      throw this.#protocol(`the agent's capabilities do not parse: ${message(error)}`);
    }
  }

  /**
   * Copies `remotePath` on the agent's host to `localPath`, with rsync's own
   * delta protocol through the agent's `/v1/sync` tunnel. The agent checks
   * `sync.pull` on the path (and on where it leads after symlinks) against
   * its ceiling.
   *
   * Needs permission to run `rsync` and this Deno (`Deno.execPath()`): rsync's
   * remote shell is the tunnel program `sync_tunnel.ts`, run by Deno. With
   * openrsync as the local rsync, also to write a small remote-shell script
   * to a private directory under `/tmp` (removed by `close()`).
   *
   * @throws {CapabilityDenied} Scope `caller` before anything starts; scope `agent` when the agent refuses.
   * @throws {TransportError} `sync_failed` with rsync's words, `unknown_peer`, `unreachable`, `timeout`.
   */
  pull(remotePath: string, localPath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.pull", localPath, remotePath, opts);
  }

  /**
   * Copies `localPath` to `remotePath` on the agent's host, with rsync's own
   * delta protocol through the agent's `/v1/sync` tunnel. The agent checks
   * `sync.push` on the path (and on where it leads after symlinks) against
   * its ceiling.
   *
   * Needs permission to run `rsync` and this Deno (`Deno.execPath()`).
   *
   * @throws {CapabilityDenied} Scope `caller` before anything starts; scope `agent` when the agent refuses.
   * @throws {TransportError} `sync_failed` with rsync's words, `unknown_peer`, `unreachable`, `timeout`.
   */
  push(localPath: string, remotePath: string, opts: SyncOpts = {}): Promise<SyncResult> {
    return this.#sync("sync.push", localPath, remotePath, opts);
  }

  /**
   * Closes the pooled HTTP connections and removes the remote-shell script
   * directory, if one was made. Idempotent; a later call opens new ones.
   */
  async close(): Promise<void> {
    this.#client?.close();
    this.#client = null;
    const dir = this.#scriptDir;
    this.#scriptDir = null;
    if (dir !== null) {
      await dir.then((path) => Deno.remove(path, { recursive: true })).catch(() => {});
    }
  }

  /** Same as {@linkcode AgentRpc.close}. */
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
    opts.signal?.throwIfAborted();
    try {
      const [local, remote] = await Promise.all([this.#localFlavour(), this.#agentFlavour()]);
      const plan = mkpathPlan(action, local, remote);
      // The tunnel is a Deno program, whose stdout must be a blocking
      // descriptor: rsync 3.x gives one with --blocking-io; openrsync cannot,
      // so the tunnel then writes rsync's bytes on stderr (swapped stdio).
      const swapStdio = givesNonBlockingStdio(local);
      const words = tunnelWords(this.#base, this.#localAddress, {
        mkpath: action === "sync.push" && plan === "inject",
        swapStdio,
      });
      return await runRsync({
        host: this.host,
        action,
        localPath,
        remotePath: target,
        remotePrefix: "ops-agent:",
        program: this.#rsyncProgram,
        local,
        remote,
        mkpath: plan === "option",
        remoteShell: await remoteShellCommand(words, {
          local,
          scriptDir: local.kind === "openrsync" ? await this.#scriptDirectory() : undefined,
          name: "tunnel",
          swapStdio,
          key: "url",
        }),
        // openrsync's own default command on the other end may be
        // `openrsync`; the agent runs `rsync --server` vectors only.
        rsyncPath: local.kind === "openrsync" ? "rsync" : undefined,
        extraArgs: [
          ...(swapStdio ? [] : ["--blocking-io"]),
          // rsync 3.2.4+ escapes the remote path for a remote login shell;
          // the tunnel is none (it passes the words as they are).
          ...(protectsRemoteArgs(local) ? ["--old-args"] : []),
        ],
      }, opts);
    } catch (error) {
      const refusal = error instanceof TransportError && error.kind === "sync_failed"
        ? refusalIn(error.detail ?? "")
        : null;
      if (!refusal) throw error;
      if (refusal.status === 0) {
        throw new TransportError(
          "unreachable",
          this.host,
          `cannot reach the agent at ${this.#base.origin}: ${refusal.message}`,
        );
      }
      const body = typeof refusal.body === "string" ? refusal.body : JSON.stringify(refusal.body);
      throw await this.#errorFor(new Response(body, { status: refusal.status }), action);
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

  /** What the agent's rsync is, from its `/v1/health` (asked once). */
  #agentFlavour(): Promise<RsyncFlavour> {
    const asked = this.#agentRsync ??= (async () => {
      const response = await this.#fetch(PATHS.health, { method: "GET" });
      if (!response.ok) throw await this.#errorFor(response);
      const body = await this.#json(response) as Partial<HealthBody> | null;
      if (body?.rsync === undefined) return ASSUMED_AGENT_RSYNC;
      if (body.rsync === null) {
        throw new TransportError(
          "sync_failed",
          this.host,
          `the agent at ${this.#base.origin} has no rsync it may run (its /v1/health says ` +
            `"rsync": null): install rsync on that host, or set agent.rsync in its config`,
        );
      }
      const rsync = body.rsync as Partial<RsyncFlavour>;
      if (
        (rsync.kind !== "rsync" && rsync.kind !== "openrsync") ||
        typeof rsync.version !== "string" || typeof rsync.protocol !== "number" ||
        typeof rsync.apple !== "boolean"
      ) {
        throw this.#protocol(
          `the agent's /v1/health names an rsync ops-exec cannot read: ${
            JSON.stringify(body.rsync)
          }`,
        );
      }
      return rsync as RsyncFlavour;
    })();
    asked.catch(() => {
      if (this.#agentRsync === asked) this.#agentRsync = null;
    });
    return asked;
  }

  /** A private directory for the remote-shell script (created once, removed by close()). */
  #scriptDirectory(): Promise<string> {
    const made = this.#scriptDir ??= Deno.makeTempDir({ dir: "/tmp", prefix: "oe-rpc-" });
    made.catch(() => {
      if (this.#scriptDir === made) this.#scriptDir = null;
    });
    return made;
  }

  /**
   * Sends a request and waits for the answer's headers, at most the connect
   * timeout. `signal` (if any) goes on to cancel the body as well.
   */
  async #fetch(path: string, init: RequestInit, signal?: AbortSignal): Promise<Response> {
    this.#client ??= Deno.createHttpClient(
      this.#localAddress === undefined ? {} : { localAddress: this.#localAddress },
    );
    const controller = new AbortController();
    if (signal) {
      if (signal.aborted) controller.abort();
      else signal.addEventListener("abort", () => controller.abort(), { once: true });
    }
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, this.#connectTimeoutMs);
    try {
      return await fetch(new URL(path, this.#base), {
        ...init,
        client: this.#client,
        signal: controller.signal,
      });
    } catch (error) {
      if (signal?.aborted) throw error;
      if (timedOut) {
        throw new TransportError(
          "unreachable",
          this.host,
          `the agent at ${this.#base.origin} did not answer within ${this.#connectTimeoutMs} ms`,
          { cause: error },
        );
      }
      throw new TransportError(
        "unreachable",
        this.host,
        `cannot reach the agent at ${this.#base.origin}: ${reachability(error)}`,
        { cause: error, detail: message(error) },
      );
    } finally {
      clearTimeout(timer);
    }
  }

  async #json(response: Response): Promise<unknown> {
    try {
      return await response.json();
    } catch (error) {
      throw this.#protocol(`the agent's answer is not JSON: ${message(error)}`);
    }
  }

  /** The typed error for a 4xx/5xx answer. */
  async #errorFor(response: Response, action?: string): Promise<Error> {
    let body: ErrorBody["error"] | undefined;
    const text = await response.text().catch(() => "");
    try {
      body = (JSON.parse(text) as ErrorBody).error;
    } catch {
      // Not one of ours: described by the status below.
    }
    const said = body?.message ?? (text.trim().slice(0, 200) || response.statusText);
    switch (response.status) {
      case 401:
        return new TransportError("unknown_peer", this.host, said, { detail: body?.code });
      case 403:
        return new CapabilityDenied(body?.action ?? action ?? "(unknown)", this.host, "agent", {
          reason: body?.reason ?? said,
          ...(body?.path ? { path: body.path } : {}),
        });
      case 400:
        return body?.field !== undefined
          ? new StepError(body.field, `the agent refused the step: ${said}`)
          : this.#protocol(`the agent refused the request as malformed: ${said}`);
      case 413:
        return new StepError("(size)", `the step is too large for the agent: ${said}`);
      case 429:
        return new OpsExecError("agent_busy", `${this.host}: ${said}`);
      case 501:
        return new OpsExecError("not_implemented", `${this.host}: ${said}`);
      case 503:
        return body?.code === "identity_unavailable"
          ? new TransportError("unknown_peer", this.host, said, { detail: body.code })
          : new TransportError("unreachable", this.host, said, { detail: body?.code });
      case 404:
        return this.#protocol(
          `${response.url} is not an ops-agent endpoint (is this an ops-agent, and a recent one?): ${said}`,
        );
      default:
        return this.#protocol(`the agent answered HTTP ${response.status}: ${said}`);
    }
  }

  #protocol(text: string): TransportError {
    return new TransportError("protocol", this.host, text);
  }
}

/** `promise`, or an earlier resolution when `signal` aborts. */
function untilAborted(promise: Promise<void>, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.resolve();
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => resolve();
    signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}

/** Carries a sink's error out of the event loop untouched. */
class SinkFailure {
  constructor(readonly error: unknown) {}
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * The agent's base URL from `url`: http(s), a host, a port, nothing else.
 *
 * @throws {ConfigError} Naming what is wrong and the URL to use instead.
 */
function agentBase(url: string): URL {
  const example = "http://100.101.102.103:7070";
  if (typeof url !== "string" || url === "") {
    throw new ConfigError("url", `must be the agent's URL, e.g. ${example}`);
  }
  let base: URL | undefined;
  try {
    base = new URL(url);
  } catch {
    // No scheme ("100.101.102.103:7070"), or not a URL at all: below.
  }
  if (base?.protocol === "https:") {
    throw new ConfigError(
      "url",
      `"${url}" asks for TLS, but ops-agent speaks plain HTTP on the tailnet, which WireGuard ` +
        `already encrypts and authenticates: use http://${base.host}`,
    );
  }
  if (base === undefined || base.protocol !== "http:") {
    const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(url);
    throw new ConfigError(
      "url",
      scheme
        ? `"${url}" must be an http:// URL (ops-agent speaks HTTP), e.g. ${example}`
        : `"${url}" has no scheme: write http://${url}`,
    );
  }
  const bare = `http://${base.host}`;
  const extra = [
    base.username || base.password ? "a user name or password" : "",
    base.pathname !== "/" ? `the path ${base.pathname}` : "",
    base.search ? `the query ${base.search}` : "",
    base.hash ? `the fragment ${base.hash}` : "",
  ].filter(Boolean);
  if (extra.length > 0) {
    throw new ConfigError(
      "url",
      `"${url}" has ${extra.join(" and ")}; ops-agent serves at the root of its address and ` +
        `identifies callers by their tailnet address: use ${bare}`,
    );
  }
  return base;
}

/** Every message of an error and its causes, joined. */
function errorChain(error: unknown): string {
  const chain: string[] = [];
  for (let e: unknown = error; e instanceof Error && chain.length < 4; e = e.cause) {
    chain.push(e.message);
  }
  return chain.join(": ");
}

/** A short reason for a failed connection, from the error chain. */
function reachability(error: unknown): string {
  const all = errorChain(error);
  if (/refused/i.test(all)) return "connection refused (is ops-agent running and listening there?)";
  if (/timed? ?out/i.test(all)) return `connection timed out (${all})`;
  if (/unreachable|no route/i.test(all)) return `no route to the host (${all})`;
  return all || "unknown error";
}

/**
 * The agent's rsync when its `/v1/health` does not say: agents from before
 * it did ran rsync 3.x and took `--mkpath`.
 */
const ASSUMED_AGENT_RSYNC: RsyncFlavour = {
  kind: "rsync",
  version: "3.2.3",
  protocol: 31,
  apple: false,
};

/**
 * rsync's remote shell for an agent, as words: this Deno running the tunnel
 * program, allowed to reach the agent and nothing else. From a checkout,
 * with the package's own deno.json (its import map); from JSR, with none
 * (the published module carries its imports resolved).
 */
function tunnelWords(
  base: URL,
  localAddress: string | undefined,
  flags: { mkpath: boolean; swapStdio: boolean },
): string[] {
  const program = new URL("./sync_tunnel.ts", import.meta.url);
  // Binding the source address is a net access of its own ("IP:0").
  const allowNet = [base.host];
  if (localAddress !== undefined) {
    allowNet.push(`${localAddress.includes(":") ? `[${localAddress}]` : localAddress}:0`);
  }
  const args = ["run", "--quiet", "--no-prompt", `--allow-net=${allowNet.join(",")}`];
  const config = new URL("../deno.json", import.meta.url);
  args.push(program.protocol === "file:" ? `--config=${config.pathname}` : "--no-config");
  args.push(program.href, `--url=${base.origin}`);
  if (localAddress !== undefined) args.push(`--local-address=${localAddress}`);
  if (flags.mkpath) args.push("--mkpath");
  if (flags.swapStdio) args.push("--stdio=swapped");
  return [Deno.execPath(), ...args];
}

/** The tunnel's refusal report among rsync's stderr lines, if there is one. */
function refusalIn(stderr: string): SyncRefusal | null {
  for (const line of stderr.split("\n")) {
    const refusal = parseRefusal(line);
    if (refusal) return refusal;
  }
  return null;
}
