// Keeps one caller's step from another's, from the agent and from the audit
// log (agent.step_isolation = "namespace", Linux): each step runs in PID and
// mount namespaces of its own with a private /proc, made as the sync
// confinement makes its own (_namespaces.ts), by STEP_SCRIPT. In it the step
// sees only its own processes: not another step's environment, stdin or
// stdout pipe (/proc/PID/environ, /proc/PID/fd), not the agent nor its
// helpers to signal, ptrace or open; the audit log's directory is covered.
// When the step's main process exits, the process group sweep kills the
// namespace's init and with it every process left in the namespace, even one
// that made a session of its own.

import { dirname } from "node:path";
import { baseEnvironment } from "../executor/_env.ts";
import { runProcess } from "../executor/_spawn.ts";
import { chooseNamespaceMode, type NamespaceMode, unshareArgv } from "./_namespaces.ts";
import STEP_SCRIPT from "./_step_isolation.sh" with { type: "text" };

/** How steps are isolated on this host. */
export interface StepIsolation {
  /** The namespaces' mode. */
  mode: NamespaceMode;
  /** The directory covered in every step's view (the audit log's). */
  hide: string;
}

/** The argv that runs the step `argv` isolated as `isolation` says. */
export function isolatedArgv(argv: readonly string[], isolation: StepIsolation): string[] {
  return [
    ...unshareArgv(isolation.mode, ["--mount", "--pid", "--propagation", "private"]),
    "/bin/sh",
    "-c",
    STEP_SCRIPT,
    "sh",
    isolation.mode.userNamespace ? "1" : "0",
    isolation.hide,
    ...argv,
  ];
}

/**
 * Finds how this host isolates steps (as root, else in a user namespace),
 * running the isolation with a step that checks what it sees.
 *
 * @param auditLog The audit log, whose directory every step's view covers.
 * @throws {ConfigError} `agent.step_isolation` when this host cannot.
 */
export async function setUpStepIsolation(auditLog: string): Promise<StepIsolation> {
  const hide = dirname(auditLog);
  // The directory the audit log will be in (AuditLog.open makes it too).
  await Deno.mkdir(hide, { recursive: true, mode: 0o750 });
  const uid = await ownUid();
  const mode = await chooseNamespaceMode(
    "agent.step_isolation",
    "a step",
    (mode) => probe({ mode, hide }, uid),
  );
  return { mode, hide };
}

/** The agent's own uid, as its steps would see it (`Deno.uid` needs a sys permission the agent lacks). */
async function ownUid(): Promise<string> {
  const lines: string[] = [];
  await runProcess({
    argv: ["/bin/sh", "-c", "id -u"],
    env: baseEnvironment(),
    timeoutMs: 10_000,
    killGraceMs: 1000,
  }, { write: (line) => void lines.push(line.text) });
  return lines[0] ?? "";
}

/** `null` when an isolated step sees only itself and its init, else what went wrong. */
async function probe(isolation: StepIsolation, uid: string): Promise<string | null> {
  // pid 2 (its init is pid 1), its own /proc, the agent's account, the log's directory empty.
  const check = `uid=$1 hide=$2
[ $$ = 2 ] || { echo "pid $$, not 2"; exit 1; }
set -- /proc/[0-9]*
[ $# -le 3 ] || { echo "sees $# processes"; exit 1; }
[ "$(id -u)" = "$uid" ] || { echo "runs as $(id -u), not $uid"; exit 1; }
[ -z "$(ls -A "$hide" 2>/dev/null)" ] || { echo "$hide is not covered"; exit 1; }
echo isolated`;
  const lines: string[] = [];
  try {
    const result = await runProcess({
      argv: isolatedArgv(["/bin/sh", "-c", check, "sh", uid, isolation.hide], isolation),
      env: baseEnvironment(),
      timeoutMs: 10_000,
      killGraceMs: 1000,
    }, { write: (line) => void lines.push(line.text) });
    if (result.exitCode === 0 && lines.includes("isolated")) return null;
    return lines.slice(-2).join(" / ") || `exit ${result.exitCode ?? result.signal}`;
  } catch (error) {
    return error instanceof Error ? error.message : String(error);
  }
}
