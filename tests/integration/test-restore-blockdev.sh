#!/bin/bash
# Restore onto an existing block device (a loop device): needs --force,
# writes every byte including zero ranges over old content.
. "$(dirname "$0")/lib.sh"
require losetup cmp
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

# A device smaller than the disk is refused.
head -c 1048576 /dev/zero > "$T/small"
small=$(losetup -f --show "$T/small")
cleanup_hooks+=("losetup -d $small")
expect_fail "has 1048576 bytes, the disk needs" "$NIGHTJAR_RESTORE" restore -s "$S" -d testgen --disk vda -o "$small" --force

finish
