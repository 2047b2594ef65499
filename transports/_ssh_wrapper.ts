// The remote half of SshExec: the command ssh runs on the host, the frame we
// write to its stdin, and the status trailer it writes back on stderr.
//
// The command is a short POSIX sh line. Where perl exists (macOS, every
// Debian/Ubuntu, most servers) it execs a small perl supervisor: perl reports
// a child's wait status exactly (exit 143 and death by SIGTERM differ), which
// POSIX sh cannot. Elsewhere a POSIX sh supervisor built on setsid(1) runs
// the step. Both read the same frame from stdin:
//
//   OPSX1 <nonce> <graceMs> <graceSeconds> <setupBytes> <setupLines> <stdinBytes>\n
//   <setup: shell-quoted words, <setupLines> lines>   cwd, env count, NAME=value..., argv...
//   <stdin bytes>
//
// and then keep reading stdin: any byte (our kill request) or EOF (the
// connection dropped, or the local ssh was killed) sends SIGTERM to the
// step's process group, then SIGKILL after the grace. When the step's main
// process ends, what is left of its group gets SIGKILL, and the supervisor
// writes `\0OPSX1:<nonce>:x:<code>\0` or `\0OPSX1:<nonce>:s:<SIGNAME>\0` to
// stderr. The nonce travels only inside the frame (never in an argv or an
// environment a step could read), so a step cannot forge the trailer, and a
// missing trailer means the wrapper never finished: an ssh failure, never
// the step's own exit 255.

import { TransportError } from "../executor/errors.ts";
import { concat, indexOfBytes } from "../executor/_bytes.ts";

/** The frame's magic word; bump it when the frame changes. */
const MAGIC = "OPSX1";

/** Which supervisor the remote command uses. */
export type RemoteSupervisor = "auto" | "perl" | "sh";

/** What the wrapper reported about the step. */
export type StepStatus = { exitCode: number; signal: null } | { exitCode: null; signal: string };

/**
 * Quotes `word` for a POSIX shell: single quotes, with each `'` written as
 * `'\''`. The result is one word whatever `word` holds.
 */
export function shellQuote(word: string): string {
  return `'${word.replaceAll("'", `'\\''`)}'`;
}

// The base environment of a step on the remote host, as on the local one
// (executor/_env.ts): a fixed PATH (Homebrew's first where it exists), the
// account's HOME, USER, LOGNAME, SHELL, TMPDIR as sshd set them, and LANG
// (the session's, else a UTF-8 default). Then the step's own variables.
const PERL_SUPERVISOR = String.raw`
my $b = "";
sub more { my $r = sysread(STDIN, $b, 65536, length $b); exit 97 unless $r; }
more() while index($b, "\n") < 0;
my $e = index($b, "\n");
my ($m, $nonce, $grace, undef, $sn, undef, $in) = split / /, substr($b, 0, $e);
exit 98 unless $m eq "OPSX1";
substr($b, 0, $e + 1) = "";
more() while length($b) < $sn + $in;
my $kill = length($b) > $sn + $in;
my (@w, $w, $on);
my $s = substr($b, 0, $sn);
while ($s =~ /\G(?:'([^']*)'|\\(.)|( ))/gs) {
  if (defined $3) { push @w, $w if $on; $w = ""; $on = 0 }
  else { $w .= defined $1 ? $1 : $2; $on = 1 }
}
push @w, $w if $on;
my $cwd = shift @w;
my $ne = shift @w;
my %env = (PATH => (-d "/opt/homebrew/bin" ? "/opt/homebrew/bin:" : "") .
  "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin");
for (qw(HOME USER LOGNAME SHELL TMPDIR)) { $env{$_} = $ENV{$_} if defined $ENV{$_} && $ENV{$_} ne "" }
$env{LANG} = defined $ENV{LANG} && $ENV{LANG} ne "" ? $ENV{LANG}
  : $^O eq "darwin" ? "en_US.UTF-8" : "C.UTF-8";
for (splice @w, 0, $ne) { my ($k, $v) = split /=/, $_, 2; $env{$k} = $v }
my $input;
if ($in > 0) {
  open($input, "+>", undef) or do { print STDERR "ops-exec: stdin: $!\n"; exit 96 };
  binmode $input;
  print $input substr($b, $sn, $in);
  seek($input, 0, 0);
}
undef $b;
my $pid = fork;
if (!defined $pid) { print STDERR "ops-exec: fork: $!\n"; exit 96 }
if ($pid == 0) {
  setpgrp(0, 0);
  if ($input) { open(STDIN, "<&", $input) or exit 126 } else { open(STDIN, "<", "/dev/null") }
  if ($cwd ne "" && !chdir $cwd) {
    my $gone = $! + 0 == 2 || $! + 0 == 20;
    print STDERR "ops-exec: cwd $cwd: " . ($gone ? "no such directory" : "$!") . "\n";
    exit($gone ? 127 : 126);
  }
  %ENV = %env;
  exec { $w[0] } @w;
  my $missing = $! + 0 == 2;
  print STDERR "ops-exec: $w[0]: " . ($missing ? "command not found" : "permission denied") . "\n";
  exit($missing ? 127 : 126);
}
setpgrp($pid, $pid);
close $input if $input;
my $watcher = fork;
if (defined $watcher && $watcher == 0) {
  open(STDOUT, ">", "/dev/null");
  open(STDERR, ">", "/dev/null");
  sysread(STDIN, my $x, 64) unless $kill;
  kill "TERM", -$pid;
  select(undef, undef, undef, $grace / 1000);
  kill "KILL", -$pid;
  exit 0;
}
$SIG{$_} = sub { kill "KILL", -$pid } for qw(TERM HUP INT);
waitpid($pid, 0);
my $st = $?;
kill "KILL", -$pid;
if ($watcher) { kill "KILL", $watcher; waitpid($watcher, 0) }
my $res = "x:" . ($st >> 8);
if ($st & 127) {
  require Config;
  my @n = split " ", $Config::Config{sig_name};
  $res = "s:SIG" . ($n[$st & 127] || ($st & 127));
}
syswrite STDERR, "\0OPSX1:$nonce:$res\0";
exit 0;
`;

// The same contract in POSIX sh, for hosts without perl. Limits: a status
// above 128 reads as death by signal (sh cannot tell `exit 143` from
// SIGTERM), and an asynchronous list starts with SIGINT/SIGQUIT ignored,
// which the subshell resets before it execs. (`%{` stands for the shell's
// `${`, which a template literal would take for its own.)
const SH_SUPERVISOR = String.raw`
IFS=' ' read -r m n g gs sb sl ib || exit 97
[ "$m" = OPSX1 ] || exit 98
s=
while [ "$sl" -gt 0 ]; do IFS= read -r l || exit 97; s="$s$l
"; sl=$((sl - 1)); done
eval "set -- $s"
c=$1 ne=$2
shift 2
report() { printf '\000OPSX1:%s:%s\000' "$n" "$1" >&2; exit 0; }
command -v setsid >/dev/null 2>&1 || { echo "ops-exec: the remote host has neither perl nor setsid" >&2; exit 96; }
t=/dev/null
if [ "$ib" -gt 0 ]; then
  t=$(mktemp "%{TMPDIR:-/tmp}/ops-exec.XXXXXX") || exit 96
  head -c "$ib" >"$t" || exit 96
fi
if [ -n "$c" ] && ! cd -P "$c" 2>/dev/null; then
  [ "$t" = /dev/null ] || rm -f "$t"
  printf 'ops-exec: cwd %s: no such directory\n' "$c" >&2
  report x:127
fi
p=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin
[ -d /opt/homebrew/bin ] && p=/opt/homebrew/bin:$p
set -- "PATH=$p" %{HOME:+"HOME=$HOME"} %{USER:+"USER=$USER"} %{LOGNAME:+"LOGNAME=$LOGNAME"} \
  %{SHELL:+"SHELL=$SHELL"} %{TMPDIR:+"TMPDIR=$TMPDIR"} "LANG=%{LANG:-C.UTF-8}" "$@"
exec 3<&0
(trap - INT QUIT; exec setsid env -i "$@") <"$t" &
k=$!
(IFS= read -r x; kill -TERM -"$k" 2>/dev/null; sleep "$gs"; kill -KILL -"$k" 2>/dev/null) <&3 >/dev/null 2>&1 &
w=$!
wait "$k" 2>/dev/null
st=$?
kill -KILL -"$k" 2>/dev/null
kill "$w" 2>/dev/null
[ "$t" = /dev/null ] || rm -f "$t"
if [ "$st" -gt 128 ] && sn=$(kill -l "$st" 2>/dev/null); then report "s:SIG$sn"; fi
report "x:$st"
`.replaceAll("%{", "${");

/**
 * The command ssh runs on the remote host (one string, read by the remote
 * account's POSIX login shell) for the chosen supervisor.
 */
export function remoteCommand(supervisor: "perl" | "sh"): string {
  // LC_ALL=C spares perl reading locale files at start-up; the step's own
  // environment is built from scratch, so the step never sees it.
  return supervisor === "perl"
    ? `LC_ALL=C exec perl -e ${shellQuote(PERL_SUPERVISOR.trim())}`
    : `exec /bin/sh -c ${shellQuote(SH_SUPERVISOR.trim())} ops-exec`;
}

/** What one run sends to the wrapper. */
export interface Frame {
  /** The per-run secret that authenticates the trailer. */
  nonce: string;
  /** Grace between SIGTERM and SIGKILL. */
  killGraceMs: number;
  /** The step's argv. */
  argv: readonly string[];
  /** The step's own variables (added to the remote base environment). */
  env: Readonly<Record<string, string>>;
  /** Absolute working directory, or none for the account's home. */
  cwd?: string;
  /** The step's stdin. */
  stdin?: Uint8Array;
}

const encoder = new TextEncoder();

/** A fresh 128-bit nonce, as hex. */
export function newNonce(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Encodes the frame the wrapper reads from stdin. */
export function encodeFrame(frame: Frame): Uint8Array {
  const env = Object.entries(frame.env);
  // env(1), which the sh supervisor execs through, would take a program
  // named `a=b` for a variable: let a shell exec such a program instead.
  const argv = frame.argv[0].includes("=")
    ? ["/bin/sh", "-c", 'exec "$@"', "sh", ...frame.argv]
    : frame.argv;
  const words = [
    frame.cwd ?? "",
    String(env.length),
    ...env.map(([name, value]) => `${name}=${value}`),
    ...argv,
  ];
  const setup = encoder.encode(`${words.map(shellQuote).join(" ")}\n`);
  let lines = 0;
  for (const byte of setup) if (byte === 0x0a) lines++;
  const stdin = frame.stdin ?? new Uint8Array(0);
  const grace = Math.max(0, Math.round(frame.killGraceMs));
  const header = encoder.encode(
    `${MAGIC} ${frame.nonce} ${grace} ${
      (grace / 1000).toFixed(3)
    } ${setup.length} ${lines} ${stdin.length}\n`,
  );
  const out = new Uint8Array(header.length + setup.length + stdin.length);
  out.set(header, 0);
  out.set(setup, header.length);
  out.set(stdin, header.length + setup.length);
  return out;
}

/** The byte written to the wrapper's stdin to ask it to kill the step (a line, for sh's `read`). */
export const KILL_REQUEST: Uint8Array = encoder.encode("\n");

/**
 * Removes the wrapper's trailer from stderr and remembers the status it
 * carries. Bytes that might begin the trailer are held back until the next
 * chunk tells; everything else passes straight through.
 */
export class TrailerStripper {
  /** The status, once the trailer has been seen. */
  status: StepStatus | null = null;
  /** The transform to put on stderr. */
  readonly transform: TransformStream<Uint8Array, Uint8Array>;
  readonly #marker: Uint8Array;
  #held: Uint8Array = new Uint8Array(0);

  /** @param nonce The run's nonce. */
  constructor(nonce: string) {
    this.#marker = encoder.encode(`\0${MAGIC}:${nonce}:`);
    this.transform = new TransformStream({
      transform: (chunk, controller) => this.#take(chunk, controller),
      flush: (controller) => {
        if (this.#held.length > 0) controller.enqueue(this.#held);
      },
    });
  }

  #take(chunk: Uint8Array, controller: TransformStreamDefaultController<Uint8Array>): void {
    let data = this.#held.length === 0 ? chunk : concat(this.#held, chunk);
    this.#held = new Uint8Array(0);
    for (;;) {
      const at = this.status ? -1 : indexOfBytes(data, this.#marker);
      if (at < 0) break;
      const end = data.indexOf(0, at + this.#marker.length);
      if (end < 0) {
        // The trailer has begun but not ended: wait for the rest (it is short).
        if (data.length - at > 256) break;
        if (at > 0) controller.enqueue(data.subarray(0, at));
        this.#held = data.slice(at);
        return;
      }
      const status = parseStatus(
        new TextDecoder().decode(data.subarray(at + this.#marker.length, end)),
      );
      if (!status) break;
      this.status = status;
      if (at > 0) controller.enqueue(data.subarray(0, at));
      data = data.subarray(end + 1);
    }
    if (this.status) {
      if (data.length > 0) controller.enqueue(data);
      return;
    }
    // Keep back a tail that could be the start of the marker.
    const keep = partialMatchLength(data, this.#marker);
    if (data.length > keep) controller.enqueue(data.subarray(0, data.length - keep));
    if (keep > 0) this.#held = data.slice(data.length - keep);
  }
}

/** Reads a status (`x:<code>` or `s:<SIGNAME>`) as the supervisors write it; `null` when it is not one. */
export function parseStatus(text: string): StepStatus | null {
  const exit = /^x:(\d{1,3})$/.exec(text);
  if (exit) return { exitCode: Number(exit[1]), signal: null };
  const signal = /^s:(SIG[A-Z0-9+-]+|SIG\d+)$/.exec(text);
  if (signal) return { exitCode: null, signal: signal[1] };
  return null;
}

/** The length of the longest suffix of `data` that is a proper prefix of `needle`. */
function partialMatchLength(data: Uint8Array, needle: Uint8Array): number {
  const max = Math.min(needle.length - 1, data.length);
  for (let len = max; len > 0; len--) {
    let i = 0;
    while (i < len && data[data.length - len + i] === needle[i]) i++;
    if (i === len) return len;
  }
  return 0;
}

/**
 * Turns a wrapper exit without a trailer into an error: the frame was cut
 * (97), garbled (98), or the host lacks what the wrapper needs (96).
 */
export function wrapperFailure(
  host: string,
  exitCode: number | null,
  detail: string,
): TransportError {
  const why = exitCode === 97
    ? "the connection closed before the step was sent"
    : exitCode === 98
    ? "the remote wrapper did not understand the frame"
    : exitCode === 96
    ? "the remote wrapper could not start the step"
    : `the remote wrapper ended without reporting the step's status (exit ${exitCode})`;
  return new TransportError("protocol", host, `${why}${detail ? `: ${detail}` : ""}`, { detail });
}
