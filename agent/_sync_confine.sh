#!/bin/sh
# ops-agent: runs one `rsync --server` confined to its root (docs/protocol.md,
# "What a sync grant reaches"). Run by agent/_sync_confine.ts as
#
#   [unshare ...] /bin/sh -c SCRIPT sh HOW DIR ROOT TARGET rsync --server ... .
#
# HOW    view: in private mount and pid namespaces (unshare, the agent is root)
#        userview: the same inside an unprivileged user namespace
#        pin: no namespace
# DIR    push, push-dry (a dry run) or pull
# ROOT   the granted root, as it was resolved when the agent started
# TARGET the target inside it, resolved, its trailing slash kept
#
# The root is entered and checked against where it led at start. Then "view"
# builds a tree of its own on a private tmpfs holding only rsync's files
# (read-only), the root (bound through the directory just entered:
# read-only for a pull, never executable) and a /proc of rsync's own
# processes, and runs rsync chrooted there, as
# the agent's own account: every path rsync opens, every symlink it follows,
# every merge file it reads resolves inside that tree. "pin" walks the
# target's directories from the root (creating the missing ones of a push),
# refusing one that leads out, and hands rsync the rest (a name, or what a dry
# run would create) as a path relative to where it stopped.

set -u
# In a pid namespace of its own this shell is its init, which ignores a signal
# it has no handler for: the agent's SIGTERM must still end the setup.
trap 'exit 143' TERM INT HUP
die() { printf 'ops-agent: %s\n' "$2" >&2; exit "$1"; }
how=$1 dir=$2 root=$3 target=$4
shift 4
rsync=$(command -v -- "$1") || die 127 "rsync: command not found"
shift
# A push may be the first: the root is created (and then checked like any other).
[ -d "$root" ] || [ "$dir" != push ] || mkdir -p -- "$root" 2>/dev/null
cd -P -- "$root" 2>/dev/null || die 3 "cannot enter the sync root $root (no such directory?)"
[ "$(pwd -P)" = "$root" ] || die 3 "the sync root $root now leads to $(pwd -P): refused"

inside() { case $(pwd -P)/ in "$root"/*) return 0 ;; esac; return 1; }

if [ "$how" = pin ]; then
  rel=${target#"$root"}
  rel=${rel#/}
  while [ -n "$rel" ]; do
    part=${rel%%/*}
    case $rel in */*) next=${rel#*/} ;; *) next= ;; esac
    # The last name stays rsync's unless the target ends with a slash.
    [ -z "$next" ] && [ "${target%/}" = "$target" ] && break
    if [ ! -d "$part" ]; then
      case $dir in
      pull) die 23 "$target: no such directory" ;;
      push) mkdir -- "$part" 2>/dev/null ;;
      *) break ;; # a dry run creates nothing
      esac
    fi
    cd -P -- "$part" 2>/dev/null || die 3 "cannot enter $part of $target"
    inside || die 3 "$target leads to $(pwd -P), outside the root $root: refused"
    rel=$next
  done
  # The root itself, by name (a pull without the slash sends the directory, not its contents).
  [ -z "$rel" ] && [ "${target%/}" = "$target" ] && exec "$rsync" "$@" "$root"
  exec "$rsync" "$@" "./$rel"
fi

deps=$(ldd "$rsync" 2>/dev/null) || deps=$(LD_TRACE_LOADED_OBJECTS=1 "$rsync" </dev/null 2>/dev/null) || :
files=$(printf '%s\n' "$deps" | sed -n 's|.*=> \(/[^ ]*\) (.*|\1|p; s|^[[:space:]]*\(/[^ ]*\) (.*|\1|p')
set -f # the file names are split on whitespace, never globbed
mount -t tmpfs -o mode=0755,size=256k,nosuid,nodev ops-agent-sync /tmp || die 12 "cannot mount the sync view"
view=/tmp/view
mkdir "$view"
dirs=
for file in "$rsync" $files; do dirs="$dirs $view${file%/*}"; done
# (The file names are split on whitespace on purpose.)
mkdir -p $dirs && mkdir -p "$view$root" || die 12 "cannot lay out the sync view"
# rsync's files, bound read-only by one mount(8) from a table of its own.
table=/tmp/binds
for file in "$rsync" $files; do
  : >"$view$file" && printf '%s %s none bind,ro 0 0\n' "$file" "$view$file" >>"$table" ||
    die 12 "cannot put $file in the sync view"
done
mount --all --fstab "$table" || die 12 "cannot put rsync's files in the sync view"
# "." is the root entered and checked above, not its name looked up again.
mount --no-canonicalize --bind . "$view$root" || die 12 "cannot bind the root into the sync view"
[ . -ef "$view$root" ] || die 3 "the sync root changed while it was bound: refused"
flags=nosuid,nodev,noexec
[ "$dir" = pull ] && flags=ro,$flags
mount -o "remount,bind,$flags" "$view$root" || die 12 "cannot seal the root in the sync view"
# /proc with rsync's own processes only (this is a pid namespace of its own):
# openrsync's fchmodat(AT_SYMLINK_NOFOLLOW) goes through /proc/self/fd on
# glibc. Without subset=pid (Linux < 5.8) there is none.
mkdir "$view/proc" &&
  mount -t proc -o subset=pid,hidepid=invisible,nosuid,nodev,noexec proc "$view/proc" 2>/dev/null ||
  rmdir "$view/proc"
mount -o remount,bind,ro /tmp || die 12 "cannot seal the sync view"
cd /
if [ "$how" = userview ]; then
  # Back to the agent's own account: root of the user namespace may chown.
  read -r _ uid _ </proc/self/uid_map
  read -r _ gid _ </proc/self/gid_map
  exec unshare --user --map-user="$uid" --map-group="$gid" --root="$view" --wd="$root" -- \
    "$rsync" "$@" "$target"
fi
exec unshare --root="$view" --wd="$root" -- "$rsync" "$@" "$target"
