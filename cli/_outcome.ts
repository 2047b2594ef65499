// How one host's operation ended, in words and in an exit code, and the
// exit code of a whole invocation. The codes are documented in docs/cli.md.

import {
  CapabilityDenied,
  ConfigError,
  OpsExecError,
  type RunOutput,
  StepError,
  TransportError,
} from "../mod.ts";
import { UsageError } from "./_args.ts";
import { TargetError } from "./_target.ts";

/** The exit codes of ops-exec other than a single host's own exit code. */
export const EXIT = {
  /** Every host succeeded. */
  ok: 0,
  /** A step (on several hosts) or a transfer failed. */
  failed: 1,
  /** A bad option, argument or target (sysexits EX_USAGE). */
  usage: 64,
  /** A host could not be reached, or refused the connection (EX_UNAVAILABLE). */
  unreachable: 69,
  /** Something went wrong that is neither the host's nor the step's fault (EX_SOFTWARE). */
  error: 70,
  /** An action was not granted; nothing started (EX_NOPERM). */
  denied: 77,
  /** The inventory (or another configuration) is invalid (EX_CONFIG). */
  config: 78,
  /** A step's --timeout ran out (as GNU timeout). */
  timedOut: 124,
  /** Interrupted by SIGINT (Ctrl-C): every running step was cancelled. */
  interrupted: 130,
  /** Stopped by SIGTERM: every running step was cancelled. */
  terminated: 143,
} as const;

/** How one host's operation ended. */
export type Status =
  | "ok"
  | "failed"
  | "timed_out"
  | "cancelled"
  | "denied"
  | "unreachable"
  | "usage"
  | "config"
  | "error"
  | "skipped";

/** The exit code each status stands for in a fan-out (`failed` on one host: its own code). */
const STATUS_EXIT: Record<Status, number> = {
  ok: EXIT.ok,
  failed: EXIT.failed,
  timed_out: EXIT.timedOut,
  cancelled: EXIT.interrupted,
  denied: EXIT.denied,
  unreachable: EXIT.unreachable,
  usage: EXIT.usage,
  config: EXIT.config,
  error: EXIT.error,
  skipped: EXIT.failed,
};

/** Which status decides a fan-out's exit code when hosts ended differently (first wins). */
const PRECEDENCE: readonly Status[] = [
  "cancelled",
  "usage",
  "config",
  "denied",
  "unreachable",
  "error",
  "timed_out",
  "failed",
  "skipped",
];

/** A status with the exit code it stands for and a one-line reason. */
export interface Verdict {
  /** How it ended. */
  status: Status;
  /** The exit code of this host alone. */
  exitCode: number;
  /** One line a person can act on (empty for `ok`). */
  reason: string;
}

/** Kinds of TransportError that mean "could not get to (or stay on) the host". */
const UNREACHABLE_KINDS = new Set([
  "unreachable",
  "auth_refused",
  "host_key_changed",
  "host_key_unknown",
  "unknown_peer",
  "connection_lost",
  "timeout",
]);

/** The verdict on a step's result. */
export function verdictOfRun(output: RunOutput): Verdict {
  if (output.success) return { status: "ok", exitCode: 0, reason: "" };
  if (output.cancelled) {
    return { status: "cancelled", exitCode: EXIT.interrupted, reason: "cancelled" };
  }
  if (output.timedOut) {
    return {
      status: "timed_out",
      exitCode: EXIT.timedOut,
      reason: "timed out: its process group was killed",
    };
  }
  if (output.signal) {
    return {
      status: "failed",
      exitCode: 128 + signalNumber(output.signal),
      reason: `killed by ${output.signal}`,
    };
  }
  const code = output.exitCode ?? 1;
  return { status: "failed", exitCode: code, reason: `exit ${code}` };
}

/**
 * The verdict on an error thrown for one host.
 *
 * @param error What was thrown.
 * @param during `transfer` when a push/pull was running: a transport timeout there is the
 *   transfer's own `--timeout`.
 */
export function verdictOfError(error: unknown, during: "step" | "transfer" = "step"): Verdict {
  const reason = oneLine(error);
  if (error instanceof CapabilityDenied) return { status: "denied", exitCode: EXIT.denied, reason };
  if (error instanceof TransportError) {
    if (error.kind === "timeout" && during === "transfer") {
      return { status: "timed_out", exitCode: EXIT.timedOut, reason };
    }
    if (UNREACHABLE_KINDS.has(error.kind)) {
      return { status: "unreachable", exitCode: EXIT.unreachable, reason };
    }
    if (error.kind === "sync_failed") return { status: "failed", exitCode: EXIT.failed, reason };
    return { status: "error", exitCode: EXIT.error, reason };
  }
  if (error instanceof StepError || error instanceof TargetError || error instanceof UsageError) {
    return { status: "usage", exitCode: EXIT.usage, reason };
  }
  if (error instanceof ConfigError) return { status: "config", exitCode: EXIT.config, reason };
  if (error instanceof Deno.errors.NotCapable) {
    return { status: "config", exitCode: EXIT.config, reason: notCapable(reason) };
  }
  if (isAbort(error)) {
    return { status: "cancelled", exitCode: EXIT.interrupted, reason: "cancelled" };
  }
  if (error instanceof OpsExecError) return { status: "error", exitCode: EXIT.error, reason };
  return { status: "error", exitCode: EXIT.error, reason };
}

/**
 * The exit code of a whole invocation: one host's own code; for several, 0
 * only when every one succeeded, else the code of the most telling failure.
 */
export function exitCodeOf(verdicts: readonly Verdict[]): number {
  if (verdicts.length === 1) return verdicts[0].exitCode;
  for (const status of PRECEDENCE) {
    if (verdicts.some((v) => v.status === status)) return STATUS_EXIT[status];
  }
  return EXIT.ok;
}

/** Deno's refusal, with what to do about it. */
export function notCapable(message: string): string {
  const program = /Requires run access to "([^"]+)"/.exec(message)?.[1];
  if (program !== undefined) {
    return `the CLI's permission set does not let it start "${program}" on this machine: ` +
      `run it through the shell (ops-exec sh local -a ACTION '${program} ...'), or add ` +
      `--allow-run=${program} to the install command (see "Permissions" in docs/cli.md)`;
  }
  return `${message.replace(/, run again with .*$/, "")}: outside the CLI's permission set ` +
    `(see "Permissions" in docs/cli.md)`;
}

/** An error as one line: its message, without a stack. */
export function oneLine(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split("\n").map((line) => line.trim()).filter(Boolean).join(" / ");
}

function isAbort(error: unknown): boolean {
  return error instanceof DOMException &&
      (error.name === "AbortError" || error.name === "TimeoutError") ||
    error instanceof Interrupted;
}

/** The reason a run is aborted when the CLI receives SIGINT or SIGTERM. */
export class Interrupted extends Error {
  /** @param signal The signal received. */
  constructor(readonly signal: "SIGINT" | "SIGTERM") {
    super(`interrupted by ${signal}`);
    this.name = "Interrupted";
  }
}

// Signal numbers as the shell reports them (128 + n); those that differ between Linux and
// macOS/BSD are looked up for the local OS.
const SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGSEGV: 11,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  ...(Deno.build.os === "linux"
    ? { SIGBUS: 7, SIGUSR1: 10, SIGUSR2: 12, SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20 }
    : { SIGBUS: 10, SIGUSR1: 30, SIGUSR2: 31, SIGCHLD: 20, SIGCONT: 19, SIGSTOP: 17, SIGTSTP: 18 }),
};

function signalNumber(signal: string): number {
  const n = SIGNALS[signal] ?? Number(/^SIG(\d+)$/.exec(signal)?.[1]);
  return Number.isInteger(n) && n > 0 && n < 128 ? n : 0;
}
