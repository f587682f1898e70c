#!/bin/bash
# Failures in the middle of an import: the NBD server dies, the importer
# is interrupted (SIGINT) or killed (SIGKILL).  Each time: a clear error
# (or none, for SIGKILL), nothing committed, the store still verifies, and
# the next import works and restores exactly.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require nbdkit qemu-img jq cmp

S=$T/store
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE

# A committed backup that must survive everything below.
head -c 4194304 /dev/urandom > "$T/base.raw"
"$A" import -s "$S" -d keep --disk vda "$T/base.raw" > /dev/null

# A slow NBD server: 1 GiB of non-zero pattern, each read delayed, every
# request logged (the log filter sits before the delay: a read is logged
# when it arrives).  The kills below wait for the import's first data
# read, an observed event, never for a time; the bounds are failsafes.
start_slow() {
    rm -f "$T/sock" "$T/nbdkit.pid" "$T/nbd.log"
    nbdkit --exit-with-parent -U "$T/sock" -P "$T/nbdkit.pid" --filter=log --filter=delay \
        pattern 1G rdelay=50ms logfile="$T/nbd.log" &
    for ((i = 0; i < 1200; i++)); do
        [ -S "$T/sock" ] && [ -s "$T/nbdkit.pid" ] && return 0
        sleep 0.05
    done
    echo "nbdkit did not start" >&2; return 1
}
uri() { echo "nbd+unix:///?socket=$T/sock"; }
# wait_read PID: until the server has logged a data read from the import
# (still running as PID)
wait_read() {
    for ((i = 0; i < 2400; i++)); do
        grep -q ' Read id=' "$T/nbd.log" 2>/dev/null && return 0
        kill -0 "$1" 2>/dev/null || { fail "the import ended before its first read"; return 1; }
        sleep 0.05
    done
    fail "no read from the import within the failsafe bound"; return 1
}
# (a command, not a function: `f &` would make $! a subshell's pid)
slow_args=(import -s "$S" -d slow --disk vda --threads 1 --requests 1 --connections 1)

# 1. the server is killed mid-read
start_slow
"$A" "${slow_args[@]}" "$(uri)" 2> "$T/err1" >/dev/null &
pid=$!
wait_read $pid && ok
kill -9 "$(cat "$T/nbdkit.pid")"
rc=0; wait $pid || rc=$?
check test "$rc" -eq 1
check test "$(wc -l < "$T/err1")" -eq 1
check grep -q "^nightjar-agent: .*vda" "$T/err1"

# 2. SIGINT: rolls back and says so
start_slow
"$A" "${slow_args[@]}" "$(uri)" 2> "$T/err2" >/dev/null &
pid=$!
wait_read $pid && ok
kill -INT $pid
rc=0; wait $pid || rc=$?
check test "$rc" -eq 1
check grep -q "interrupted" "$T/err2"
kill "$(cat "$T/nbdkit.pid")" 2>/dev/null || true

# 3. SIGKILL: nothing committed; the next run cleans the staging left behind
start_slow
"$A" "${slow_args[@]}" "$(uri)" >/dev/null 2>&1 &
pid=$!
wait_read $pid && ok
kill -9 $pid
wait $pid 2>/dev/null || true
kill "$(cat "$T/nbdkit.pid")" 2>/dev/null || true
check test "$(ls "$S/staging" | wc -l)" -eq 1

# Nothing of the failed runs is visible; the survivor verifies and restores.
check test "$("$R" list -s "$S" --json | jq length)" -eq 1
"$R" verify -s "$S" > /dev/null; ok
"$R" restore -s "$S" -d keep -o "$T/keep.out"
check cmp "$T/keep.out" "$T/base.raw"

# The next import of the killed domain works and cleans its staging.
head -c 2097152 /dev/urandom > "$T/next.raw"
"$A" import -s "$S" -d slow --disk vda "$T/next.raw" > /dev/null
check test "$(ls "$S/staging" | wc -l)" -eq 0
"$R" restore -s "$S" -d slow -o "$T/next.out"
check cmp "$T/next.out" "$T/next.raw"

finish
