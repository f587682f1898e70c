#!/bin/bash
# ceph-stop.sh: stop the cluster scripts/ceph-start.sh started, by its pid
# files, and remove its directory.
#
# Knobs: NJ_CEPH_DIR (default /tmp/nightjar-ceph); NJ_CEPH_KEEP=1 keeps the
# directory (ceph-start.sh uses it to keep the logs of a failed start).
set -uo pipefail
exec </dev/null

dir=${NJ_CEPH_DIR:-/tmp/nightjar-ceph}
[ -d "$dir" ] || exit 0
case $dir in /|"") echo "ceph-stop: refusing NJ_CEPH_DIR='$dir'" >&2; exit 1 ;; esac

# Only pids whose process runs a ceph daemon: a stale pid file must not
# kill an unrelated process that reused the number.
pids=()
for f in "$dir"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null) || continue
    case $pid in ''|*[!0-9]*) continue ;; esac
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
    case $comm in ceph-mon|ceph-osd|radosgw) pids+=("$pid") ;; esac
done
if [ "${#pids[@]}" -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null
    for _ in $(seq 50); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.2
    done
    for pid in "${pids[@]}"; do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null) || continue
        case $comm in ceph-mon|ceph-osd|radosgw) kill -KILL "$pid" 2>/dev/null ;; esac
    done
fi
[ "${NJ_CEPH_KEEP:-0}" = 1 ] && exit 0
# Remove only what ceph-start.sh made: a mistyped NJ_CEPH_DIR=/home must
# not lose /home.
if [ ! -f "$dir/ceph.conf" ] && [ ! -d "$dir/run" ]; then
    echo "ceph-stop: '$dir' does not look like a ceph-start.sh directory; not removed" >&2
    exit 1
fi
rm -rf -- "$dir"
exit 0
