#!/bin/bash
# nightjar-agent backup --quiesce against a guest agent, with a real
# libvirtd and QEMU.
#
# libvirt talks to a guest agent only once the guest has opened its
# virtio-serial port (it waits for QEMU's VSERPORT_CHANGE event), so a
# program on the host side of the channel's socket cannot stand in for
# one.  The domain boots the host's own Linux kernel (direct kernel boot)
# with a tiny initramfs built here: busybox and qga-guest/init, a fake
# agent in sh on org.qemu.guest_agent.0 that logs every command on the
# serial console (a file here) and, before answering a freeze or a thaw,
# reads "ok" or "fail" from a second port, nj.control, that the test
# writes to.  So the test holds the guest at the freeze and at the thaw
# and looks at the domain in between, with no timing assumption:
#
#   1. --quiesce: freeze, then the job begins (no job during the freeze,
#      a job at the thaw), then thaw; the backup restores exactly.
#   2. The job cannot start after the freeze (the job directory is
#      replaced by a file while the guest holds the freeze): the agent
#      still thaws, fails with one line, and leaves nothing.
#   3. The guest refuses the freeze: --quiesce fails with one line and
#      leaves nothing (no thaw); --quiesce=try warns and goes on.
#
# (A domain with no guest agent at all: test-agent-failures.sh section 4.)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-libvirt.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp cpio gzip busybox python3
# The guest runs real code (the others never leave the paused state):
# TCG always.  Nested KVM (this project's machines) stops such a guest
# with "KVM internal error. Suberror: 1"; under TCG it is up in seconds.
export NJ_VIRT_TYPE=qemu
nj_require_libvirt

kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-*' 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "SKIP: no Linux kernel in /boot for the guest (apt install linux-image-cloud-amd64)" >&2; exit 77; }
kver=${kernel#/boot/vmlinuz-}
mods=/lib/modules/$kver/kernel/drivers
for m in virtio/virtio virtio/virtio_ring virtio/virtio_pci_legacy_dev virtio/virtio_pci_modern_dev \
    virtio/virtio_pci char/virtio_console; do
    [ -f "$mods/$m.ko" ] || { echo "SKIP: $mods/$m.ko missing (uncompressed virtio modules of $kver needed)" >&2; exit 77; }
done
busybox=$(command -v busybox)
{ ldd "$busybox" 2>&1 || true; } | grep -q 'not a dynamic executable' \
    || { echo "SKIP: $busybox is not statically linked (apt install busybox-static)" >&2; exit 77; }

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store
SC=$(mktemp -d /var/tmp/nj-h5q.XXXXXX)
chmod 0711 "$SC"
cleanup_hooks+=("rm -rf $(printf '%q' "$SC")")
bg_pids=()
kill_bg() {
    local p
    for p in "${bg_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    return 0
}
cleanup_hooks=("kill_bg" "${cleanup_hooks[@]}")
t_start=$SECONDS

# The initramfs: busybox, the fake agent as /init, the virtio modules.
ir=$T/initramfs
mkdir -p "$ir/bin" "$ir/lib"
cp "$busybox" "$ir/bin/busybox"
cp "$(dirname "$0")/qga-guest/init" "$ir/init"
chmod 0755 "$ir/init"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci; do
    cp "$mods/virtio/$m.ko" "$ir/lib/"
done
cp "$mods/char/virtio_console.ko" "$ir/lib/"
(cd "$ir" && find . | cpio -o -H newc --quiet | gzip -1) >"$T/initrd.img"
cp "$kernel" "$T/vmlinuz"        # libvirt relabels kernel and initrd: copies
rm -rf "$ir"

CON=$T/console.log QGA=$T/qga.sock CTL=$T/ctl.sock
dom=$(nj_unique_name quiesce)
NJ_DOMAIN_START=running NJ_DOMAIN_MEMORY=256 NJ_DOMAIN_CONSOLE=$CON \
NJ_DOMAIN_OS="<kernel>$T/vmlinuz</kernel><initrd>$T/initrd.img</initrd><cmdline>console=ttyS0 quiet panic=-1</cmdline>" \
NJ_DOMAIN_DEVICES="<channel type='unix'><source mode='bind' path='$QGA'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
<channel type='unix'><source mode='bind' path='$CTL'/><target type='virtio' name='nj.control'/></channel>" \
    nj_domain_create "$dom" vda:qcow2:16M vdb:raw:4M
echo "guest kernel $kver, virt type $NJ_VIRT_TYPE" >&2

# nlog PATTERN: how many console lines match the extended regex PATTERN.
# (the console ends its lines with \r\n)
nlog() { tr -d '\r' <"$CON" 2>/dev/null | grep -a -c -E "$1" || true; }
# wait_log PATTERN N [PID]: wait until N console lines match PATTERN; 1
# when PID (if given) exits first, or the domain stops.
wait_log() {
    local i
    for ((i = 0; ; i++)); do
        [ "$(nlog "$1")" -lt "$2" ] || return 0
        if [ -n "${3:-}" ] && ! kill -0 "$3" 2>/dev/null; then
            [ "$(nlog "$1")" -lt "$2" ] || return 0
            return 1
        fi
        if [ $((i % 10)) -eq 0 ] && [ "$(nj_virsh domstate "$dom" 2>/dev/null)" != running ]; then
            echo "the guest is not running: $(nj_virsh domstate --reason "$dom" 2>&1); QEMU's log ends:" >&2
            tail -n 5 "/var/log/libvirt/qemu/$dom.log" >&2 || true
            return 1
        fi
        sleep 0.1
    done
}
# ctl WORD: tell the guest how to answer its next freeze or thaw.
ctl() {
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode() + b"\n")
s.close()' "$CTL" "$1"
}
cps() { nj_virsh checkpoint-list --name "$dom" | sed '/^$/d' | LC_ALL=C sort; }
committed_cps() { "$R" list -s "$S" -d "$dom" --json 2>/dev/null | jq -r '.[] | .checkpoint // empty' | LC_ALL=C sort; }
store_state() { [ ! -d "$S" ] || (cd "$S" && find . -path ./locks -prune -o -print | LC_ALL=C sort); }
jf() { jq -r "$2" "$T/$1.json" 2>/dev/null; }
POINTS=()
snap() {
    local id=$1 t
    shift
    for t; do cp --sparse=always "$(nj_shadow_path "$dom" "$t")" "$T/truth-$id-$t.raw"; done
    POINTS+=("$id|$*")
}
# nothing_left WHAT: no job, no checkpoint but the committed ones, an
# empty scratch directory and staging, the store as it was ($before).
nothing_left() {
    if nj_has_job "$dom"; then fail "a job is left ($1)"; else ok; fi
    if [ "$(cps)" = "$(committed_cps)" ]; then ok; else fail "checkpoints ($1): [$(cps | tr '\n' ' ')] vs committed [$(committed_cps | tr '\n' ' ')]"; fi
    if [ -z "$(ls -A "$SC")" ]; then ok; else fail "left in the scratch directory ($1): $(ls -A "$SC")"; fi
    if [ "$(store_state)" = "$before" ]; then ok; else fail "the store changed ($1): $(diff <(echo "$before") <(store_state) | tr '\n' ' ')"; fi
}
bg_backup() {
    local name=$1
    shift
    "$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json "$@" >"$T/$name.json" 2>"$T/$name.err" &
    bg=$!
    bg_pids+=("$bg")
}

# The guest has booted and opened its ports; libvirt reaches the agent.
if ! wait_log '^nj-qga: ready' 1; then
    tail -n 30 "$CON" >&2
    echo "FATAL: the guest did not start its agent" >&2
    exit 1
fi
for ((i = 0; ; i++)); do
    if nj_virsh qemu-agent-command "$dom" '{"execute":"guest-ping"}' >/dev/null 2>&1; then break; fi
    [ "$(nj_virsh domstate "$dom")" = running ] || { echo "FATAL: the guest stopped" >&2; exit 1; }
    sleep 0.1
done
echo "[$((SECONDS - t_start)) s] the guest agent answers" >&2

###########################################################################
echo "== 1. --quiesce: freeze, job begins, thaw" >&2
nj_guest_write "$dom" vda 0x11 0 1M
nj_guest_write "$dom" vda 0x12 $((16 * 1048576 - 4096)) 4096
nj_guest_write "$dom" vdb 0x13 1M 512k
snap pending vda vdb
unset 'POINTS[0]'
bg_backup q1 --quiesce -l full
if wait_log '^nj-qga: freeze$' 1 "$bg"; then
    ok
    # frozen, answer pending: the job has not begun
    if nj_has_job "$dom"; then fail "a job exists before the freeze was answered"; else ok; fi
    check kill -0 "$bg"
    ctl ok
    if wait_log '^nj-qga: thaw$' 1 "$bg"; then
        ok
        # the job began while the guest was frozen
        if nj_has_job "$dom"; then ok; else fail "no job when the agent asked for the thaw"; fi
        ctl ok
    else
        fail "no thaw after the freeze"
    fi
else
    fail "the agent did not freeze: $(cat "$T/q1.err")"
fi
if wait "$bg"; then
    ok
    id=$(jf q1 .id)
    mv "$T/truth-pending-vda.raw" "$T/truth-$id-vda.raw"
    mv "$T/truth-pending-vdb.raw" "$T/truth-$id-vdb.raw"
    POINTS+=("$id|vda vdb")
    check test "$(jf q1 .level)" = full
    check test ! -s "$T/q1.err"
else
    fail "backup --quiesce failed: $(cat "$T/q1.err")"
fi
check test "$(tr -d '\r' <"$CON" | grep -a -E '^nj-qga: (freeze|thaw)' | tr '\n' ' ')" = "nj-qga: freeze nj-qga: freeze control=ok nj-qga: thaw nj-qga: thaw control=ok "

###########################################################################
echo "== 2. the job cannot begin after the freeze: thawed all the same" >&2
before=$(store_state)
nj_guest_write "$dom" vda 0x21 2M 64k
bg_backup q2 --quiesce -l inc
if wait_log '^nj-qga: freeze$' 2 "$bg"; then
    ok
    d=$(nj_job_dir "$SC" "$dom")
    check test -n "$d"
    # QEMU cannot create the NBD socket or libvirt the scratch file there
    rm -rf "$d"
    : >"$d"
    ctl ok
    if wait_log '^nj-qga: thaw$' 2 "$bg"; then ok; ctl ok; else fail "no thaw after a failed job start"; fi
else
    fail "the agent did not freeze (2): $(cat "$T/q2.err")"
fi
rc=0
wait "$bg" || rc=$?
check test "$rc" -ne 0
if [ "$(wc -l <"$T/q2.err")" -eq 1 ] && grep -q "start the backup of" "$T/q2.err"; then ok; else
    fail "expected one 'start the backup' error line, got: $(cat "$T/q2.err")"
fi
check test ! -s "$T/q2.json"
nothing_left "after a job that could not begin"
check test "$(nlog '^nj-qga: freeze$')" -eq 2
check test "$(nlog '^nj-qga: thaw$')" -eq 2

###########################################################################
echo "== 3. the guest refuses the freeze" >&2
ctl fail
rc=0
"$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json --quiesce -l inc >"$T/q3.json" 2>"$T/q3.err" || rc=$?
check test "$rc" -ne 0
if [ "$(wc -l <"$T/q3.err")" -eq 1 ] && grep -q "freeze the file systems of .*(guest agent)" "$T/q3.err"; then ok; else
    fail "expected one freeze error line, got: $(cat "$T/q3.err")"
fi
check test "$(nlog '^nj-qga: freeze control=fail$')" -eq 1
check test "$(nlog '^nj-qga: thaw$')" -eq 2   # nothing frozen, nothing to thaw
nothing_left "after a refused freeze"
# --quiesce=try: a warning, and the backup goes on
ctl fail
nj_guest_write "$dom" vdb 0x31 0 64k
rc=0
"$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json --quiesce=try -l inc >"$T/q4.json" 2>"$T/q4.err" || rc=$?
if [ "$rc" -eq 0 ]; then
    ok
    id=$(jf q4 .id)
    snap "$id" vda vdb
    check test "$(jf q4 .level)" = inc
    check test "$(jf q4 .parent)" = "$(jf q1 .id)"
    check grep -q "warning: freeze the file systems of .*; going on without quiescing" "$T/q4.err"
else
    fail "--quiesce=try with a refused freeze failed: $(cat "$T/q4.err")"
fi
check test "$(nlog '^nj-qga: freeze$')" -eq 4
check test "$(nlog '^nj-qga: thaw$')" -eq 2

###########################################################################
echo "== restores" >&2
for p in "${POINTS[@]}"; do
    IFS='|' read -r id ts <<<"$p"
    for t in $ts; do
        rm -f "$T/out.raw"
        if "$R" restore -s "$S" -d "$dom" -b "$id" --disk "$t" -o "$T/out.raw" 2>"$T/restore.err"; then
            if cmp -s "$T/out.raw" "$T/truth-$id-$t.raw"; then ok; else fail "restore of $t of $id differs from its truth"; fi
        else
            fail "restore of $t of $id: $(cat "$T/restore.err")"
        fi
    done
done
check test "${#POINTS[@]}" -eq 2
"$R" verify -s "$S" >"$T/verify.out" 2>&1 || fail "verify: $(cat "$T/verify.out")"
nj_domain_remove "$dom"
echo "total $((SECONDS - t_start)) s" >&2
finish
