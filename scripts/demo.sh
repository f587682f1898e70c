#!/bin/bash
# nightjar's main job, for real, on a fresh Debian 12 machine (as root):
# install, build, start libvirtd, create a small demo domain, write to its
# disks, take a full and an incremental backup, restore both disks, and
# compare every byte with an independent copy of what was written.
#
#   bash scripts/demo.sh [--keep]      (--keep leaves the store and images)
set -euo pipefail
cd "$(dirname "$0")/.."
keep=0
[ "${1:-}" = --keep ] && keep=1

say() { printf '\n==> %s\n' "$*"; }

say "installing dependencies and building"
bash scripts/install-deps.sh
[ -d build-demo ] || meson setup build-demo -Dbuildtype=release >/dev/null
ninja -C build-demo >/dev/null
A=$PWD/build-demo/agent/nightjar-agent
R=$PWD/build-demo/restore/nightjar-restore
bash scripts/start-libvirt.sh
V="virsh -q -c qemu:///system"

work=$(mktemp -d /var/tmp/nightjar-demo.XXXXXX)
chmod 0711 "$work"               # QEMU (libvirt-qemu) must reach the images
dom="nightjar-demo-${work##*.}"
cleanup() {
    $V destroy "$dom" >/dev/null 2>&1 || true
    $V undefine "$dom" --checkpoints-metadata >/dev/null 2>&1 || true
    [ $keep = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

virt=$(bash scripts/virt-type.sh)     # kvm only when QEMU's user can open /dev/kvm
say "creating domain '$dom' ($virt) with two qcow2 disks in $work"
qemu-img create -q -f qcow2 "$work/vda.qcow2" 256M
qemu-img create -q -f qcow2 "$work/vdb.qcow2" 64M
truncate -s 256M "$work/vda.truth"; truncate -s 64M "$work/vdb.truth"
cat > "$work/dom.xml" <<XML
<domain type='$virt'>
  <name>$dom</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='$work/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='$work/vdb.qcow2'/><target dev='vdb' bus='virtio'/></disk>
  </devices>
</domain>
XML
$V define "$work/dom.xml" >/dev/null
$V start "$dom" --paused >/dev/null

# A guest write: through QEMU's block layer (so dirty bitmaps see it), and
# the same bytes into the truth file with dd.
n=0
gwrite() { # target byte offset length  (offset and length in KiB)
    local t=$1 byte=$2 off=$3 len=$4 dev
    dev=$($V dumpxml "$dom" | xmllint --xpath "string(//disk[target/@dev='$t']/alias/@name)" -)
    if [ "$byte" = zero ]; then
        $V qemu-monitor-command "$dom" --hmp "qemu-io -d /machine/peripheral/$dev/virtio-backend \"write -z ${off}k ${len}k\"" >/dev/null
        dd if=/dev/zero of="$work/$t.truth" bs=1k seek="$off" count="$len" conv=notrunc status=none
    else
        $V qemu-monitor-command "$dom" --hmp "qemu-io -d /machine/peripheral/$dev/virtio-backend \"write -P $byte ${off}k ${len}k\"" >/dev/null
        head -c $((len * 1024)) /dev/zero | tr '\0' "\\$(printf '%03o' "$byte")" \
            | dd of="$work/$t.truth" bs=1k seek="$off" conv=notrunc status=none
    fi
    n=$((n + 1))
}

say "writing to the guest disks"
gwrite vda 0x61 0 8192; gwrite vda 0x62 65536 4096; gwrite vda 0x63 262080 64
gwrite vdb 0x71 1024 2048
say "full backup"
$A backup -s "$work/store" -d "$dom" -l full

say "more writes: scattered blocks, a region zeroed, the end of a disk"
for i in $(seq 0 40); do gwrite vda $((0x20 + i)) $((i * 6000)) 64; done
gwrite vda zero 1024 2048
gwrite vdb 0x72 65472 64
say "incremental backup"
$A backup -s "$work/store" -d "$dom" -l inc

say "the store"
$R list -s "$work/store"
$R verify -s "$work/store"

say "restoring the latest point and comparing with what was written"
for t in vda vdb; do
    $R restore -s "$work/store" -d "$dom" --disk $t -o "$work/$t.restored.raw"
    cmp "$work/$t.restored.raw" "$work/$t.truth"
    echo "$t: raw restore identical to the $n guest writes' truth"
done
$R restore -s "$work/store" -d "$dom" --disk vda -o "$work/vda.restored.qcow2" -f qcow2
qemu-img compare -q -f qcow2 -F raw "$work/vda.restored.qcow2" "$work/vda.truth"
echo "vda: qcow2 restore identical too"
say "done: backed up, restored and verified '$dom'$([ $keep = 1 ] && echo "; kept in $work")"
