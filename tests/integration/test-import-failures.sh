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

# A slow NBD server: 256 MiB of non-zero pattern, each read delayed.
start_slow() {
    rm -f "$T/sock"
    nbdkit --exit-with-parent -U "$T/sock" -P "$T/nbdkit.pid" --filter=delay \
        pattern 1G rdelay=50ms &
    for _ in $(seq 100); do [ -S "$T/sock" ] && [ -s "$T/nbdkit.pid" ] && return 0; sleep 0.05; done
    echo "nbdkit did not start" >&2; return 1
}
uri() { echo "nbd+unix:///?socket=$T/sock"; }

# 1. the server is killed mid-read
start_slow
( sleep 1; kill -9 "$(cat "$T/nbdkit.pid")" ) &
rc=0
"$A" import -s "$S" -d slow --disk vda --threads 1 --requests 1 --connections 1 "$(uri)" 2> "$T/err1" >/dev/null || rc=$?
wait
check test "$rc" -eq 1
check test "$(wc -l < "$T/err1")" -eq 1
check grep -q "^nightjar-agent: .*vda" "$T/err1"

# 2. SIGINT: rolls back and says so
start_slow
"$A" import -s "$S" -d slow --disk vda --threads 1 --requests 1 --connections 1 "$(uri)" 2> "$T/err2" >/dev/null &
pid=$!
sleep 1
kill -INT $pid
rc=0; wait $pid || rc=$?
check test "$rc" -eq 1
check grep -q "interrupted" "$T/err2"
kill "$(cat "$T/nbdkit.pid")" 2>/dev/null || true

# 3. SIGKILL: nothing committed; the next run cleans the staging left behind
start_slow
"$A" import -s "$S" -d slow --disk vda --threads 1 --requests 1 --connections 1 "$(uri)" >/dev/null 2>&1 &
pid=$!
sleep 1
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
