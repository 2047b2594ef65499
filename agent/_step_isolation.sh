#!/bin/sh
# ops-agent: runs one step in PID and mount namespaces of its own, with a
# private /proc (docs/agent.md, "Steps apart"). Run by agent/_step_isolation.ts as
#
#   unshare [--user --map-root-user] --mount --pid --propagation private -- \
#     /bin/sh -c SCRIPT sh USERNS HIDE PROGRAM ARGS...
#
# USERNS 1 when the namespaces live in an unprivileged user namespace (the
#        agent is not root): the step is then mapped back to the agent's own
#        account before it starts
# HIDE   a directory to cover with an empty, read-only tmpfs (the audit
#        log's), or ""
#
# This shell is outside the new PID namespace (`unshare --pid` without
# --fork); its children are inside. Its first child, `sleep`, is the
# namespace's init: a step cannot signal it, and when it dies (the agent's
# SIGKILL to the step's process group, once the step's main process has
# exited or its grace is over) the kernel kills every process left in the
# namespace, whatever session it made for itself. Then this shell becomes
# `unshare --fork`, whose child is the step's main process (pid 2) and which
# mirrors its end exactly: an exit code as that code, a death by a signal as
# the same death (it blocks TERM and INT meanwhile, so the agent's SIGTERM
# to the group reaches the step, not its waiter).

set -u
sleep 2147483647 </dev/null >/dev/null 2>&1 &
exec unshare --fork -- /bin/sh -c '
set -u
userns=$1 hide=$2
shift 2
fail() { printf "ops-agent: step isolation: %s\n" "$1" >&2; exit 125; }
# This PID namespace'"'"'s processes only. Where a full /proc may not be mounted
# (parts of the host'"'"'s are covered), only its processes'"'"' part.
mount -t proc -o nosuid,nodev,noexec proc /proc 2>/dev/null ||
  mount -t proc -o nosuid,nodev,noexec,subset=pid proc /proc 2>/dev/null ||
  fail "cannot mount a /proc of its own"
if [ -n "$hide" ] && [ -d "$hide" ]; then
  mount -t tmpfs -o ro,nosuid,nodev,noexec,mode=0,size=4k ops-agent-hidden "$hide" 2>/dev/null ||
    fail "cannot cover $hide"
fi
if [ "$userns" = 1 ]; then
  # Back to the agent'"'"'s own account: root of the user namespace may mount, the step may not.
  read -r _ uid _ </proc/self/uid_map
  read -r _ gid _ </proc/self/gid_map
  exec unshare --user --map-user="$uid" --map-group="$gid" -- "$@"
fi
exec "$@"
' sh "$@"
