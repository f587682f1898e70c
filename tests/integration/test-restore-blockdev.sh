#!/bin/bash
# Restore onto an existing block device (a loop device): needs --force,
# writes every byte including zero ranges over old content.
. "$(dirname "$0")/lib.sh"
require losetup cmp qemu-nbd
: "${NIGHTJAR_AGENT:?set by meson}"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for loop devices" >&2; exit 77; }

S=$T/store
mkdir "$T/truth"
size=$((4 * 1048576 + 512))
"$NJ_TESTGEN" --seed 11 --size $size --incs 2 "$S" "$T/truth" > "$T/ids"
last=$(tail -n1 "$T/ids")

# Old content everywhere, so zero ranges must really be written.
dev_size=$((8 * 1048576))
head -c $dev_size /dev/urandom > "$T/backing"
cp "$T/backing" "$T/backing.orig"
dev=$(losetup -f --show "$T/backing" 2>/dev/null) || { echo "SKIP: no loop device available" >&2; exit 77; }
cleanup_hooks+=("losetup -d $dev")

expect_fail "exists; use --force" "$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$dev"
"$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$dev" --force
check cmp -n $size "$dev" "$T/truth/$last.raw"
# The bytes past the disk stay as they were.
check cmp -i $size:$size -n $((dev_size - size)) "$dev" "$T/backing.orig"

# A symlink to the device in a directory only root can change (as in
# /dev/disk/by-id) is followed; the same link in a shared directory is not:
# whoever can write there could point it at any device.
ln -s "$dev" "$T/devlink"
dd if="$T/backing.orig" of="$dev" bs=1M status=none conv=fsync
"$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$T/devlink" --force
check cmp -n $size "$dev" "$T/truth/$last.raw"
check test -L "$T/devlink"
mkdir -m 1777 "$T/shared"
ln -s "$dev" "$T/shared/devlink"
dd if="$T/backing.orig" of="$dev" bs=1M status=none conv=fsync
expect_fail "name the device itself" "$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$T/shared/devlink" --force
check cmp "$dev" "$T/backing.orig"
check test -L "$T/shared/devlink"
expect_fail "must be a file, not a block device" "$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$dev" --force -f qcow2
check cmp "$dev" "$T/backing.orig"

# A device restore interrupted by SIGTERM is left as it is and said to be
# incomplete.  The restore is stopped (SIGSTOP) once it has the device
# open; if it is still running then, the SIGTERM sent before SIGCONT lands
# during the restore.  Late kills are retried and counted.
big=$((64 * 1048576))
head -c $big /dev/urandom > "$T/big.raw"
"$NIGHTJAR_AGENT" import -s "$T/bigstore" -d big --disk vda "$T/big.raw" > /dev/null
rm "$T/big.raw"
truncate -s $((big + 1048576)) "$T/bigdev"
bigdev=$(losetup -f --show "$T/bigdev")
cleanup_hooks+=("losetup -d $bigdev")
landed=0
for attempt in 1 2 3 4 5 6 7 8; do
    "$NIGHTJAR_RESTORE" restore -s "$T/bigstore" -d big --disk vda -o "$bigdev" \
        --force --threads 1 2> "$T/sig.err" &
    pid=$!
    while kill -0 $pid 2>/dev/null &&
          ! ls -l /proc/$pid/fd 2>/dev/null | grep -q " -> $bigdev\$"; do
        sleep 0.005
    done
    kill -STOP $pid 2>/dev/null || true
    if kill -0 $pid 2>/dev/null && [ "$(ps -o stat= -p $pid)" != Z ]; then
        kill -TERM $pid
        kill -CONT $pid
        rc=0; wait $pid || rc=$?
        landed=$((landed + 1))
        check test $rc -eq 143
        check test "$(wc -l < "$T/sig.err")" -eq 1
        check grep -qx "nightjar-restore: interrupted by SIGTERM; block device '$bigdev' is incomplete" "$T/sig.err"
        check test -b "$bigdev"
        break
    fi
    kill -CONT $pid 2>/dev/null || true
    wait $pid || true
done
echo "device SIGTERM: landed during the restore in $landed of $attempt attempts"
check test $landed -ge 1

# A device smaller than the disk is refused.
head -c 1048576 /dev/zero > "$T/small"
small=$(losetup -f --show "$T/small")
cleanup_hooks+=("losetup -d $small")
expect_fail "has 1048576 bytes, the disk needs" "$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$small" --force

finish
