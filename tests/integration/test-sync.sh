#!/bin/bash
# nightjar-agent sync between a directory store and S3 on a real radosgw
# (NJ_TEST_S3_* from scripts/ceph-start.sh), both ways: every point restores
# exactly from the copy on a machine state holding nothing but the URL and
# credentials; a second sync copies nothing; an interrupted sync resumes
# and never shows half a backup; ids, parents, times and the protected flag
# are kept; damage in the source is refused, not copied; the scheduler's
# sync-to runs after each run.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd jq cmp
use_test_s3
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
base="s3://nj-test/sync-$$-$(date +%s)"
S=$T/local
U=$base/offsite
qio() { qemu-io -f qcow2 "$@" >/dev/null; }
snap() { qemu-img convert -O raw "$1" "$2"; }
listing() { "$R" list -s "$1" --json | jq -c 'sort_by(.id) | [.[] | {id, parent, level, domain, started, protected}]'; }

# --- a local chain of domain A (full, inc, inc) and a full of domain B
img=$T/a.qcow2
size=$((24 * 1048576 + 512))
qemu-img create -q -f qcow2 "$img" $size
qio -c "write -P 0x11 0 6M" -c "write -P 0x12 $((size - 512)) 512" "$img"
qemu-img bitmap --add "$img" b1
dom="sync \"A\" & co"
"$A" import -s "$S" -d "$dom" --disk vda --json "$img" > "$T/a1.json"; snap "$img" "$T/a1.raw"
qio -c "write -P 0x21 1M 128k" -c "write -z 3M 1M" "$img"
"$A" import -s "$S" -d "$dom" --disk vda -l inc --bitmap b1 --json "$img" > "$T/a2.json"; snap "$img" "$T/a2.raw"
qemu-img bitmap --add "$img" b2
qio -c "write -P 0x31 10M 2M" "$img"
"$A" import -s "$S" -d "$dom" --disk vda -l inc --bitmap b2 --json "$img" > "$T/a3.json"; snap "$img" "$T/a3.raw"
imgb=$T/b.qcow2
qemu-img create -q -f qcow2 "$imgb" 8M
qio -c "write -P 0x41 0 3M" "$imgb"
"$A" import -s "$S" -d B --disk vdb --json "$imgb" > "$T/b1.json"; snap "$imgb" "$T/b1.raw"
"$A" protect -s "$S" -b "$(jq -r .id "$T/a2.json")" > /dev/null

# --- dir -> S3
"$A" sync -s "$S" --to "$U" --json > "$T/s1.json"
check test "$(jq -r .copied "$T/s1.json")" -eq 4
check test "$(jq -r .failed "$T/s1.json")" -eq 0
check test "$(jq -r .chunks_copied "$T/s1.json")" -gt 0
check test "$(listing "$U")" = "$(listing "$S")"
# a disaster-recovery machine: nothing but the URL and the credentials
dr=$T/dr; mkdir -p "$dr/home" "$dr/tmp"
for p in a1 a2 a3; do
    HOME=$dr/home TMPDIR=$dr/tmp "$R" restore -s "$U" -d "$dom" -b "$(jq -r .id "$T/$p.json")" --disk vda -o "$dr/$p.raw"
    check cmp "$dr/$p.raw" "$T/$p.raw"
done
HOME=$dr/home TMPDIR=$dr/tmp "$R" restore -s "$U" -d B --disk vdb -o "$dr/b1.raw"
check cmp "$dr/b1.raw" "$T/b1.raw"
check "$R" verify -s "$U"

# --- again: nothing to copy
"$A" sync -s "$S" --to "$U" --json > "$T/s2.json"
check test "$(jq -r .copied "$T/s2.json")" -eq 0
check test "$(jq -r .present "$T/s2.json")" -eq 4
check test "$(jq -r .chunks_copied "$T/s2.json")" -eq 0

# --- a new incremental: only its chunks travel
qemu-img bitmap --add "$img" b3
qio -c "write -P 0x51 20M 1M" "$img"
"$A" import -s "$S" -d "$dom" --disk vda -l inc --bitmap b3 --json "$img" > "$T/a4.json"; snap "$img" "$T/a4.raw"
"$A" sync -s "$S" --to "$U" -d "$dom" --json > "$T/s3.json"
check test "$(jq -r .copied "$T/s3.json")" -eq 1
check test "$(jq -r .bytes_copied "$T/s3.json")" -le $((2 * 1048576))
"$R" restore -s "$U" -d "$dom" --disk vda -o "$T/a4.back"
check cmp "$T/a4.back" "$T/a4.raw"

# --- interrupted: killed at spread moments, never half visible, resumed
big=$T/big.qcow2
qemu-img create -q -f qcow2 "$big" 64M
qio -c "write -P 0x61 0 20M" -c "write -P 0x62 30M 20M" "$big"
qemu-img convert -O raw "$big" "$T/big.raw"
# distinct data per round so that each round's sync has chunks to copy
for round in 1 2 3; do
    qio -c "write -P $((0x70 + round)) 0 24M" "$big"
    snap "$big" "$T/big$round.raw"
    "$A" import -s "$S" -d "big$round" --disk vda --json "$big" > "$T/big$round.json"
    "$A" sync -s "$S" --to "$U" -d "big$round" > /dev/null 2>&1 &
    pid=$!
    sleep "0.$((round * 3))"
    kill -9 $pid 2>/dev/null || true; wait $pid 2>/dev/null || true
    id=$(jq -r .id "$T/big$round.json")
    # either absent, or there and whole
    if "$R" list -s "$U" --json | jq -e --arg i "$id" 'any(.[]; .id == $i)' > /dev/null; then
        "$R" restore -s "$U" -b "$id" -d "big$round" --disk vda -o "$T/bigcut$round.raw"
        check cmp "$T/bigcut$round.raw" "$T/big$round.raw"
    fi
    "$A" sync -s "$S" --to "$U" -d "big$round" > /dev/null
    "$R" restore -s "$U" -b "$id" -d "big$round" --disk vda -o "$T/bigback$round.raw"
    check cmp "$T/bigback$round.raw" "$T/big$round.raw"
done
check "$R" verify -s "$U"

# --- S3 -> a new directory: ids, parents, times, flags kept
"$A" sync -s "$U" --to "$T/copy" > /dev/null
check test "$(listing "$T/copy")" = "$(listing "$U")"
check test "$("$R" list -s "$T/copy" --json | jq '[.[] | select(.protected)] | length')" -eq 1
"$R" restore -s "$T/copy" -d "$dom" -b "$(jq -r .id "$T/a3.json")" --disk vda -o "$T/c3.raw"
check cmp "$T/c3.raw" "$T/a3.raw"
check "$R" verify -s "$T/copy"

# --- prune on the destination is its own: a second sync does not undo it
"$A" prune -s "$T/copy" -d "$dom" --keep-last 1 > /dev/null
pruned=$(listing "$T/copy")
check test "$("$R" list -s "$T/copy" -d "$dom" --json | jq length)" -eq 2
"$A" sync -s "$U" --to "$T/copy" --json > "$T/s5.json"
check test "$(jq -r .copied "$T/s5.json")" -eq 0
check test "$(jq -r .skipped "$T/s5.json")" -eq 2
check test "$(listing "$T/copy")" = "$pruned"

# --- damage in the source is not copied
cp -a "$S" "$T/damaged"
id4=$(jq -r .id "$T/a4.json")
victim=$(ls "$T/damaged"/chunks/*/* | head -1)
printf 'XXXX' | dd of="$victim" bs=1 seek=40 conv=notrunc 2>/dev/null
rc=0; "$A" sync -s "$T/damaged" --to "$T/fromdamaged" > "$T/dmg.out" 2>&1 || rc=$?
check test "$rc" -ne 0
check grep -q "damaged" "$T/dmg.out"
check "$R" verify -s "$T/fromdamaged"

# --- bad input: one line, nothing written
expect_fail "same store" "$A" sync -s "$S" --to "$S"
expect_fail "403\|SignatureDoesNotMatch" env AWS_SECRET_ACCESS_KEY=wrong "$A" sync -s "$S" --to "$base/never"
expect_fail "not a nightjar store" "$R" list -s "$base/never"

# --- the scheduler's sync-to, after a run with no domain to back up
cat > "$T/sched.conf" <<EOF
store = $S
connect = test:///default
domains = no-such-domain-*
schedule = daily 02:00
gc = no
sync-to = $base/scheduled
state-file = $T/sched.state
EOF
"$A" run --config "$T/sched.conf" --once > "$T/sched.out" 2>&1
check grep -q "sync: to '$base/scheduled': 8 backup(s) copied" "$T/sched.out"
check test "$(listing "$base/scheduled")" = "$(listing "$S")"
finish
