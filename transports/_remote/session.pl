# The persistent remote supervisor of SshExec: one perl program per ssh
# session (one session per executor, over the master), which runs every step
# of that executor. It reads request frames from its stdin and writes
# multiplexed frames to its stdout; both directions use the same framing:
#
#   <type: 1 byte> <id: u32 big-endian> <length: u32 big-endian> <payload>
#
# local -> host
#   R  run step <id>: u32 graceMs, u32 env count, u32 stdin bytes, u32 window,
#      then NUL-separated strings (cwd, NAME=value..., argv...), then the stdin
#   K  kill step <id>: SIGTERM to its group, its grace, SIGKILL to the group
#   A  acknowledge step <id>: u32 stdout bytes, u32 stderr bytes consumed
#      (credit given back: flow control per step and stream)
# host -> local
#   H  hello (id 0, payload "OPSX2"): the supervisor runs; bytes before it
#      (a chatty shell rc file) are not frames
#   O  stdout bytes of step <id>;  E  stderr bytes of step <id>
#   X  the end of step <id>: "x:<code>" or "s:<SIGNAME>" (perl's wait status,
#      exact); nothing of <id> follows it
#   k  a kill request for <id> was received (the session is alive)
#
# Each step runs in its own process group with exactly the base environment
# plus the step's own variables (the rules of the per-step wrapper,
# _ssh_wrapper.ts), stdout and stderr on pipes of their own. The supervisor
# reads a step's pipe only while the local side has credit left for it
# (`window` bytes per stream, replenished by A frames), so a slow sink slows
# that step alone, through its pipe. When the step's main process ends, what
# is left of its group gets SIGKILL, the pipes are read to their end (or
# until idle for 2 s while there is credit: a process that left the group
# may hold them), and the X frame follows. EOF on stdin (the executor
# closed, the local ssh was killed, the connection dropped) sends SIGTERM to
# every running step's group, SIGKILL after its grace, and ends the
# supervisor once they are gone.
#
# Sent as `perl -e`; its @@-delimited names are filled in by _ssh_remote.ts.
# It must read the same under every login shell that passes it on (POSIX sh
# and fish): no backslash before a quote or another backslash.
use POSIX ();
use Time::HiRes ();
require Config;
my @sig = split " ", $Config::Config{sig_name};
# Not dumpable (Linux): /proc/PID of this process then belongs to root, so a
# step, a child of the same account, cannot open its fds (the ssh channel, on
# which it could write frames for another step's id) nor read its memory.
# prctl(PR_SET_DUMPABLE, 0) by number: perl has no prctl of its own. A step's
# own exec makes it dumpable again.
if ($^O eq "linux") {
  my ($arch) = $Config::Config{archname} =~ /^([a-z0-9_]+)/;
  my %prctl = (x86_64 => 157, aarch64 => 167, riscv64 => 167, loongarch64 => 167,
    i386 => 172, i486 => 172, i586 => 172, i686 => 172, arm => 172, armv7l => 172,
    armv6l => 172, s390x => 172, ppc64 => 171, ppc64le => 171, powerpc => 171);
  syscall($prctl{$arch}, 4, 0, 0, 0, 0) if $Config::Config{archname} !~ /x32/ && $prctl{$arch};
}
$SIG{PIPE} = "IGNORE";
my $chld = 1;
$SIG{CHLD} = sub { $chld = 1 };
my $dead = 0;
$SIG{$_} = sub { $dead = 1 } for qw(TERM HUP INT);
binmode STDIN;
binmode STDOUT;
my %base = (PATH => (-d "/opt/homebrew/bin" ? "/opt/homebrew/bin:" : "") . "@@BASE_PATH@@");
for (qw(HOME USER LOGNAME SHELL TMPDIR)) { $base{$_} = $ENV{$_} if defined $ENV{$_} && $ENV{$_} ne "" }
$base{LANG} = defined $ENV{LANG} && $ENV{LANG} ne "" ? $ENV{LANG}
  : $^O eq "darwin" ? "en_US.UTF-8" : "C.UTF-8";
my (%st, %pid);
my ($in, $eof, $gone) = ("", 0, 0);
sub now { Time::HiRes::time() }
my $buf = "\0" x 9;
sub send_frame {
  return if $gone;
  my $at = 0;
  while ($at < length $_[0]) {
    my $n = syswrite(STDOUT, $_[0], length($_[0]) - $at, $at);
    if (defined $n) { $at += $n }
    elsif (!$!{EINTR}) { $gone = 1; return }
  }
}
sub put { send_frame(pack("aNN", $_[0], $_[1], length $_[2]) . $_[2]) }
sub status {
  my $s = shift;
  return "x:" . ($s >> 8) unless $s & 127;
  "s:SIG" . ($sig[$s & 127] || ($s & 127));
}
sub refuse { put("E", $_[0], "ops-exec: $_[1]\n"); put("X", $_[0], "x:126") }
sub start {
  my ($id, $p) = @_;
  my ($g, $ne, $il, $w) = unpack("N4", $p);
  my @w = split /\0/, substr($p, 16, length($p) - 16 - $il), -1;
  my $cwd = shift @w;
  my %env = %base;
  for (splice @w, 0, $ne) { my ($k, $v) = split /=/, $_, 2; $env{$k} = $v }
  my $input;
  if ($il > 0) {
    open($input, "+>", undef) or return refuse($id, "stdin: $!");
    binmode $input;
    print $input substr($p, length($p) - $il);
    seek($input, 0, 0);
  }
  my (@r, @x);
  pipe($r[0], $x[0]) && pipe($r[1], $x[1]) or return refuse($id, "pipe: $!");
  my $pid = fork;
  return refuse($id, "fork: $!") unless defined $pid;
  if ($pid == 0) {
    # Default dispositions and an empty mask, whatever perl inherited (an
    # ignored SIGINT would make the step's own trap and kill -INT do nothing).
    $SIG{$_} = "DEFAULT" for @@RESET_SIGNALS@@;
    POSIX::sigprocmask(POSIX::SIG_SETMASK(), POSIX::SigSet->new);
    setpgrp(0, 0);
    open(STDOUT, ">&", $x[0]);
    open(STDERR, ">&", $x[1]);
    if ($input) { open(STDIN, "<&", $input) or POSIX::_exit(126) } else { open(STDIN, "<", "/dev/null") }
    if ($cwd ne "" && !chdir $cwd) {
      my $nodir = $! + 0 == 2 || $! + 0 == 20;
      syswrite STDERR, "ops-exec: cwd $cwd: " . ($nodir ? "no such directory" : "$!") . "\n";
      POSIX::_exit($nodir ? 127 : 126);
    }
    %ENV = %env;
    exec { $w[0] } @w;
    my $missing = $! + 0 == 2;
    syswrite STDERR, "ops-exec: $w[0]: " . ($missing ? "command not found" : "permission denied") . "\n";
    POSIX::_exit($missing ? 127 : 126);
  }
  setpgrp($pid, $pid);
  close $_ for @x;
  close $input if $input;
  $st{$id} = $pid{$pid} = { id => $id, pid => $pid, fh => [@r], cr => [$w, $w], g => $g / 1000, last => now() };
}
sub finish {
  my $s = shift;
  close $_ for grep { defined } @{$s->{fh}};
  delete $st{$s->{id}};
  put("X", $s->{id}, status($s->{st})) unless $eof;
}
sub hangup {
  $eof = $gone = 1;
  for my $s (values %st) {
    close $_ for grep { defined } @{$s->{fh}};
    $s->{fh} = [undef, undef];
    next if defined $s->{st};
    kill "TERM", -$s->{pid};
    my $kd = now() + $s->{g};
    $s->{kd} = $kd unless defined $s->{kd} && $s->{kd} < $kd;
  }
}
sub request {
  my ($t, $id, $p) = @_;
  my $s = $st{$id};
  if ($t eq "R") { start($id, $p) unless $s }
  elsif ($t eq "K") {
    if ($s && !defined $s->{st} && !defined $s->{kd}) {
      kill "TERM", -$s->{pid};
      $s->{kd} = now() + $s->{g};
    }
    put("k", $id, "");
  } elsif ($t eq "A") {
    return unless $s;
    my @a = unpack("NN", $p);
    for (0, 1) {
      $s->{last} = now() if $s->{cr}[$_] <= 0 && $a[$_];
      $s->{cr}[$_] += $a[$_];
    }
  } else {
    syswrite STDERR, "ops-exec: the supervisor did not understand a frame\n";
    kill "KILL", -$_->{pid} for grep { !defined $_->{st} } values %st;
    exit 98;
  }
}
put("H", 0, "@@SESSION_MAGIC@@");
my $n = 0;
for (;;) {
  if ($dead) { kill "KILL", -$_->{pid} for grep { !defined $_->{st} } values %st; exit 0 }
  # Reap after a SIGCHLD, and on every wake-up that was not for I/O (one may
  # have landed just before select).
  if ($chld || $n <= 0) {
    $chld = 0;
    while ((my $pid = waitpid(-1, POSIX::WNOHANG())) > 0) {
      my $s = delete $pid{$pid} or next;
      $s->{st} = $?;
      $s->{end} = now();
      kill "KILL", -$pid;
    }
  }
  hangup() if $gone && !$eof;
  my $t = now();
  my $wait;
  my $rin = "";
  vec($rin, 0, 1) = 1 unless $eof;
  for my $s (values %st) {
    my @open = grep { defined $s->{fh}[$_] } 0, 1;
    if (defined $s->{st}) {
      if ($eof || !@open) { finish($s); next }
      my $until = ($s->{last} > $s->{end} ? $s->{last} : $s->{end}) + 2;
      if (!grep { $s->{cr}[$_] <= 0 } @open) {
        if ($t >= $until) { finish($s); next }
        $wait = $until - $t if !defined $wait || $until - $t < $wait;
      }
    } else {
      if (defined $s->{kd}) {
        if ($t >= $s->{kd}) { kill "KILL", -$s->{pid}; $s->{kd} = $t + 3600 }
        $wait = $s->{kd} - $t if !defined $wait || $s->{kd} - $t < $wait;
      }
      # A SIGCHLD that lands just before select is only seen at its next
      # wake-up: poll soon when the pipes are closed (the step is exiting),
      # and now and then otherwise.
      my $poll = @open ? 1 : ($s->{bo} = $s->{bo} ? ($s->{bo} < 0.25 ? $s->{bo} * 2 : 0.25) : 0.001);
      $wait = $poll if !defined $wait || $poll < $wait;
    }
    vec($rin, fileno $s->{fh}[$_], 1) = 1 for grep { $s->{cr}[$_] > 0 } @open;
  }
  exit 0 if $eof && !%st;
  $n = select(my $rout = $rin, undef, undef, $wait);
  next if $n <= 0;
  if (vec($rout, 0, 1)) {
    my $r = sysread(STDIN, $in, 262144, length $in);
    if (defined $r ? !$r : !($!{EINTR} || $!{EAGAIN})) { hangup(); next }
    while (length($in) >= 9) {
      my ($ty, $id, $len) = unpack("aNN", $in);
      last if length($in) < 9 + $len;
      my $p = substr($in, 9, $len);
      substr($in, 0, 9 + $len, "");
      request($ty, $id, $p);
    }
  }
  for my $s (values %st) {
    for my $k (0, 1) {
      my $fh = $s->{fh}[$k];
      next unless defined $fh && vec($rout, fileno $fh, 1);
      my $max = $s->{cr}[$k] < 65536 ? $s->{cr}[$k] : 65536;
      # Read behind room for the frame header, so the frame goes out without a copy.
      my $r = sysread($fh, $buf, $max, 9);
      next if !defined $r && ($!{EINTR} || $!{EAGAIN});
      if ($r) {
        substr($buf, 0, 9, pack("aNN", $k ? "E" : "O", $s->{id}, $r));
        send_frame($buf);
        $s->{cr}[$k] -= $r;
        $s->{last} = now();
      } else {
        close $fh;
        $s->{fh}[$k] = undef;
      }
    }
  }
}
