# What SshExec asks when it opens a master, run as `/bin/sh -c` with a
# marker as $1: which login shell passed the command on ($SHELL, as sshd set
# it), whether perl and setsid are on the account's PATH, and which waiter
# reports a step's wait status exactly for the sh supervisor. One line: a
# csh login shell must pass it on intact, so that SshExec can name it.
echo "$1"; echo "shell=$SHELL"; command -v perl >/dev/null 2>&1 && echo perl; if command -v setsid >/dev/null 2>&1; then echo setsid; if setsid -f -w true >/dev/null 2>&1; then echo waiter=setsid; elif command -v busybox >/dev/null 2>&1 && busybox time -o /dev/null true >/dev/null 2>&1; then echo waiter=time; fi; fi; echo "$1"
