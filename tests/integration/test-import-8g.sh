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
qemu-io -f qcow2 -c "write -s $T/rand 3G 32M" "$img" >/dev/null 2>&1 || \
    qemu-img dd -f raw -O qcow2 if="$T/rand" of="$img" bs=1M seek=3072 conv=notrunc 2>/dev/null || true

"$NIGHTJAR_AGENT" import -s "$T/store" -d big --disk vda "$img" > /dev/null
"$NIGHTJAR_RESTORE" restore -s "$T/store" -d big -o "$T/big.raw"
check qemu-img compare -q -f qcow2 -F raw "$img" "$T/big.raw"
"$NIGHTJAR_RESTORE" restore -s "$T/store" -d big -o "$T/big2.qcow2" -f qcow2
check qemu-img compare -q -f qcow2 -F qcow2 "$img" "$T/big2.qcow2"
finish
