// The verbs, their options and their help texts, and the reading of the
// command line (node:util parseArgs, strict: an unknown option is a usage
// error naming it).

import { parseArgs } from "node:util";
import { closest } from "../executor/_strict_toml.ts";

/** A usage error: a bad option or argument. The message names it. */
export class UsageError extends Error {
  /**
   * @param verb The verb whose usage was wrong, if any.
   * @param message What is wrong.
   */
  constructor(readonly verb: string | null, message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** The verbs of ops-exec. */
export const VERBS = ["run", "sh", "observe", "caps", "push", "pull", "hosts"] as const;
/** One verb. */
export type Verb = typeof VERBS[number];

type OptionSpec = {
  type: "string" | "boolean";
  short?: string;
  multiple?: boolean;
};

const COMMON: Record<string, OptionSpec> = {
  help: { type: "boolean", short: "h" },
  json: { type: "boolean" },
  inventory: { type: "string", short: "i" },
};
const FLEET: Record<string, OptionSpec> = {
  ...COMMON,
  allow: { type: "string", multiple: true },
  concurrency: { type: "string", short: "c" },
  "fail-fast": { type: "boolean" },
};
const STEP: Record<string, OptionSpec> = {
  ...FLEET,
  action: { type: "string", short: "a" },
  timeout: { type: "string", short: "t" },
  grace: { type: "string" },
  env: { type: "string", short: "e", multiple: true },
  cwd: { type: "string" },
  stdin: { type: "string" },
};
const SYNC: Record<string, OptionSpec> = {
  ...FLEET,
  delete: { type: "boolean" },
  exclude: { type: "string", multiple: true },
  "dry-run": { type: "boolean", short: "n" },
  checksum: { type: "boolean" },
  compress: { type: "boolean", short: "z" },
  timeout: { type: "string", short: "t" },
};

const OPTIONS: Record<Verb, Record<string, OptionSpec>> = {
  run: STEP,
  sh: STEP,
  observe: FLEET,
  caps: FLEET,
  push: SYNC,
  pull: SYNC,
  hosts: COMMON,
};

const TARGETS = `TARGET is one of:
  local                       this machine
  ssh://[user@]host[:port]    over the system ssh (your keys, known_hosts, ssh_config)
  agent://host[:port]         through ops-agent (port 7070 unless given)
  NAME                        a host or group of the inventory (--inventory FILE, else
                              ~/.config/ops-exec/hosts.toml)`;

const FLEET_OPTIONS =
  `  --allow GRANT         the caller-side grant, instead of the inventory's (repeatable):
                        an action (sando.promote), a prefix (sando.*), sync.push:/path, *
  -c, --concurrency N   hosts at once (default 8)
      --fail-fast       stop at the first host that fails; start no more
  -i, --inventory FILE  the inventory (default ~/.config/ops-exec/hosts.toml)
      --json            NDJSON events on stdout instead of text (docs/cli.md)
  -h, --help            this help`;

const STEP_OPTIONS =
  `  -a, --action A        the action the step is gated on (required), e.g. sando.health
  -t, --timeout D       kill the step's process group after D (30s, 5m, 1h, 500ms)
      --grace D         between SIGTERM and SIGKILL on timeout or Ctrl-C (default 5s)
  -e, --env K=V         add a variable to the step's environment (repeatable)
      --cwd DIR         the step's working directory on the host (absolute)
      --stdin FILE      bytes for the step's stdin ("-" for this program's stdin)
${FLEET_OPTIONS}`;

const SYNC_OPTIONS =
  `      --delete          delete files on the receiving side that the sender lacks
      --exclude P       an rsync exclude pattern (repeatable)
  -n, --dry-run         show what would change, change nothing
      --checksum        compare by checksum, not size and time
  -z, --compress        compress in transit
  -t, --timeout D       kill the transfer after D
${FLEET_OPTIONS}`;

/** The help text of each verb. */
export const HELP: Record<Verb, string> = {
  run: `Usage: ops-exec run TARGET... --action A [options] -- CMD [ARGS...]

Runs CMD with ARGS (no shell) on every TARGET, gated on action A, with the
output of each host live, prefixed with the host and the stream.

${TARGETS}

Options:
${STEP_OPTIONS}

Examples:
  ops-exec run local --allow demo.uptime --action demo.uptime -- /bin/sh -c uptime
  ops-exec run ssh://deploy@web-1 --allow sando.health -a sando.health -- /srv/app/health.sh
  ops-exec run prod -a sando.health -c 4 --timeout 30s -- systemctl is-active app

Exit: the step's exit code on one host; on several, 0 only when all succeeded.`,
  sh: `Usage: ops-exec sh TARGET... --action A [options] 'SCRIPT'

Runs SCRIPT with /bin/sh -c on every TARGET, gated on action A.

${TARGETS}

Options:
${STEP_OPTIONS}

Examples:
  ops-exec sh local --allow demo.hello -a demo.hello 'echo hello from $(hostname)'
  ops-exec sh canary -a sando.promote -e RELEASE=1.2.3 'ln -sfn releases/$RELEASE current'
  ops-exec sh agent://100.101.7.12 --allow sando.check -a sando.check --json 'df -h /srv'`,
  observe: `Usage: ops-exec observe TARGET... [options]

Reads each host's facts: hostname, OS, kernel, uptime, load, memory, disks of
the granted sync roots. Gated on the action "observe".

${TARGETS}

Options:
${FLEET_OPTIONS}

Examples:
  ops-exec observe local --allow observe
  ops-exec observe prod --json | jq -r '.hostname'`,
  caps: `Usage: ops-exec caps TARGET... [options]

Shows the caller-side grant for each host (from --allow or the inventory)
and, through an agent, what the host grants this machine and what both allow.

${TARGETS}

Options:
${FLEET_OPTIONS}

Examples:
  ops-exec caps mac-1
  ops-exec caps agent://100.77.1.9 --allow 'bento.*' --json`,
  push: `Usage: ops-exec push TARGET SRC DST [options]

Copies the local SRC to DST on every host of TARGET with rsync (a trailing
slash on SRC copies its contents, as with rsync). Gated on sync.push at DST.
A progress bar on a terminal.

${TARGETS}

Options:
${SYNC_OPTIONS}

Examples:
  ops-exec push web-1 ./dist/ /srv/app/releases/1.2.3/
  ops-exec push prod ./dist/ /srv/app/releases/1.2.3/ --delete --exclude '*.map'
  ops-exec push ssh://deploy@web-1 --allow sync.push:/srv/app ./dist/ /srv/app/new/ -n`,
  pull: `Usage: ops-exec pull TARGET SRC DST [options]

Copies SRC on the host to the local DST with rsync. Gated on sync.pull at SRC.
From several hosts, each host's copy goes to DST/HOST/.

${TARGETS}

Options:
${SYNC_OPTIONS}

Examples:
  ops-exec pull mac-1 /Users/ci/builds/1.2.3/out/ ./dist/
  ops-exec pull prod /var/log/app/ ./logs/      # ./logs/web-1/, ./logs/web-2/, ...`,
  hosts: `Usage: ops-exec hosts [TARGET...] [options]

Shows the inventory resolved: each host with its transport, address, groups
and grant (its own allow and its groups'), then the groups. With TARGETs,
only the hosts they name.

Options:
  -i, --inventory FILE  the inventory (default ~/.config/ops-exec/hosts.toml)
      --json            NDJSON events on stdout instead of text
  -h, --help            this help

Examples:
  ops-exec hosts
  ops-exec hosts prod --json`,
};

/** The program's own help. */
export function mainHelp(version: string): string {
  return `ops-exec ${version}: run a capability-gated step on hosts, observe them, sync files

Usage: ops-exec VERB [options] ...

Verbs:
  run TARGET... -a A -- CMD ARGS   run a command (no shell) on each host
  sh TARGET... -a A 'SCRIPT'       run a /bin/sh script on each host
  observe TARGET...                read each host's facts
  caps TARGET...                   show what is granted, here and by the host's agent
  push TARGET SRC DST              rsync local SRC to DST on each host
  pull TARGET SRC DST              rsync SRC on each host to local DST
  hosts [TARGET...]                show the inventory, resolved

${TARGETS}

Nothing is granted implicitly: the caller-side grant comes from the inventory's
allow (per host and group) or from --allow; a step it does not grant never starts.

Options:
  -h, --help       this help (and "ops-exec VERB --help")
  -V, --version    print the version

Exit codes: the step's own on one host; 0 only when every host succeeded;
  64 usage, 69 unreachable, 70 internal error, 77 denied, 78 configuration,
  124 timed out, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).

Examples:
  ops-exec sh local --allow demo.hello -a demo.hello 'echo hello'
  ops-exec run prod -a sando.health -c 4 -- /srv/app/health.sh
  ops-exec push canary ./dist/ /srv/app/releases/1.2.3/

Docs: docs/cli.md`;
}

/** The parsed command line of one verb. */
export interface VerbArgs {
  /** The verb. */
  verb: Verb;
  /** Option values by name. */
  values: Record<string, string | boolean | string[] | undefined>;
  /** Positional arguments before `--`. */
  positionals: string[];
  /** Arguments after `--`, or `null` when there was no `--`. */
  rest: string[] | null;
}

/**
 * Reads one verb's arguments.
 *
 * @throws {UsageError} Naming the unknown verb, the unknown option, the missing value.
 */
export function parseVerb(args: readonly string[]): VerbArgs {
  const [name, ...tail] = args;
  if (!(VERBS as readonly string[]).includes(name)) {
    const hint = closest(name, VERBS);
    throw new UsageError(
      null,
      `unknown verb "${name}"${hint ? ` (did you mean "${hint}"?)` : ""}; verbs: ${
        VERBS.join(", ")
      }`,
    );
  }
  const verb = name as Verb;
  let parsed;
  try {
    parsed = parseArgs({
      args: [...tail],
      options: OPTIONS[verb],
      allowPositionals: true,
      strict: true,
      tokens: true,
    });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // node:util's messages end with advice for scripts ("To specify a positional argument ...").
    throw new UsageError(verb, message.split(". To specify")[0].replace(/\.$/, ""));
  }
  const terminator = parsed.tokens.find((t) => t.kind === "option-terminator");
  const positionals: string[] = [];
  const rest: string[] = [];
  for (const token of parsed.tokens) {
    if (token.kind !== "positional") continue;
    if (terminator && token.index > terminator.index) rest.push(token.value);
    else positionals.push(token.value);
  }
  return {
    verb,
    values: parsed.values as VerbArgs["values"],
    positionals,
    rest: terminator ? rest : null,
  };
}

/**
 * A duration as written on the command line: `500ms`, `30s`, `5m`, `1h`, or
 * a number of seconds.
 *
 * @throws {UsageError} When it is none of these.
 */
export function parseDuration(verb: Verb, option: string, text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) {
    throw new UsageError(
      verb,
      `--${option} "${text}": write a duration such as 500ms, 30s, 5m or 1h`,
    );
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[match[2] ?? "s"]!;
  const ms = Math.round(Number(match[1]) * unit);
  if (ms < 1) throw new UsageError(verb, `--${option} "${text}" must be at least 1ms`);
  return ms;
}
