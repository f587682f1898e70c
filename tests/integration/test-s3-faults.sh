#!/bin/bash
# The S3 store through a proxy that injects faults in front of a real
# radosgw (tests/tools/s3-fault-proxy.py): 503 SlowDown answers, requests
# lost before they arrive, answers lost after the request took effect, and
# uploads cut half-way.  Backups and restores through each still come out
# byte for byte (retries with backoff); a server that fails every request
# gives one line and a non-zero exit, and leaves nothing half visible.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd jq cmp python3
use_test_s3
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
PROXY=$(dirname "$0")/../tools/s3-fault-proxy.py
direct=$NJ_TEST_S3_ENDPOINT
qio() { qemu-io -f qcow2 "$@" >/dev/null; }
snap() { qemu-img convert -O raw "$1" "$2"; }

proxy_pid=
start_proxy() { # rule...
    stop_proxy
    : > "$T/proxy.log"
    coproc PROXY_CO { exec python3 "$PROXY" --listen 0 --upstream "$direct" --log "$T/proxy.log" "$@"; }
    proxy_pid=$PROXY_CO_PID
    read -r port <&"${PROXY_CO[0]}"
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port
}
stop_proxy() {
    if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; wait "$proxy_pid" 2>/dev/null || true; fi
    proxy_pid=
    export AWS_ENDPOINT_URL=$direct
}
cleanup_hooks+=(stop_proxy) # lib.sh's EXIT trap keeps the exit status

img=$T/disk.qcow2
size=$((20 * 1048576 + 512))
qemu-img create -q -f qcow2 "$img" $size
n=0
for rule in "--fail-every 3" "--cut-before-every 4" "--cut-after-every 4" "--cut-body-every 3"; do
    n=$((n + 1))
    U="s3://nj-test/faults-$$-$n"
    # shellcheck disable=SC2086
    start_proxy $rule
    qio -c "write -P $((0x20 + n)) 0 6M" -c "write -P 0x7e $((size - 512)) 512" "$img"
    qemu-img bitmap --add "$img" "b$n"
    "$A" import -s "$U" -d "faults $n" --disk vda --json "$img" > "$T/f$n.json"
    snap "$img" "$T/f$n.raw"
    qio -c "write -P $((0x40 + n)) 2M 1M" "$img"
    "$A" import -s "$U" -d "faults $n" --disk vda -l inc --bitmap "b$n" --json "$img" > "$T/i$n.json"
    snap "$img" "$T/i$n.raw"
    "$R" restore -s "$U" -d "faults $n" -b "$(jq -r .id "$T/f$n.json")" --disk vda -o "$T/rf$n.raw"
    check cmp "$T/rf$n.raw" "$T/f$n.raw"
    "$R" restore -s "$U" -d "faults $n" --disk vda -o "$T/ri$n.raw"
    check cmp "$T/ri$n.raw" "$T/i$n.raw"
    "$R" verify -s "$U" > /dev/null
    faults=$(grep -c ' 503$\| cut-' "$T/proxy.log" || true)
    echo "rule '$rule': $(wc -l < "$T/proxy.log") requests, $faults faults injected"
    check test "$faults" -gt 0
    # the same store read directly agrees
    stop_proxy
    check test "$("$R" list -s "$U" --json | jq length)" -eq 2
    check "$R" verify -s "$U"
done

# --- a server that ignores If-None-Match / If-Match: no store is made
U="s3://nj-test/faults-$$-nocond"
start_proxy --ignore-conditions
expect_fail "does not honour conditional PUT" "$A" import -s "$U" -d "faults nc" --disk vda "$img"
stop_proxy
expect_fail "not a nightjar store" "$R" list -s "$U"
# ... unless the weaker fallback is asked for: conditions emulated (HEAD,
# PUT, settle, HEAD), recorded in the marker for every later opener
start_proxy --ignore-conditions
qio -c "write -P 0x5c 0 3M" "$img"
NIGHTJAR_S3_NO_CONDITIONAL=1 NIGHTJAR_S3_SETTLE_MS=300 \
    "$A" import -s "$U" -d "faults nc" --disk vda "$img" > /dev/null
snap "$img" "$T/nc1.raw"
qio -c "write -P 0x5d 1M 1M" "$img"
NIGHTJAR_S3_SETTLE_MS=300 "$A" import -s "$U" -d "faults nc" --disk vda "$img" > /dev/null
snap "$img" "$T/nc2.raw"
check test "$("$R" list -s "$U" --json | jq length)" = 2
"$R" restore -s "$U" -d "faults nc" --disk vda -o "$T/rnc.raw"
check cmp "$T/rnc.raw" "$T/nc2.raw"
first=$("$R" list -s "$U" --json | jq -r '.[0].id')
"$R" restore -s "$U" -d "faults nc" -b "$first" --disk vda -o "$T/rnc1.raw"
check cmp "$T/rnc1.raw" "$T/nc1.raw"
# each commit was emulated: a HEAD of the manifest before its PUT (a
# create-only PUT needs none), and no condition for the server to ignore
check test "$(grep -c 'HEAD .*/g00000001/manifest.json' "$T/proxy.log")" -ge 2
# (but the probe's, which found out that the server ignores them)
check test "$(grep '412-as-200' "$T/proxy.log" | grep -vc '/locks/probe\.')" = 0
stop_proxy

# --- a server that fails every request: one line, nothing half visible
U="s3://nj-test/faults-$$-1"
before=$("$R" list -s "$U" --json | jq -c '[.[].id]')
start_proxy --fail-every 1
qio -c "write -P 0x66 0 4M" "$img"
expect_fail "503\|SlowDown" "$A" import -s "$U" -d "faults 1" --disk vda "$img"
stop_proxy
check test "$("$R" list -s "$U" --json | jq -c '[.[].id]')" = "$before"
check "$R" verify -s "$U"
# the next backup of the domain goes through and cleans what was left
"$A" import -s "$U" -d "faults 1" --disk vda --json "$img" > "$T/after.json"
snap "$img" "$T/after.raw"
"$R" restore -s "$U" -d "faults 1" --disk vda -o "$T/rafter.raw"
check cmp "$T/rafter.raw" "$T/after.raw"
finish
