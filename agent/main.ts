/**
 * The `ops-agent` program.
 *
 * ```sh
 * ops-agent --config /etc/ops-agent/config.toml          # serve
 * ops-agent --config /etc/ops-agent/config.toml --check  # validate and exit
 * ```
 *
 * From source, with the agent's permission set: `deno task agent --config FILE`.
 * Exit codes: 0 served and shut down cleanly (SIGTERM/SIGINT) or the config
 * is valid; 1 the config is invalid or the agent could not start; 2 usage.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { ConfigError } from "../executor/errors.ts";
import { AGENT_VERSION, checkPermissions, loadConfig, serveAgent } from "./mod.ts";

const USAGE = `ops-agent ${AGENT_VERSION}: the on-host half of ops-exec

Usage:
  ops-agent --config FILE           serve the agent
  ops-agent --config FILE --check   validate the config (and the permissions it needs), then exit

Options:
  -c, --config FILE   the agent's config.toml (required)
      --check         validate and exit: 0 when valid, 1 with the key at fault otherwise
  -h, --help          this help
  -V, --version       print the version

SIGTERM or SIGINT stop the agent gracefully: no new connections, running
steps get their grace, the audit log is flushed, exit 0.
Docs: docs/agent.md (install), docs/protocol.md (wire protocol).`;

async function main(args: string[]): Promise<number> {
  let values: { config?: string; check?: boolean; help?: boolean; version?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        config: { type: "string", short: "c" },
        check: { type: "boolean" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    console.error(`ops-agent: ${error instanceof Error ? error.message : error}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  if (values.version) {
    console.log(`ops-agent ${AGENT_VERSION}`);
    return 0;
  }
  if (!values.config) {
    console.error(`ops-agent: --config FILE is required\n\n${USAGE}`);
    return 2;
  }

  let config;
  try {
    config = await loadConfig(values.config);
  } catch (error) {
    return reportConfigError(values.config, error);
  }
  const problems = checkPermissions(config);
  if (values.check) {
    if (problems.length > 0) {
      for (const problem of problems) {
        console.error(`ops-agent: ${values.config}: ${problem.message}`);
      }
      return 1;
    }
    const grants = config.grants.length;
    console.log(
      `ops-agent: ${values.config} is valid: listen ${config.agent.listen.hostname}:${config.agent.listen.port}, ` +
        `identity ${config.identity.provider}, ceiling [${config.ceiling.toJSON().join(", ")}], ` +
        `${grants} grant table${grants === 1 ? "" : "s"}`,
    );
    return 0;
  }
  if (problems.length > 0) return reportConfigError(values.config, problems[0]);

  // Signals first: a SIGTERM that arrives while starting still stops cleanly.
  const stop = new AbortController();
  let running = () => 0;
  const listeners = (["SIGTERM", "SIGINT"] as const).map((signal) => {
    const listener = () => {
      console.log(`ops-agent: ${signal}: shutting down (running steps: ${running()})`);
      stop.abort();
    };
    Deno.addSignalListener(signal, listener);
    return [signal, listener] as const;
  });
  let server;
  try {
    server = await serveAgent(config, { signal: stop.signal });
  } catch (error) {
    return reportConfigError(values.config, error);
  }
  running = () => server.agent.running;
  const identity = config.identity.provider === "loopback"
    ? `loopback as ${config.identity.identity}`
    : `tailscale via ${
      config.identity.cli !== undefined
        ? `${config.identity.cli} whois`
        : `LocalAPI ${config.identity.socket}`
    }`;
  const socket = `[${server.addr.hostname}]:${server.addr.port}`;
  const bound = server.url.includes(server.addr.hostname) ? "" : `, socket ${socket}`;
  const sync = server.agent.syncConfinement;
  if (sync !== null) console.log(`ops-agent: sync: ${sync}`);
  console.log(
    `ops-agent ${AGENT_VERSION} listening on ${server.url} (identity: ${identity}${bound})`,
  );
  console.log(`ops-agent: steps: ${server.agent.stepIsolation}`);
  console.log(`ops-agent: audit copy: ${server.agent.auditCopy}`);
  await server.finished;
  for (const [signal, listener] of listeners) Deno.removeSignalListener(signal, listener);
  console.log("ops-agent: stopped");
  return 0;
}

function reportConfigError(path: string, error: unknown): number {
  if (error instanceof ConfigError) {
    console.error(`ops-agent: ${path}: ${error.message}`);
  } else {
    console.error(`ops-agent: cannot start: ${error instanceof Error ? error.message : error}`);
  }
  return 1;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
