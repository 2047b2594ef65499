// Starts the real ops-agent as a subprocess, exactly as `deno task agent`
// does: `deno run --quiet --no-prompt -P=agent agent/main.ts --config FILE`, with the
// permission set of deno.json, over real HTTP.

import { join } from "@deps/path";

const REPO = new URL("../", import.meta.url).pathname;

/** Options of {@linkcode startAgentProcess}. */
export interface AgentProcessOptions {
  /** Extra environment (e.g. `PATH` with the tailscale CLI stand-in first). */
  env?: Record<string, string>;
  /** Put the config and audit log here (must be inside /tmp/ops-agent). Default: a new temp dir. */
  dir?: string;
  /** Give up waiting for "listening on" after this long. Default 30 s. */
  startTimeoutMs?: number;
  /**
   * A command that runs the agent, e.g. `["ip", "netns", "exec", "host-a"]` to start it in
   * a network namespace (the command must exec the agent, so that its pid is the agent's).
   */
  prefix?: string[];
}

/** A running agent process. */
export interface AgentProcess extends AsyncDisposable {
  /** Its base URL. */
  url: string;
  /** Its pid. */
  pid: number;
  /** The directory holding config.toml and audit.jsonl. */
  dir: string;
  /** The audit log path (`{dir}/audit.jsonl`, as the config names it). */
  auditPath: string;
  /** The process. */
  child: Deno.ChildProcess;
  /** Everything it printed so far (stdout and stderr). */
  output(): string;
  /** The audit log's lines, parsed. */
  auditLines(): Record<string, unknown>[];
  /** Sends `signal` and waits for the exit. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/**
 * Starts an agent with the config `toml`, in which `{dir}` stands for the
 * agent's directory (put `audit_log = "{dir}/audit.jsonl"`).
 */
export async function startAgentProcess(
  toml: string,
  opts: AgentProcessOptions = {},
): Promise<AgentProcess> {
  await Deno.mkdir("/tmp/ops-agent", { recursive: true });
  const dir = opts.dir ?? await Deno.makeTempDir({ dir: "/tmp/ops-agent", prefix: "agent-" });
  const configPath = join(dir, "config.toml");
  await Deno.writeTextFile(configPath, toml.replaceAll("{dir}", dir));
  const argv = [
    ...(opts.prefix ?? []),
    Deno.execPath(),
    "run",
    "--quiet",
    "--no-prompt",
    "-P=agent",
    join(REPO, "agent/main.ts"),
    "--config",
    configPath,
  ];
  const child = new Deno.Command(argv[0], {
    args: argv.slice(1),
    cwd: REPO,
    env: { NO_COLOR: "1", ...opts.env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  let onText: (() => void) | undefined;
  const collect = async (stream: ReadableStream<Uint8Array>) => {
    const decoder = new TextDecoder();
    for await (const chunk of stream) {
      text += decoder.decode(chunk, { stream: true });
      onText?.();
    }
  };
  const reading = Promise.all([collect(child.stdout), collect(child.stderr)]);
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`the agent did not start within the timeout:\n${text}`)),
      opts.startTimeoutMs ?? 30_000,
    );
    onText = () => {
      const match = / listening on (http:\/\/\S+)/.exec(text);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.status.then((status) => {
      clearTimeout(timer);
      reject(new Error(`the agent exited (${status.code}) before listening:\n${text}`));
    });
  });
  const auditPath = join(dir, "audit.jsonl");
  let stopped: Promise<Deno.CommandStatus> | undefined;
  const agent: AgentProcess = {
    url,
    pid: child.pid,
    dir,
    auditPath,
    child,
    output: () => text,
    auditLines: () => {
      let content = "";
      try {
        content = Deno.readTextFileSync(auditPath);
      } catch {
        return [];
      }
      return content.split("\n").filter((line) => line !== "").map((line) => JSON.parse(line));
    },
    stop: (signal = "SIGTERM") => {
      stopped ??= (async () => {
        try {
          child.kill(signal);
        } catch {
          // Already gone.
        }
        const status = await child.status;
        await reading;
        return status;
      })();
      return stopped;
    },
    [Symbol.asyncDispose]: async () => {
      await agent.stop("SIGKILL");
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
  return agent;
}

/** Options of {@linkcode loopbackConfig}. */
export interface LoopbackConfigOptions {
  /** `[ceiling] allow`. Default `["test.*", "observe"]`. */
  ceiling?: string[];
  /** What `user:dev@localhost` is granted. Default: the ceiling. */
  allow?: string[];
  /** `max_concurrent`. */
  maxConcurrent?: number;
  /** `max_request_bytes`. */
  maxRequestBytes?: number;
}

/** A loopback-provider config for `startAgentProcess` (every caller is `user:dev@localhost`). */
export function loopbackConfig(opts: LoopbackConfigOptions = {}): string {
  const ceiling = opts.ceiling ?? ["test.*", "observe"];
  const limits = [
    opts.maxConcurrent === undefined ? "" : `max_concurrent = ${opts.maxConcurrent}`,
    opts.maxRequestBytes === undefined ? "" : `max_request_bytes = ${opts.maxRequestBytes}`,
  ].filter(Boolean).join("\n");
  return `
[agent]
listen = "127.0.0.1:0"
audit_log = "{dir}/audit.jsonl"
${limits}

[identity]
provider = "loopback"
loopback_identity = "user:dev@localhost"

[ceiling]
allow = ${JSON.stringify(ceiling)}

[[grant]]
to = ["user:dev@localhost"]
allow = ${JSON.stringify(opts.allow ?? ceiling)}
`;
}

/** The agent's resident set size, in bytes, from /proc (Linux). */
export function rssBytes(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  const kib = /VmRSS:\s+(\d+)\s+kB/.exec(status);
  if (!kib) throw new Error(`no VmRSS for ${pid}`);
  return Number(kib[1]) * 1024;
}
