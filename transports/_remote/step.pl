# The per-step perl supervisor of SshExec (see _ssh_wrapper.ts for the frame,
# the start marker and the trailer). Sent as `perl -e`; its @@-delimited
# names are filled in by _ssh_remote.ts. It must read the same under every
# login shell that passes it on (POSIX sh and fish): no backslash before a
# quote or another backslash.
my $b = "";
sub more { my $r = sysread(STDIN, $b, 65536, length $b); exit @@EXIT_CUT@@ unless $r; }
more() while index($b, "\n") < 0;
my $e = index($b, "\n");
my ($m, $nonce, undef, $grace, undef, $sn, undef, $in) = split / /, substr($b, 0, $e);
exit @@EXIT_GARBLED@@ unless $m eq "@@STEP_MAGIC@@";
substr($b, 0, $e + 1) = "";
more() while length($b) < $sn + $in;
my $kill = length($b) > $sn + $in;
# Everything the login shell's rc files printed came before this marker.
syswrite STDOUT, "\0@@STEP_MAGIC@@:$nonce:start\0";
syswrite STDERR, "\0@@STEP_MAGIC@@:$nonce:start\0";
my (@w, $w, $on);
my $s = substr($b, 0, $sn);
while ($s =~ /\G(?:'([^']*)'|[\x5c](.)|( ))/gs) {
  if (defined $3) { push @w, $w if $on; $w = ""; $on = 0 }
  else { $w .= defined $1 ? $1 : $2; $on = 1 }
}
push @w, $w if $on;
my $cwd = shift @w;
my $ne = shift @w;
my %env = (PATH => (-d "/opt/homebrew/bin" ? "/opt/homebrew/bin:" : "") . "@@BASE_PATH@@");
for (qw(HOME USER LOGNAME SHELL TMPDIR)) { $env{$_} = $ENV{$_} if defined $ENV{$_} && $ENV{$_} ne "" }
$env{LANG} = defined $ENV{LANG} && $ENV{LANG} ne "" ? $ENV{LANG}
  : $^O eq "darwin" ? "en_US.UTF-8" : "C.UTF-8";
for (splice @w, 0, $ne) { my ($k, $v) = split /=/, $_, 2; $env{$k} = $v }
my $input;
if ($in > 0) {
  open($input, "+>", undef) or do { print STDERR "ops-exec: stdin: $!\n"; exit @@EXIT_START@@ };
  binmode $input;
  print $input substr($b, $sn, $in);
  seek($input, 0, 0);
}
undef $b;
my $pid = fork;
if (!defined $pid) { print STDERR "ops-exec: fork: $!\n"; exit @@EXIT_START@@ }
if ($pid == 0) {
  setpgrp(0, 0);
  # Default dispositions, whatever perl inherited.
  $SIG{$_} = "DEFAULT" for @@RESET_SIGNALS@@;
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
syswrite STDERR, "\0@@STEP_MAGIC@@:$nonce:$res\0";
exit 0;
