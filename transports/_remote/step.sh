# The per-step POSIX sh supervisor of SshExec, for hosts without perl (see
# _ssh_wrapper.ts for the frame, the start marker and the trailer). Run as
# `/bin/sh -c`; its @@-delimited names are filled in by _ssh_remote.ts. It
# must read the same under every login shell that passes it on (POSIX sh and
# fish): no backslash before a quote or another backslash.
#
# The step is never an asynchronous list: a non-interactive sh starts those
# with SIGINT and SIGQUIT ignored, which no trap can undo (dash, busybox ash,
# ksh93). It runs in the foreground, through a waiter that reports its wait
# status exactly where the host has one (util-linux `setsid -f -w`, busybox
# `time`), since sh alone reads `exit 143` and a death by SIGTERM alike. The
# watcher, in the background, learns the step's pid (its process group and
# session) from a file the step writes before it execs.
IFS=' ' read -r m n wt g gs sb sl ib || exit @@EXIT_CUT@@
[ "$m" = @@STEP_MAGIC@@ ] || exit @@EXIT_GARBLED@@
s=
while [ "$sl" -gt 0 ]; do IFS= read -r l || exit @@EXIT_CUT@@; s="$s$l
"; sl=$((sl - 1)); done
eval "set -- $s"
c=$1
shift 2
command -v setsid >/dev/null 2>&1 || {
  echo "ops-exec: the remote account has no setsid(1) on its PATH ($PATH)" >&2
  exit @@EXIT_START@@
}
d=$(mktemp -d "${TMPDIR:-/tmp}/ops-exec.XXXXXX") || exit @@EXIT_START@@
trap 'rm -rf "$d"' EXIT
trap 'exit 1' HUP PIPE
t=/dev/null
if [ "$ib" -gt 0 ]; then
  t=$d/in
  head -c "$ib" >"$t" || exit @@EXIT_START@@
fi
# Everything the login shell's rc files printed came before this marker.
printf '\000@@STEP_MAGIC@@:%s:start\000' "$n"
printf '\000@@STEP_MAGIC@@:%s:start\000' "$n" >&2
report() { printf '\000@@STEP_MAGIC@@:%s:%s\000' "$n" "$1" >&2; exit 0; }
if [ -n "$c" ] && ! cd -P "$c" 2>/dev/null; then
  printf 'ops-exec: cwd %s: no such directory\n' "$c" >&2
  report x:127
fi
p=@@BASE_PATH@@
[ -d /opt/homebrew/bin ] && p=/opt/homebrew/bin:$p
set -- "PATH=$p" ${HOME:+"HOME=$HOME"} ${USER:+"USER=$USER"} ${LOGNAME:+"LOGNAME=$LOGNAME"} \
  ${SHELL:+"SHELL=$SHELL"} ${TMPDIR:+"TMPDIR=$TMPDIR"} "LANG=${LANG:-C.UTF-8}" "$@"
# Any byte (the kill request) or EOF (the connection dropped) on stdin kills
# the step's group: TERM, the grace, KILL.
exec 3<&0
(
  IFS= read -r x
  i=0
  until read -r k 2>/dev/null <"$d/pid"; do
    [ "$i" -lt 500 ] || exit 0
    i=$((i + 1))
    sleep 0.01
  done
  # Just after it wrote its pid, the step may not have its session yet: then
  # the process itself is signalled.
  kill -TERM -"$k" || kill -TERM "$k"
  sleep "$gs"
  kill -KILL -"$k" || kill -KILL "$k"
) <&3 >/dev/null 2>&1 &
w=$!
# The step: write its pid, then exec (in a session of its own) the program
# with exactly its environment.
q='printf "%s\n" "$$" >"$1" || exit 126; shift; exec setsid env -i "$@"'
case $wt in
setsid)
  # setsid -f -w forks, the child starts the session; a death by signal reads
  # "did not exit normally" on setsid's own stderr, which fd 7 keeps apart.
  LC_ALL=C setsid -f -w /bin/sh -c 'exec 2>&7 7>&-; printf "%s\n" "$$" >"$1" || exit 126; shift; exec env -i "$@"' \
    ops-exec "$d/pid" "$@" <"$t" 3<&- 7>&2 2>"$d/why"
  st=$?
  IFS= read -r why <"$d/why"
  case $why in *"did not exit normally"*) st=$((256 + (st & 127))) ;; esac
  ;;
time)
  busybox time -o "$d/why" /bin/sh -c "$q" ops-exec "$d/pid" "$@" <"$t" 3<&-
  st=$?
  while IFS= read -r why; do
    case $why in
    "Command terminated by signal "*) st=$((256 + ${why##* })) ;;
    "Command exited with non-zero status "*) st=${why##* } ;;
    esac
  done <"$d/why"
  ;;
*)
  /bin/sh -c "$q" ops-exec "$d/pid" "$@" <"$t" 3<&-
  st=$?
  # sh reads a death by signal N as 128 + N (ksh93 as 256 + N, yash as
  # 384 + N); 160 and above are taken for exits (real-time signals are rare).
  if [ "$st" -gt 255 ]; then
    st=$((256 + (st & 127)))
  elif [ "$st" -gt 128 ] && [ "$st" -lt 160 ]; then
    st=$((st + 128))
  fi
  ;;
esac
read -r k 2>/dev/null <"$d/pid" && kill -KILL -"$k" 2>/dev/null
kill "$w" 2>/dev/null
if [ "$st" -gt 255 ]; then
  s=$((st - 256))
  sn=$(kill -l "$s" 2>/dev/null) || sn=$s
  case $sn in *[!A-Z0-9+-]*) sn=$s ;; esac
  report "s:SIG${sn#SIG}"
fi
report "x:$st"
