#!/bin/bash
# nightjar-restore end to end: list, restore (raw and qcow2), verify, and
# the refusals users rely on, against a store built by nj-testgen.
. "$(dirname "$0")/lib.sh"
require qemu-img jq cmp

S=$T/store
mkdir "$T/truth"
DOM="it's \"web\" & <db>"
# An odd size: not a multiple of 64 KiB, and writes at the last byte.
"$NJ_TESTGEN" --domain "$DOM" --seed 7 --size $((5 * 1048576 + 12345)) \
    --incs 3 "$S" "$T/truth" > "$T/ids"
mapfile -t ids < "$T/ids"
check test "${#ids[@]}" -eq 4

# list, human and JSON
"$NIGHTJAR_RESTORE" list -s "$S" > "$T/list"
for id in "${ids[@]}"; do check grep -q "$id" "$T/list"; done
"$NIGHTJAR_RESTORE" list -s "$S" --json > "$T/list.json"
check test "$(jq length "$T/list.json")" -eq 4
check test "$(jq -r '.[0].level' "$T/list.json")" = full
check test "$(jq -r '.[0].parent' "$T/list.json")" = null
check test "$(jq -r '.[1].parent' "$T/list.json")" = "${ids[0]}"
check test "$(jq -r '.[3].domain' "$T/list.json")" = "$DOM"
check test "$(jq -r '.[3].disks[0].target' "$T/list.json")" = vda
check test "$(jq -r '.[3].disks[0].size' "$T/list.json")" -eq $((5 * 1048576 + 12345))
check test "$(jq -r '.[2].time | type' "$T/list.json")" = number
check test "$("$NIGHTJAR_RESTORE" list -s "$S" -d nosuch --json | jq length)" -eq 0

# every point, raw, compared with its truth
for id in "${ids[@]}"; do
    "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" -b "$id" --disk vda -o "$T/$id.raw"
    check cmp "$T/$id.raw" "$T/truth/$id.raw"
done
# latest is the default, and the UUID works as the domain
"$NIGHTJAR_RESTORE" restore -s "$S" -d 11111111-2222-4333-8444-000000000007 \
    --disk vda -o "$T/latest.raw"
check cmp "$T/latest.raw" "$T/truth/${ids[3]}.raw"
# sparse: allocation well below the virtual size when the disk has holes
alloc=$(( $(stat -c %b "$T/${ids[0]}.raw") * 512 ))
truth_nz=$(tr -d '\0' < "$T/truth/${ids[0]}.raw" | wc -c)
check test "$alloc" -le $((truth_nz + 2 * 1048576))

# qcow2 output: same bytes, zero ranges unallocated
"$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" -b latest --disk vda \
    -o "$T/latest.qcow2" -f qcow2
check qemu-img compare -q -f qcow2 -F raw "$T/latest.qcow2" "$T/truth/${ids[3]}.raw"
check test "$(qemu-img info --output=json "$T/latest.qcow2" | jq -r .format)" = qcow2
unalloc=$(qemu-img map --output=json "$T/latest.qcow2" | jq '[.[] | select(.data == false) | .length] | add // 0')
check test "$unalloc" -gt 0
check qemu-img check -q "$T/latest.qcow2"

# chunks larger than the qcow2 output's bound on write buffers (16 MiB):
# one buffer is always granted, and the other workers wait for it
mkdir "$T/bigtruth"
"$NJ_TESTGEN" --seed 9 --size $((70 * 1048576 + 512)) --grid $((32 * 1048576)) \
    --incs 1 "$T/bigstore" "$T/bigtruth" > "$T/bigids"
bigid=$(tail -n1 "$T/bigids")
for threads in 1 3; do
    "$NIGHTJAR_RESTORE" restore -s "$T/bigstore" -d testgen --disk vda \
        --threads $threads -o "$T/big$threads.qcow2" -f qcow2
    check qemu-img compare -q -f qcow2 -F raw "$T/big$threads.qcow2" "$T/bigtruth/$bigid.raw"
    check qemu-img check -q "$T/big$threads.qcow2"
    rm -f "$T/big$threads.qcow2"
done

# never overwrite without --force; the existing file is untouched
echo precious > "$T/existing"
expect_fail "exists; use --force" "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" --disk vda -o "$T/existing"
check grep -qx precious "$T/existing"
expect_fail "exists; use --force" "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" --disk vda -o "$T/existing" -f qcow2
check grep -qx precious "$T/existing"
"$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" --disk vda -o "$T/existing" --force
check cmp "$T/existing" "$T/truth/${ids[3]}.raw"

# bad input: one clear line, non-zero exit, nothing created
expect_fail "not a nightjar store" "$NIGHTJAR_RESTORE" list -s "$T/truth"
expect_fail "open store" "$NIGHTJAR_RESTORE" list -s "$T/nonexistent"
expect_fail "no backup 'nosuch'" "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" -b nosuch --disk vda -o "$T/x"
expect_fail "no disk 'vdz'" "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" --disk vdz -o "$T/x"
expect_fail "no backup of domain" "$NIGHTJAR_RESTORE" restore -s "$S" -d other --disk vda -o "$T/x"
check test ! -e "$T/x"
rc=0; "$NIGHTJAR_RESTORE" restore -s "$S" -d "$DOM" --disk vda -o "$T/x" -f vmdk 2>/dev/null || rc=$?
check test "$rc" -eq 2
rc=0; "$NIGHTJAR_RESTORE" bogus 2>/dev/null || rc=$?
check test "$rc" -eq 2

# verify
"$NIGHTJAR_RESTORE" verify -s "$S" > "$T/verify"
check grep -q "all sound" "$T/verify"
"$NIGHTJAR_RESTORE" verify -s "$S" -d "$DOM" -b "${ids[2]}" --json > "$T/verify.json"
check test "$(jq -r .ok "$T/verify.json")" = true
check test "$(jq -r .backups "$T/verify.json")" -eq 3

finish
