#!/bin/bash
# nightjar-agent import against real qemu-nbd exports of qcow2 images with
# real persistent bitmaps; every point restored and compared with a shadow
# truth taken by qemu-img convert at that point.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd jq cmp

S=$T/store
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
qio() { qemu-io -f qcow2 "$@" >/dev/null; }
snap() { qemu-img convert -O raw "$1" "$2"; }

# --- a chain of full and incrementals, odd size, zeroing and discards ---
img=$T/disk.qcow2
size=$((48 * 1048576 + 3 * 512))          # not a multiple of 64 KiB
qemu-img create -q -f qcow2 "$img" $size
qio -c "write -P 0x61 0 5M" -c "write -P 0x62 20M 3M" -c "write -P 0x63 $((size - 4096)) 4096" "$img"
qemu-img bitmap --add "$img" nj1
"$A" import -s "$S" -d "vm 'one' & co" --disk vda --json "$img" > "$T/b1.json"
snap "$img" "$T/t1.raw"
check test "$(jq -r .level "$T/b1.json")" = full
check test "$(jq -r '.disks[0].level' "$T/b1.json")" = full
check test "$(jq -r '.disks[0].bytes_read' "$T/b1.json")" -ge $((8 * 1048576))

# inc 1: scattered writes, a dirty-then-zeroed region, the last byte
qio -c "write -P 0x71 1M 64k" -c "write -P 0x72 30M 100k" -c "write -z 20M 1M" \
    -c "write -P 0x73 $((size - 1)) 1" "$img"
"$A" import -s "$S" -d "vm 'one' & co" --disk vda -l inc --bitmap nj1 --json "$img" > "$T/b2.json"
qemu-img bitmap --add "$img" nj2
snap "$img" "$T/t2.raw"
check test "$(jq -r .level "$T/b2.json")" = inc
check test "$(jq -r .parent "$T/b2.json")" = "$(jq -r .id "$T/b1.json")"
# only the dirty ranges were read: far less than the disk
check test "$(jq -r '.disks[0].bytes_read' "$T/b2.json")" -le $((2 * 1048576))

# inc 2: discard data (reads back as zero) and overwrite
qio -c "discard 0 2M" -c "write -P 0x81 4M 512k" "$img"
"$A" import -s "$S" -d "vm 'one' & co" --disk vda -l inc --bitmap nj2 --json "$img" > "$T/b3.json"
snap "$img" "$T/t3.raw"

# every point restores exactly
n=1
for id in $(jq -r .id "$T/b1.json" "$T/b2.json" "$T/b3.json"); do
    "$R" restore -s "$S" -d "vm 'one' & co" -b "$id" --disk vda -o "$T/r$n.raw"
    check cmp "$T/r$n.raw" "$T/t$n.raw"
    n=$((n + 1))
done
# the zeroed and discarded regions restore as zero, not as stale data
check cmp -n 1048576 -i 20971520:0 "$T/r2.raw" /dev/zero
check cmp -n 1048576 -i 0:0 "$T/r3.raw" /dev/zero
"$R" verify -s "$S" > /dev/null
ok

# --- a copy of the image under another name dedups completely ---
"$A" import -s "$S" -d clone-a --disk vda "$img" > /dev/null
cp "$img" "$T/copy.qcow2"
"$A" import -s "$S" -d clone-b --disk vdb --json "$T/copy.qcow2" > "$T/clone.json"
check test "$(jq -r '.disks[0].bytes_new' "$T/clone.json")" -eq 0
check test "$(jq -r '.disks[0].chunks_dedup' "$T/clone.json")" -gt 0

# --- preallocation=metadata: stored as zero, restored sparse ---
pre=$T/prealloc.qcow2
qemu-img create -q -f qcow2 -o preallocation=metadata "$pre" 64M
qio -c "write -P 0x55 8M 64k" "$pre"
"$A" import -s "$S" -d prealloc --disk vdb --json "$pre" > "$T/pre.json"
check test "$(jq -r '.disks[0].bytes_new' "$T/pre.json")" -le $((64 * 1024))
"$R" restore -s "$S" -d prealloc -o "$T/pre.raw"
snap "$pre" "$T/pre.truth"
check cmp "$T/pre.raw" "$T/pre.truth"
check test $(( $(stat -c %b "$T/pre.raw") * 512 )) -le $((1024 * 1024))

# --- a raw image file ---
head -c 3000000 /dev/urandom > "$T/plain.raw"
truncate -s 5000000 "$T/plain.raw"
"$A" import -s "$S" -d rawvm --disk sda "$T/plain.raw" > /dev/null
"$R" restore -s "$S" -d rawvm -o "$T/plain.out"
# QEMU exposes raw images rounded up to 512 bytes: the tail reads zero.
check cmp -n 5000000 "$T/plain.out" "$T/plain.raw"
check test "$(stat -c %s "$T/plain.out")" -eq 5000192
check cmp -n 192 -i 5000000:0 "$T/plain.out" /dev/zero

# --- bad input: clear one-line errors, nothing stored ---
before=$("$R" list -s "$S" --json | jq length)
expect_fail "needs --bitmap" "$A" import -s "$S" -d "vm 'one' & co" --disk vda -l inc "$img"
expect_fail "no earlier backup of 'fresh'" "$A" import -s "$S" -d fresh --disk vda -l inc --bitmap nj2 "$img"
expect_fail "has no persistent bitmap 'nosuch'" "$A" import -s "$S" -d "vm 'one' & co" --disk vda -l inc --bitmap nosuch "$img"
expect_fail "No such file" "$A" import -s "$S" -d x --disk vda "$T/missing.qcow2"
echo "not an image" > "$T/junk.txt"
truncate -s 1 "$T/empty.img" 2>/dev/null || true
expect_fail "persistent bitmaps need qcow2" "$A" import -s "$S" -d rawvm --disk sda -l inc --bitmap b "$T/plain.raw"
expect_fail "not a nightjar store" "$A" import -s "$T" -d x --disk vda "$img"
# an image in use by another program (a VM, here a writable qemu-nbd)
qemu-nbd --persistent --socket="$T/busy.sock" -f qcow2 "$img" 2>/dev/null &
busy=$!
for _ in $(seq 100); do [ -S "$T/busy.sock" ] && break; sleep 0.05; done
sleep 0.2
expect_fail "write\" lock" "$A" import -s "$S" -d busy --disk vda "$img"
kill $busy; wait $busy 2>/dev/null || true
check test "$("$R" list -s "$S" --json | jq length)" -eq "$before"
# no qemu-nbd left behind
check test -z "$(pgrep -f "qemu-nbd.*$T" || true)"

finish
