#!/bin/bash
# Start virtlogd and libvirtd when they are not running (there is no
# systemd on the machines nightjar is tested on).  Waits until the system
# connection answers.
set -euo pipefail

if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d
fi
if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d
fi
for _ in $(seq 1 50); do
    if virsh -c qemu:///system version >/dev/null 2>&1; then
        exit 0
    fi
    sleep 0.2
done
echo "start-libvirt: libvirtd does not answer on qemu:///system" >&2
exit 1
