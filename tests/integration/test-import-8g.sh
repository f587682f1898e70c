#!/bin/bash
# A full import of an 8 GiB image, restored to raw and qcow2: same bytes.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io

img=$T/big.qcow2
qemu-img create -q -f qcow2 "$img" 8G
# data spread over the disk, including its very end
args=()
for i in $(seq 0 63); do
    args+=(-c "write -P $((i + 1)) $((i * 128))M 1M")
done
args+=(-c "write -P 0xee $((8 * 1024 * 1048576 - 65536)) 65536")
qemu-io -f qcow2 "${args[@]}" "$img" > /dev/null
head -c 32M /dev/urandom > "$T/rand"
# random data at 3 GiB: it must land (a failed write fails the test)
if ! out=$(qemu-io -f qcow2 -c "write -s $T/rand 3G 32M" "$img" 2>&1) ||
    [[ $out != *"wrote 33554432/33554432 bytes at offset 3221225472"* ]]; then
    echo "FATAL: qemu-io write -s at 3G failed: $out" >&2
    exit 1
fi

"$NIGHTJAR_AGENT" import -s "$T/store" -d big --disk vda "$img" > /dev/null
"$NIGHTJAR_RESTORE" restore -s "$T/store" -d big -o "$T/big.raw"
check qemu-img compare -q -f qcow2 -F raw "$img" "$T/big.raw"
# the random data is there, independently of qemu-img's view of the image
check cmp "$T/rand" <(dd if="$T/big.raw" bs=1M skip=3072 count=32 status=none)
"$NIGHTJAR_RESTORE" restore -s "$T/store" -d big -o "$T/big2.qcow2" -f qcow2
check qemu-img compare -q -f qcow2 -F qcow2 "$img" "$T/big2.qcow2"
finish
