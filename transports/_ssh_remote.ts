// The programs SshExec runs on a remote host, and the commands that start
// them. The programs are real files (_remote/*.pl, *.sh) loaded as text;
// their constants (`@@NAME@@`) are filled in here, from this one source,
// which the local side reads as well.
//
// Every command goes through the remote account's login shell, which sshd
// runs as `<shell> -c <command>`. Each is one `exec` of a fixed program with
// a single-quoted argument, which reads the same in every POSIX shell and in
// fish, as long as the quoted text has no backslash before a quote or
// another backslash (fish's two escapes inside single quotes): a test holds
// every program to that.

import CONNECT_SH from "./_remote/connect.sh" with { type: "text" };
import SESSION_PL from "./_remote/session.pl" with { type: "text" };
import STEP_PL from "./_remote/step.pl" with { type: "text" };
import STEP_SH from "./_remote/step.sh" with { type: "text" };

/** The hello payload of the session supervisor; bump it when the session's framing changes. */
export const SESSION_MAGIC = "OPSX2";
/** The magic of the per-step frame, start marker and trailer; bump it when they change. */
export const STEP_MAGIC = "OPSX3";

/** Why a per-step supervisor ended without a trailer (its exit code). */
export const EXIT_CODES = {
  /** The remote host lacks what the supervisor needs (setsid, a temporary file, fork). */
  start: 96,
  /** The frame was cut short (the connection closed before the step was sent). */
  cut: 97,
  /** The frame was not one this supervisor reads. */
  garbled: 98,
} as const;

/** The PATH a remote step starts with (Homebrew's prefix is put first where it exists). */
export const REMOTE_BASE_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/**
 * Signals a step starts with at their default disposition, whatever the
 * supervisor inherited (an ignored SIGINT would make a step's own
 * `trap ... INT` and `kill -INT` do nothing).
 */
const RESET_SIGNALS = [
  "HUP",
  "INT",
  "QUIT",
  "PIPE",
  "ALRM",
  "TERM",
  "USR1",
  "USR2",
  "CHLD",
  "TSTP",
  "TTIN",
  "TTOU",
  "XCPU",
  "XFSZ",
  "VTALRM",
  "PROF",
  "WINCH",
  "URG",
];

const CONSTANTS: Record<string, string> = {
  SESSION_MAGIC,
  STEP_MAGIC,
  EXIT_START: String(EXIT_CODES.start),
  EXIT_CUT: String(EXIT_CODES.cut),
  EXIT_GARBLED: String(EXIT_CODES.garbled),
  BASE_PATH: REMOTE_BASE_PATH,
  RESET_SIGNALS: `qw(${RESET_SIGNALS.join(" ")})`,
};

/**
 * A program's text as sent: comment lines and blank lines dropped (they
 * would only lengthen every command line), constants filled in.
 *
 * @throws {Error} On a constant this module does not define.
 */
export function fillProgram(name: string, text: string): string {
  const body = text.split("\n").filter((line) => !/^\s*(#.*)?$/.test(line)).join("\n");
  return body.replace(/@@([A-Z_]+)@@/g, (_, key: string) => {
    const value = CONSTANTS[key];
    if (value === undefined) throw new Error(`${name}: no constant ${key}`);
    return value;
  });
}

/** The programs, filled in. */
export const PROGRAMS: Readonly<Record<"connect" | "session" | "stepPerl" | "stepSh", string>> = {
  connect: fillProgram("connect.sh", CONNECT_SH),
  session: fillProgram("session.pl", SESSION_PL),
  stepPerl: fillProgram("step.pl", STEP_PL),
  stepSh: fillProgram("step.sh", STEP_SH),
};

/**
 * Quotes `word` for a POSIX shell: single quotes, with each `'` written as
 * `'\''`. The result is one word whatever `word` holds.
 */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

/** The command that opens a master: the probe, with `marker` around its answers. */
export function connectCommand(marker: string): string {
  return `exec /bin/sh -c ${shellQuote(PROGRAMS.connect)} ops-exec ${marker}`;
}

/** The command of the long-lived session (the perl session supervisor). */
export function sessionCommand(): string {
  // LC_ALL=C spares perl reading locale files at start-up (where the login
  // shell passes it on: fish does not); a step's environment is built from
  // scratch, so no step sees it.
  return `LC_ALL=C exec perl -e ${shellQuote(PROGRAMS.session)}`;
}

/** The command of one step in an ssh session of its own, for the chosen supervisor. */
export function stepCommand(supervisor: "perl" | "sh"): string {
  return supervisor === "perl"
    ? `LC_ALL=C exec perl -e ${shellQuote(PROGRAMS.stepPerl)}`
    : `exec /bin/sh -c ${shellQuote(PROGRAMS.stepSh)} ops-exec`;
}

/**
 * How the sh supervisor learns a step's exact wait status: util-linux
 * `setsid -f -w`, busybox `time`, or nothing better than sh's `$?` (which
 * reads a death by signal N as 128 + N). Found when the master opens.
 */
export type Waiter = "setsid" | "time" | "none";

/** What the connect probe found on the remote account. */
export interface RemoteFacts {
  /** The login shell that passes commands on (`$SHELL` as sshd set it), or "". */
  shell: string;
  /** perl is on the account's PATH. */
  perl: boolean;
  /** setsid(1) is on the account's PATH. */
  setsid: boolean;
  /** How the sh supervisor can read a step's exact wait status. */
  waiter: Waiter;
}

/**
 * Reads the connect probe's answers from its stdout lines (rc-file output
 * may surround them); `null` when the probe did not run.
 */
export function parseConnectProbe(lines: readonly string[], marker: string): RemoteFacts | null {
  const from = lines.indexOf(marker);
  const to = lines.indexOf(marker, from + 1);
  if (from < 0 || to < 0) return null;
  const answers = lines.slice(from + 1, to);
  const value = (key: string) =>
    answers.find((line) => line.startsWith(`${key}=`))?.slice(key.length + 1);
  const waiter = value("waiter");
  return {
    shell: value("shell") ?? "",
    perl: answers.includes("perl"),
    setsid: answers.includes("setsid"),
    waiter: waiter === "setsid" || waiter === "time" ? waiter : "none",
  };
}

/** Whether `shell` (a path) is a csh, which reads none of SshExec's commands as meant. */
export function isCshFamily(shell: string): boolean {
  return /^(t?csh|bsd-csh)$/.test(shell.slice(shell.lastIndexOf("/") + 1));
}

/**
 * Why the chosen supervisor cannot run on this host, or `null` when it can.
 *
 * @param requested What the caller asked for (`remoteSupervisor`).
 * @param facts What the connect probe found.
 */
export function supervisorProblem(
  requested: "auto" | "perl" | "sh",
  facts: RemoteFacts,
): string | null {
  if (requested === "perl" && !facts.perl) {
    return `remoteSupervisor "perl" needs perl on the remote account's PATH, which has none` +
      (facts.setsid
        ? `; the host has setsid(1), so remoteSupervisor "auto" or "sh" would work`
        : ` (nor setsid(1), which the sh supervisor needs)`);
  }
  if (requested === "sh" && !facts.setsid) {
    return `remoteSupervisor "sh" needs setsid(1) (util-linux or busybox) on the remote ` +
      `account's PATH, which has none` +
      (facts.perl
        ? `; the host has perl, so remoteSupervisor "auto" or "perl" would work`
        : ` (nor perl, which the default supervisor needs)`);
  }
  if (requested === "auto" && !facts.perl && !facts.setsid) {
    return `the remote account's PATH has neither perl nor setsid(1): SshExec needs one of ` +
      `them to supervise steps (perl, or setsid from util-linux or busybox)`;
  }
  return null;
}
