// An exec step (an argv, no shell) run through /bin/sh, for processes whose
// Deno permission set may spawn only what its `run` scope names (the agent's,
// the CLI's) and names /bin/sh, the one program every step needs. `"$@"`
// keeps the argv exact (no word splitting); `exec` keeps the program's pid
// the shell's; a missing program reads as it does with LocalExec.

const EXEC_WRAPPER =
  'command -v -- "$1" >/dev/null 2>&1 || { printf "ops-exec: %s: command not found\\n" "$1" >&2; exit 127; }; exec "$@"';

/** The argv that runs `argv` exactly, through `/bin/sh`. */
export function execViaShell(argv: readonly string[]): string[] {
  return ["/bin/sh", "-c", EXEC_WRAPPER, "sh", ...argv];
}
