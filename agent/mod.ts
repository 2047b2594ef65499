/**
 * ops-agent as a library: read a config.toml, build the agent's Hono app from
 * it, and serve it with `Deno.serve`. The `ops-agent` program
 * (`agent/main.ts`) is a thin command line around {@linkcode serveAgent}.
 *
 * The agent identifies each caller by its tailnet node (tailscaled's whois
 * for the connection's peer address; never a request header), maps it to
 * capabilities with the config's `[[grant]]` tables and the tailnet's CapMap,
 * intersects them with the host's `[ceiling]`, and runs allowed steps through
 * the same spawn core as `LocalExec`, streaming their lines as NDJSON. Every
 * decision is one line in the audit log. See docs/agent.md and
 * docs/protocol.md.
 *
 * @example Serve a loopback agent for local development
 * ```ts
 * import { configFromObject, serveAgent } from "@makenot/ops-exec/agent";
 *
 * const config = configFromObject({
 *   agent: { listen: "127.0.0.1:0", audit_log: "/tmp/ops-agent/audit.jsonl" },
 *   identity: { provider: "loopback", loopback_identity: "user:dev@localhost" },
 *   ceiling: { allow: ["demo.*", "observe"] },
 *   grant: [{ to: ["user:dev@localhost"], allow: ["demo.*", "observe"] }],
 * });
 * await using agent = await serveAgent(config);
 * console.log(`agent at ${agent.url}`);
 * ```
 *
 * @module
 */
import type { ConfigError } from "../executor/errors.ts";
import type { AgentConfig } from "./config.ts";
import { AgentCore } from "./_app.ts";
import { Front, type FrontLimits } from "./_front.ts";
import { formatHostPort, unmapAddress } from "./_net.ts";
import { permissionProblems } from "./_permissions.ts";
import { AGENT_VERSION } from "./_version.ts";

export {
  type AgentConfig,
  type AgentSection,
  configFromObject,
  DEFAULT_MAX_CONCURRENT,
  DEFAULT_MAX_REQUEST_BYTES,
  DEFAULT_SYNC_IDLE_TIMEOUT_S,
  type GrantRule,
  type IdentityConfig,
  LINUX_TAILSCALED_SOCKET,
  loadConfig,
  type LoopbackIdentityConfig,
  parseConfig,
  type TailscaleIdentityConfig,
} from "./config.ts";
export type { ListenAddress } from "./_net.ts";

export { AGENT_VERSION };

/** The agent's Hono app, as a fetch handler, with the state behind it. */
export interface AgentApp {
  /**
   * The Hono app's fetch handler. Serve it with `Deno.serve(agent.fetch)`:
   * the caller is identified from the connection info `Deno.serve` passes
   * (the peer address), never from the request. A request without that info
   * is answered 401.
   */
  readonly fetch: (
    request: Request,
    info: Deno.ServeHandlerInfo<Deno.NetAddr>,
  ) => Response | Promise<Response>;
  /** The configuration it serves. */
  readonly config: AgentConfig;
  /** Steps running now. */
  readonly running: number;
  /**
   * How transfers are confined on this host, in words (the rsync found, the
   * confinement, rsync's own safeguards, the idle limit); `null` when the
   * ceiling grants no sync.
   */
  readonly syncConfinement: string | null;
  /** How steps are kept apart on this host, in words (`agent.step_isolation`). */
  readonly stepIsolation: string;
  /** Where audit lines are copied besides the file, in words (`agent.audit_syslog`). */
  readonly auditCopy: string;
  /**
   * Cancels every running step (SIGTERM, its grace, SIGKILL to its group),
   * refuses new ones, and resolves once each is over and audited.
   */
  stopRuns(reason: string): Promise<void>;
  /** Closes the audit log and the identity provider's connections. */
  close(): Promise<void>;
}

/**
 * Builds the agent's Hono app for `config`: opens its audit log (creating the
 * file and its directory if needed) and its identity provider.
 *
 * @example
 * ```ts
 * import { configFromObject, createAgentApp } from "@makenot/ops-exec/agent";
 *
 * const agent = await createAgentApp(configFromObject({
 *   agent: { listen: "127.0.0.1:7070", audit_log: "/tmp/ops-agent/audit.jsonl" },
 *   identity: { provider: "loopback", loopback_identity: "user:dev@localhost" },
 *   ceiling: { allow: ["demo.*"] },
 * }));
 * const server = Deno.serve({ hostname: "127.0.0.1", port: 7070 }, agent.fetch);
 * ```
 *
 * @param config A validated configuration.
 * @returns The app and its state.
 */
export async function createAgentApp(config: AgentConfig): Promise<AgentApp> {
  return await AgentCore.create(config);
}

/** Options of {@linkcode serveAgent}. */
export interface ServeAgentOptions {
  /** Shuts the agent down (gracefully) when aborted. */
  signal?: AbortSignal;
  /**
   * After the running steps have ended, how long to wait for their last
   * events to reach slow clients before closing anyway. Default 5000 ms.
   */
  flushTimeoutMs?: number;
}

/** A running agent. */
export interface AgentServer extends AsyncDisposable {
  /** The base URL, e.g. `http://127.0.0.1:7070` (with the real port when `listen` said 0). */
  readonly url: string;
  /** The address it listens on. */
  readonly addr: Deno.NetAddr;
  /** The app behind it. */
  readonly agent: AgentApp;
  /** Resolves once the agent has shut down. */
  readonly finished: Promise<void>;
  /**
   * Shuts down gracefully: stops accepting connections, cancels running
   * steps (each gets its `killGraceMs` between SIGTERM and SIGKILL), waits
   * for their audit lines and last events, closes the audit log. Idempotent.
   */
  shutdown(): Promise<void>;
}

/**
 * Serves the agent for `config` on its `listen` address.
 *
 * @example
 * ```ts
 * import { loadConfig, serveAgent } from "@makenot/ops-exec/agent";
 *
 * const server = await serveAgent(await loadConfig("/etc/ops-agent/config.toml"));
 * Deno.addSignalListener("SIGTERM", () => server.shutdown());
 * await server.finished;
 * ```
 *
 * @param config A validated configuration.
 * @param opts A signal that shuts the agent down, and the flush timeout.
 * @returns The running server.
 * @throws {ConfigError} When the permissions of this process do not cover the config.
 */
export async function serveAgent(
  config: AgentConfig,
  opts: ServeAgentOptions = {},
): Promise<AgentServer> {
  const problem = permissionProblems(config)[0];
  if (problem) throw problem;
  const core = await AgentCore.create(config);
  let front: Front;
  try {
    front = Front.start({
      listen: config.agent.listen,
      limits: await frontLimits(config),
      identify: (ip, port) => core.provider.identify(ip, port),
      handler: core.fetch,
      onRefused: (refusal) => core.refused(refusal),
    });
  } catch (error) {
    await core.close();
    throw error;
  }
  const addr = front.addr;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  let shuttingDown: Promise<void> | undefined;
  const shutdown = () => {
    shuttingDown ??= (async () => {
      const closing = front.shutdown(opts.flushTimeoutMs ?? 5000);
      await core.stopRuns("agent shutting down");
      await closing;
      await core.close();
      finish();
    })();
    return shuttingDown;
  };
  opts.signal?.addEventListener("abort", () => void shutdown(), { once: true });
  if (opts.signal?.aborted) void shutdown();
  return {
    // A dual-stack socket bound to ::ffff:a.b.c.d is reached at a.b.c.d.
    url: `http://${formatHostPort(unmapAddress(addr.hostname), addr.port)}`,
    addr,
    agent: core,
    finished,
    shutdown,
    [Symbol.asyncDispose]: shutdown,
  };
}

/** Descriptors kept for steps, transfers, whois and the logs, beyond the connections. */
const RESERVED_DESCRIPTORS = 128;

/**
 * The front's limits: the config's, with the connection cap held under this
 * process's descriptor limit (each relayed connection holds three).
 */
async function frontLimits(config: AgentConfig): Promise<FrontLimits> {
  const { agent } = config;
  const limit = await descriptorLimit();
  const fit = limit === null
    ? Infinity
    : Math.max(8, Math.floor((limit - RESERVED_DESCRIPTORS) / 3));
  return {
    maxConnections: Math.min(agent.maxConnections, fit),
    maxConnectionsPerPeer: agent.maxConnectionsPerPeer,
    headerTimeoutMs: agent.headerTimeoutMs,
    idleTimeoutMs: agent.idleTimeoutMs,
  };
}

/** This process's RLIMIT_NOFILE (its children inherit it), or `null` when unknown or unlimited. */
async function descriptorLimit(): Promise<number | null> {
  try {
    const out = await new Deno.Command("/bin/sh", {
      args: ["-c", "ulimit -n"],
      stdin: "null",
      stderr: "null",
      clearEnv: true,
      env: { PATH: "/usr/bin:/bin" },
    }).output();
    const n = Number(new TextDecoder().decode(out.stdout).trim());
    return Number.isInteger(n) && n > 0 ? n : null;
  } catch {
    return null;
  }
}

/**
 * What in `config` the permissions of this process do not cover (paths
 * outside the `agent` permission set's scopes), as ConfigErrors naming the
 * key. Empty under `-A`. `ops-agent --check` reports these.
 *
 * @param config A validated configuration.
 * @returns The problems, possibly none.
 */
export function checkPermissions(config: AgentConfig): ConfigError[] {
  return permissionProblems(config);
}
