#!/bin/bash
# Install what nightjar needs to build and test on Debian 12, as root.
# Idempotent; safe to run with no terminal (CI).
set -euo pipefail

packages=(
    # build
    meson ninja-build pkg-config gcc clang
    libvirt-dev libnbd-dev libxml2-dev libzstd-dev libssl-dev libjson-c-dev
    # the hypervisor side: libvirtd, QEMU, qemu-img/qemu-nbd, NBD tools
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
    libnbd-bin nbdkit
    # tests and tools: jq for JSON checks, GNU time for peak RSS, loop
    # devices, valgrind, the libFuzzer runtime for clang
    jq time util-linux valgrind libclang-rt-14-dev zstd bc libxml2-utils
    # the peer, for the benchmark smoke run in the suite (virtnbdbackup -z
    # needs python3-lz4)
    virtnbdbackup python3-lz4
    # the peer's way to object storage, for benchmarks/bench-s3.sh
    rclone
    # fake guest agent and syscall tracing in tests
    socat strace
    # a tiny real guest for the --quiesce test: a kernel to boot, static
    # busybox and cpio for its initramfs (tests/integration/test-agent-quiesce.sh)
    linux-image-cloud-amd64 busybox-static cpio
    # systemd-analyze verify of the units (the package, not systemd as init)
    systemd
    # the S3 client (catalog/nj-s3.c) and its tests: libcurl, and a
    # throw-away single-node Ceph with radosgw (scripts/ceph-start.sh; openssl
    # makes its HTTPS endpoint's certificate)
    libcurl4-openssl-dev ceph-mon ceph-osd radosgw ceph-common openssl
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
