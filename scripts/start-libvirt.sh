#!/bin/bash
# Start virtlogd and libvirtd when they are not running (there is no
# systemd on the machines nightjar is tested on).  Waits until the system
# connection answers.
#
# /dev/kvm first: on a machine where no udev ran, the device node is
# crw------- root root and QEMU, which libvirt runs as its own user
# (libvirt-qemu on Debian), cannot open it.  Debian's udev rules
# (50-udev-default.rules, 60-qemu-system-common.rules) give it root:kvm
# 0660, and Debian puts QEMU's user in group kvm; do the same here, so the
# machine behaves like a real host.  Nothing is done when the group or the
# user is missing; callers still decide KVM versus TCG by whether QEMU's
# user can open the device (nj_virt_type in tests/integration/lib-libvirt.sh,
# scripts/demo.sh).
set -euo pipefail

qemu_user=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' \
    /etc/libvirt/qemu.conf 2>/dev/null | tail -n 1)
qemu_user=${qemu_user:-libvirt-qemu}
qemu_user=${qemu_user#+}
if [ -c /dev/kvm ] && getent group kvm >/dev/null \
    && id -nG "$qemu_user" 2>/dev/null | tr ' ' '\n' | grep -qx kvm; then
    if [ "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]; then
        chgrp kvm /dev/kvm
        chmod 0660 /dev/kvm
        echo "start-libvirt: /dev/kvm set to root:kvm 0660, as udev sets it" >&2
    fi
fi

# Start each daemon that is not running, and keep checking: one that was
# just told to stop may still be exiting when we look (then it is started
# again once it is gone).  libvirtd probes QEMU's capabilities before it
# answers, which takes seconds on a loaded machine without KVM.
for _ in $(seq 1 300); do
    pgrep -x virtlogd >/dev/null || virtlogd -d || true
    pgrep -x libvirtd >/dev/null || libvirtd -d || true
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.2
done
echo "start-libvirt: libvirtd does not answer on qemu:///system after 60 s" >&2
exit 1
