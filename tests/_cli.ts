// Runs the ops-exec CLI as a process, exactly as `deno task cli` does:
// `deno run --no-prompt -P=cli cli/main.ts ...`, under the permission set of
// deno.json. A fresh XDG_CONFIG_HOME keeps the machine's own inventory out.

const REPO = new URL("../", import.meta.url).pathname;

/** The argv that runs the CLI (before its own arguments). */
export const CLI_ARGV: string[] = [
  Deno.execPath(),
  "run",
  "--no-prompt",
  `--config=${REPO}deno.json`,
  "-P=cli",
  `${REPO}cli/main.ts`,
];

/** What a finished CLI run left. */
export interface CliResult {
  /** Its exit code. */
  code: number;
  /** Its stdout. */
  stdout: string;
  /** Its stderr, without Deno's warning about permissions in the config file. */
  stderr: string;
}

/** Options of {@linkcode cli}. */
export interface CliOptions {
  /** Environment on top of this process's (NO_COLOR=1 unless given). */
  env?: Record<string, string>;
  /** Bytes for its stdin. */
  stdin?: string;
  /** Its working directory. */
  cwd?: string;
}

const configHome = Deno.makeTempDirSync({ prefix: "ops-exec-cli-xdg-" });
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(configHome, { recursive: true });
  } catch {
    // Already gone.
  }
});

/** The environment a CLI process gets. */
export function cliEnv(extra: Record<string, string> = {}): Record<string, string> {
  return {
    ...Deno.env.toObject(),
    XDG_CONFIG_HOME: configHome,
    NO_COLOR: "1",
    DENO_NO_UPDATE_CHECK: "1",
    ...extra,
  };
}

/** Starts the CLI with piped stdout and stderr. */
export function spawnCli(args: string[], opts: CliOptions = {}): Deno.ChildProcess {
  return new Deno.Command(CLI_ARGV[0], {
    args: [...CLI_ARGV.slice(1), ...args],
    env: cliEnv(opts.env),
    clearEnv: true,
    cwd: opts.cwd ?? REPO,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Runs the CLI to its end. */
export async function cli(args: string[], opts: CliOptions = {}): Promise<CliResult> {
  const child = spawnCli(args, opts);
  if (opts.stdin !== undefined) {
    const writer = child.stdin.getWriter();
    await writer.write(new TextEncoder().encode(opts.stdin));
    await writer.close();
  }
  const out = await child.output();
  return {
    code: out.code,
    stdout: new TextDecoder().decode(out.stdout),
    stderr: withoutDenoWarnings(new TextDecoder().decode(out.stderr)),
  };
}

/** stderr without the warning Deno prints for every permission set read from a config. */
export function withoutDenoWarnings(text: string): string {
  return text.split("\n").filter((line) =>
    !/Permissions in the config file is an experimental/.test(line)
  )
    .join("\n");
}

/** The NDJSON events of a `--json` run. */
export function events(stdout: string): Record<string, unknown>[] {
  return stdout.split("\n").filter((line) => line.trim() !== "").map((line) => {
    try {
      return JSON.parse(line);
    } catch {
      throw new Error(`not an NDJSON line: ${line}`);
    }
  });
}

/** The events of one type. */
export function ofType(all: Record<string, unknown>[], type: string): Record<string, unknown>[] {
  return all.filter((e) => e.type === type);
}

/** The sorted keys of an event, to compare a shape. */
export function keys(value: unknown): string[] {
  return Object.keys(value as Record<string, unknown>).sort();
}

/** Writes an inventory file and returns its path. */
export async function writeInventory(toml: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "ops-exec-inventory-" });
  const path = `${dir}/hosts.toml`;
  await Deno.writeTextFile(path, toml);
  return path;
}

/** Reads a child's stdout until `pattern` has matched, then hands back the match. */
export async function readUntil(
  child: Deno.ChildProcess,
  pattern: RegExp,
  ms = 30_000,
): Promise<{ match: RegExpExecArray; text: string; rest: Promise<string> }> {
  const reader = child.stdout.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const deadline = Date.now() + ms;
  for (;;) {
    const match = pattern.exec(text);
    if (match) {
      const rest = (async () => {
        let more = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) return more;
          more += decoder.decode(value, { stream: true });
        }
      })();
      return { match, text, rest };
    }
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = new Promise<null>((r) => {
      timer = setTimeout(() => r(null), Math.max(1, deadline - Date.now()));
    });
    const chunk = await Promise.race([reader.read(), late]);
    clearTimeout(timer);
    if (chunk === null) throw new Error(`no ${pattern} within ${ms} ms in:\n${text}`);
    if (chunk.done) throw new Error(`the CLI ended before ${pattern}:\n${text}`);
    text += decoder.decode(chunk.value, { stream: true });
  }
}
