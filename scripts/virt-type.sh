#!/bin/bash
# Print the domain type to use on this machine: "kvm" when QEMU, as the
# user libvirt runs it as, can open /dev/kvm read-write and libvirt offers
# KVM domains; "qemu" (TCG) otherwise.  Asking libvirt alone is not enough:
# `virsh domcapabilities --virttype kvm` succeeds on a machine whose
# /dev/kvm only root can open, and every domain then fails to start.
#
#   NJ_VIRT_TYPE=kvm|qemu forces the answer.
set -uo pipefail
if [ -n "${NJ_VIRT_TYPE:-}" ]; then echo "$NJ_VIRT_TYPE"; exit 0; fi
uri=${NJ_LIBVIRT_URI:-qemu:///system}
u=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' \
    /etc/libvirt/qemu.conf 2>/dev/null | tail -n 1)
u=${u:-libvirt-qemu}
u=${u#+}
as_qemu() {
    case $u in
        root | 0) "$@" ;;
        *) runuser -u "$u" -- "$@" ;;
    esac
}
if [ -c /dev/kvm ] && as_qemu sh -c ': <>/dev/kvm' 2>/dev/null \
    && caps=$(virsh -q -c "$uri" domcapabilities --virttype kvm 2>/dev/null) \
    && [[ $caps == *'<domain>kvm</domain>'* ]]; then
    echo kvm
else
    echo qemu
fi
