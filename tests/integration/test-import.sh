#!/bin/bash
# nightjar-agent import against real qemu-nbd exports of qcow2 images with
# real persistent bitmaps; every point restored and compared with a shadow
# truth taken by qemu-img convert at that point.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd nbdinfo jq cmp

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

# --- compression: a fixed level, a range, the adaptive default ---
# Each import gets new data (text that compresses, random that does not)
# so that its chunks are new; the record in the manifest must account for
# every new byte, at levels inside the policy's range.
zimport() {  # NAME LEVEL-ARG...: import fresh data, JSON in $T/z-NAME.json
    local n=$1; shift
    # numbers from a random start: new cells, with matches even zstd's
    # fast levels find (they leave literals uncompressed)
    local from=$((RANDOM * 100000))
    seq $from $((from + 1600000)) > "$T/z.raw"
    truncate -s 12M "$T/z.raw"
    head -c 4M /dev/urandom >> "$T/z.raw"
    "$A" import -s "$S" -d "z-$n" --disk vda --format raw "$@" --json "$T/z.raw" > "$T/z-$n.json"
    "$R" restore -s "$S" -d "z-$n" -o "$T/z-$n.out"
    check cmp "$T/z-$n.out" "$T/z.raw"
    jq -e '.disks[0] as $d | $d.compression as $c
        | ([$c.levels[].bytes] | add) + $c.raw_bytes == $d.bytes_new
          and ([$c.levels[].stored] | add) < ([$c.levels[].bytes] | add)
          and ([$c.levels[].chunks] | add) + $c.raw_chunks == $d.chunks_new
          and $c.raw_chunks >= 1
          and all($c.levels[]; .level >= $c.level_min and .level <= $c.level_max and .level != 0)' \
        "$T/z-$n.json" > /dev/null || fail "compression record of z-$n: $(jq -c .disks[0] "$T/z-$n.json")"
    # the manifest in the store says the same
    id=$(jq -r .id "$T/z-$n.json")
    check test "$(jq -c .disks[0].compression "$(nj_manifest_file "$S" "$id")")" = "$(jq -c .disks[0].compression "$T/z-$n.json")"
}
zimport fixed --zstd-level 7
check test "$(jq -r '.disks[0].compression | "\(.policy) \(.level_min) \(.level_max) \([.levels[].level] | unique)"' "$T/z-fixed.json")" = "fixed 7 7 [7]"
zimport fast --zstd-level -3..-1
check test "$(jq -r '.disks[0].compression | "\(.policy) \(.level_min) \(.level_max)"' "$T/z-fast.json")" = "auto -3 -1"
zimport default
check test "$(jq -r '.disks[0].compression | "\(.policy) \(.level_min) \(.level_max)"' "$T/z-default.json")" = "auto 1 3"
# the one-line summary names the policy
"$A" import -s "$S" -d z-text --disk vda --format raw --zstd-level 2 "$T/z.raw" > "$T/z-text.out"
check grep -q ", zstd 2\$" "$T/z-text.out"

# --- bad input: clear one-line errors, nothing stored ---
before=$("$R" list -s "$S" --json | jq length)
for l in 0 20 -11 3..1 1.. x " 3"; do
    expect_fail "is not a zstd level" "$A" import -s "$S" -d z-bad --disk vda --format raw --zstd-level "$l" "$T/z.raw"
done
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
# wait until it serves the image (then it holds its locks); the bound is
# only a failsafe
for ((i = 0; i < 1200; i++)); do
    nbdinfo --size "nbd+unix:///?socket=$T/busy.sock" >/dev/null 2>&1 && break
    kill -0 $busy 2>/dev/null || break
    sleep 0.05
done
if qemu-img info "$img" >/dev/null 2>&1; then fail "qemu-nbd does not hold the lock of $img"; else ok; fi
expect_fail "write\" lock" "$A" import -s "$S" -d busy --disk vda "$img"
kill $busy; wait $busy 2>/dev/null || true
check test "$("$R" list -s "$S" --json | jq length)" -eq "$before"
# no qemu-nbd left behind
check test -z "$(pgrep -f "qemu-nbd.*$T" || true)"

# --- the format is never guessed from the content ---
# A host file with known content, and a raw guest disk whose guest wrote
# a qcow2 header naming that host file as its backing file.
F=$T/fmt
mkdir -p "$F"
head -c 1048576 /dev/zero | tr '\0' 'S' >"$F/host-secret"
qemu-img create -q -f qcow2 -b "$F/host-secret" -F raw "$F/guest.img" 1M
truncate -s 4M "$F/guest.img"
stores() { "$R" list -s "$S" --json | jq length; }
before=$(stores)
# taken as raw by its name, it starts like qcow2: refused, nothing made
expect_fail "'$F/guest.img' is taken as a raw image .* starts like a qcow2 image: pass --format raw" \
    "$A" import -s "$S" -d guest --disk vda "$F/guest.img"
expect_fail "starts like a qcow2 image" "$A" import -s "$F/new-store" -d guest --disk vda "$F/guest.img"
check test ! -e "$F/new-store"
check test "$(stores)" -eq "$before"
# --format raw: its own bytes, header and all, not the host file's
"$A" import -s "$S" -d guest --disk vda --format raw --json "$F/guest.img" >"$F/guest.json"
check test "$(jq -r '.disks[0].size' "$F/guest.json")" -eq 4194304
"$R" restore -s "$S" -d guest -o "$F/guest.out"
check cmp "$F/guest.out" "$F/guest.img"
if cmp -s -n 1048576 "$F/guest.out" "$F/host-secret"; then fail "the host file was backed up"; else ok; fi
# --format qcow2 on it is the user's word: a qcow2 whose backing chain
# records every format is imported as qcow2 (here: the host file's bytes)
"$A" import -s "$S" -d guest-q --disk vda --format qcow2 "$F/guest.img" >/dev/null
"$R" restore -s "$S" -d guest-q -o "$F/guest-q.out"
check cmp "$F/guest-q.out" "$F/host-secret"

# a qcow2 that does not record its backing file's format: qemu would
# probe the backing file, so refused, by name and with --format qcow2
cp "$F/guest.img" "$F/nofmt.qcow2"
ext=$(LC_ALL=C grep -obUaP '\xe2\x79\x2a\xca' "$F/nofmt.qcow2" | head -n 1 | cut -d: -f1)
if [ -n "$ext" ]; then
    printf '\0\0\0\0\0\0\0\0' | dd of="$F/nofmt.qcow2" bs=1 seek="$ext" conv=notrunc status=none
    qemu-img info -U --output=json -f qcow2 "$F/nofmt.qcow2" | jq -e 'has("backing-filename-format") | not' >/dev/null \
        || fail "nofmt.qcow2 still records a backing format"
    expect_fail "has backing file '$F/host-secret' but does not record its format" \
        "$A" import -s "$S" -d nofmt --disk vda "$F/nofmt.qcow2"
    expect_fail "does not record its format" "$A" import -s "$S" -d nofmt --disk vda --format qcow2 "$F/nofmt.qcow2"
else
    fail "no backing format extension found in guest.img"
fi
# ... also deeper in the chain: top -> mid (qcow2, recorded) -> base (not)
qemu-img create -q -f qcow2 -b "$F/nofmt.qcow2" -F qcow2 "$F/top.qcow2"
expect_fail "image '$F/nofmt.qcow2' has backing file .* does not record its format" \
    "$A" import -s "$S" -d top --disk vda "$F/top.qcow2"
# a chain that records its formats, with a relative backing name: imported
qemu-img create -q -f qcow2 "$F/base.qcow2" 8M
qemu-io -f qcow2 -c "write -P 0x11 0 3M" "$F/base.qcow2" >/dev/null
(cd "$F" && qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 overlay.qcow2)
qemu-io -f qcow2 -c "write -P 0x22 1M 1M" "$F/overlay.qcow2" >/dev/null
"$A" import -s "$S" -d overlay --disk vda "$F/overlay.qcow2" >/dev/null
"$R" restore -s "$S" -d overlay -o "$F/overlay.out"
qemu-img convert -f qcow2 -O raw "$F/overlay.qcow2" "$F/overlay.truth"
check cmp "$F/overlay.out" "$F/overlay.truth"
# a backing "file" that is a protocol (qemu would connect to it): refused
qemu-img create -q -f qcow2 -u -b "nbd+unix:///?socket=$F/none.sock" -F raw "$F/proto.qcow2" 1M
expect_fail "has backing file 'nbd+unix:///?socket=$F/none.sock': only files can be imported" \
    "$A" import -s "$S" -d proto --disk vda "$F/proto.qcow2"
# an external data file names another host file: refused
qemu-img create -q -f qcow2 -o data_file="$F/data.raw" "$F/datafile.qcow2" 1M
expect_fail "external data file" "$A" import -s "$S" -d df --disk vda "$F/datafile.qcow2"
# other formats' magic in a file taken as raw: refused, --format raw works
magic() { # NAME OFFSET PRINTF-BYTES
    head -c 65536 /dev/zero >"$F/$1.img"
    printf "$3" | dd of="$F/$1.img" bs=1 seek="$2" conv=notrunc status=none
    expect_fail "starts like a $1 image: pass --format raw" "$A" import -s "$S" -d "m-$1" --disk vda "$F/$1.img"
    "$A" import -s "$S" -d "m-$1" --disk vda --format raw "$F/$1.img" >/dev/null
    "$R" restore -s "$S" -d "m-$1" -o "$F/$1.out"
    check cmp "$F/$1.out" "$F/$1.img"
}
magic vmdk 0 'KDMV'
magic vhdx 0 'vhdxfile'
magic vdi 64 '\177\020\332\276'
magic luks 0 'LUKS\272\276'
magic qed 0 'QED\0'
magic vpc 0 'conectix'
# a raw image named .qcow2, and --format qcow2 on a raw image
cp "$T/plain.raw" "$F/plain.qcow2"
expect_fail "'$F/plain.qcow2' has no qcow2 header: pass --format raw" "$A" import -s "$S" -d p --disk vda "$F/plain.qcow2"
expect_fail "has no qcow2 header" "$A" import -s "$S" -d p --disk vda --format qcow2 "$T/plain.raw"
"$A" import -s "$S" -d p --disk vda --format raw "$F/plain.qcow2" >/dev/null
# usage: the two formats only; an NBD export is raw
expect_fail "--format: raw or qcow2, not 'vmdk'" "$A" import -s "$S" -d p --disk vda --format vmdk "$T/plain.raw"
expect_fail "applies to image files only" "$A" import -s "$S" -d p --disk vda --format qcow2 "nbd+unix:///?socket=$F/none.sock"
# a FIFO as the source: refused at once, not waited on
mkfifo "$F/fifo.img"
expect_fail "is not a regular file or a block device" timeout 60 "$A" import -s "$S" -d p --disk vda "$F/fifo.img"
"$R" verify -s "$S" >/dev/null; ok

finish
