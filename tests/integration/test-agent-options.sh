#!/bin/bash
# nightjar-agent backup options and job directories, with a real libvirtd
# and QEMU (KVM, or TCG with NJ_VIRT_TYPE=qemu):
#
#   1. Two domains whose UUIDs share their first 8 hex digits (explicit
#      <uuid>): a backup of one runs while a backup of the other is stopped
#      (SIGSTOP) in its job, and while a SIGKILLed backup of the other left
#      its job directory (and job); neither removes the other's directory,
#      every backup commits and restores exactly.  Job directories whose
#      owner file does not prove they are ours (wrong store, a symlink, no
#      owner file) are left alone.
#   2. --max-age with the backup clock (NIGHTJAR_FAKE_NOW): an inc just
#      before the chain's full is N days old, a full just after, none with
#      --max-age 0, and the default of 7 days.
#   3. --scratch-min against a small tmpfs of known free space: one byte
#      more than free is refused with one line and leaves nothing; exactly
#      what is free is enough.
#   4. A type='block' disk (a loop device over a file) in every backup of
#      sections 2 and 3 next to a qcow2 disk.
#
# Every committed point of every disk is restored and compared byte for
# byte with lib-libvirt.sh's shadow of the disk saved at that point.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-libvirt.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp losetup mount umount stat
nj_require_libvirt

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store
# the NBD socket path in the scratch directory must fit 108 bytes
SC=$(mktemp -d /var/tmp/nj-h5o.XXXXXX)
chmod 0711 "$SC"
cleanup_hooks+=("rm -rf $(printf '%q' "$SC")")
bg_pids=()
kill_bg() {
    local p
    for p in "${bg_pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -9 "$p" 2>/dev/null || true; done
    return 0
}
cleanup_hooks=("kill_bg" "${cleanup_hooks[@]}")
t_start=$SECONDS t_sec=$SECONDS
section() {
    echo "== $* (previous section $((SECONDS - t_sec)) s)" >&2
    t_sec=$SECONDS
}
want() { [ -z "${NJ_SECTIONS:-}" ] || [[ " $NJ_SECTIONS " == *" $1 "* ]]; }

# bk NAME DOMAIN ARGS...: one backup into $S (JSON $T/NAME.json, stderr
# $T/NAME.err); its exit status.
bk() {
    local name=$1 dom=$2 rc=0
    shift 2
    "$A" backup -s "$S" -d "$dom" --scratch-dir "${BK_SCRATCH:-$SC}" --json "$@" \
        >"$T/$name.json" 2>"$T/$name.err" || rc=$?
    return $rc
}
# bk_ok NAME DOMAIN ARGS...: bk that must succeed; $id is the new id.
bk_ok() {
    id=none
    if bk "$@"; then ok; id=$(jq -r .id "$T/$1.json"); else
        fail "backup $1 of '$2' failed: $(cat "$T/$1.err")"
    fi
}
jf() { jq -r "$2" "$T/$1.json" 2>/dev/null; }
# snap DOMAIN ID TARGET...: the shadows as the truth of backup ID.
snap() {
    local dom=$1 id=$2 t
    shift 2
    for t; do cp --sparse=always "$(nj_shadow_path "$dom" "$t")" "$T/truth-$id-$t.raw"; done
    POINTS+=("$dom|$id|$*")
}
POINTS=()
# restore_all: every saved point of every disk restores to its truth.
restore_all() {
    local p dom id ts t
    for p in "${POINTS[@]}"; do
        IFS='|' read -r dom id ts <<<"$p"
        for t in $ts; do
            rm -f "$T/out.raw"
            if "$R" restore -s "$S" -d "$dom" -b "$id" --disk "$t" -o "$T/out.raw" 2>"$T/restore.err"; then
                if cmp -s "$T/out.raw" "$T/truth-$id-$t.raw"; then ok; else
                    fail "restore of $t of $id ('$dom') differs from its truth: $(cmp "$T/out.raw" "$T/truth-$id-$t.raw" 2>&1 | head -1)"
                fi
            else
                fail "restore of $t of $id ('$dom'): $(cat "$T/restore.err")"
            fi
        done
    done
    rm -f "$T/out.raw"
}
# start_stopped NAME DOMAIN ARGS...: a backup in the background, stopped
# (SIGSTOP) as soon as its job directory with its owner file exists; $bg
# is its pid, $bg_dir the directory.  1 when the run ended first.
start_stopped() {
    local name=$1 dom=$2 i uuid
    shift 2
    uuid=$(nj_virsh domuuid "$dom")
    "$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json "$@" \
        >"$T/$name.json" 2>"$T/$name.err" &
    bg=$!
    bg_pids+=("$bg")
    bg_dir=
    for ((i = 0; i < 60000; i++)); do
        bg_dir=$(nj_job_dir_of "$SC" "$uuid")
        if [ -n "$bg_dir" ]; then kill -STOP "$bg"; return 0; fi
        kill -0 "$bg" 2>/dev/null || return 1
        sleep 0.01
    done
    return 1
}

###########################################################################
if want 1; then
section "1. two domains whose UUIDs share their first 8 hex digits"
hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
p8=$(hex 4)
uA=$p8-$(hex 2)-4$(hex 2 | cut -c2-)-8$(hex 2 | cut -c2-)-$(hex 6)
uB=$p8-$(hex 2)-4$(hex 2 | cut -c2-)-9$(hex 2 | cut -c2-)-$(hex 6)
dA=$(nj_unique_name uuidA) dB=$(nj_unique_name uuidB)
NJ_DOMAIN_UUID=$uA nj_domain_create "$dA" vda:qcow2:8M
NJ_DOMAIN_UUID=$uB nj_domain_create "$dB" vda:qcow2:8M
check test "$(nj_virsh domuuid "$dA")" = "$uA"
check test "$(nj_virsh domuuid "$dB")" = "$uB"
nj_guest_write "$dA" vda 0x11 0 1M
nj_guest_write "$dB" vda 0x21 1M 1M
bk_ok a1 "$dA" -l full; snap "$dA" "$id" vda
bk_ok b1 "$dB" -l full; snap "$dB" "$id" vda

# one_stopped X Y: X's backup is stopped in its job while Y's runs to the
# end; X's directory survives Y's run, then X goes on and commits.
one_stopped() {
    local x=$1 y=$2 n=$3 xdir
    nj_guest_write "$x" vda 0x3$n $((n * 64))k 64k
    nj_guest_write "$y" vda 0x4$n $((n * 64 + 2048))k 64k
    if ! start_stopped sx$n "$x" -l inc; then
        fail "the backup of '$x' ended before its job directory was seen: $(cat "$T/sx$n.err")"
        return 0
    fi
    xdir=$bg_dir
    snap "$x" pending vda
    unset 'POINTS[${#POINTS[@]}-1]'
    bk_ok sy$n "$y" -l inc
    last[$y]=$id
    snap "$y" "$id" vda
    if [ -d "$xdir" ]; then ok; else fail "the backup of '$y' removed the job directory of '$x' ($xdir): $(cat "$T/sy$n.err")"; fi
    if grep -q "removed" "$T/sy$n.err"; then fail "the backup of '$y' removed something: $(cat "$T/sy$n.err")"; else ok; fi
    kill -CONT "$bg"
    if wait "$bg"; then
        ok
        id=$(jf sx$n .id)
        last[$x]=$id
        mv "$T/truth-pending-vda.raw" "$T/truth-$id-vda.raw"
        POINTS+=("$x|$id|vda")
    else
        fail "the stopped backup of '$x' failed after the backup of '$y': $(cat "$T/sx$n.err")"
    fi
    check test ! -e "$xdir"
}
declare -A last=()
one_stopped "$dA" "$dB" 1
one_stopped "$dB" "$dA" 2

# SIGKILL in A's job: its directory (and job, once it began) stay; B's
# backups run and leave them; A's next backup removes its own.
nj_guest_write "$dA" vda 0x51 3M 64k
if start_stopped kill "$dA" -l inc; then
    kdir=$bg_dir
    kill -9 "$bg"
    wait "$bg" 2>/dev/null || true
    cp "$kdir/owner" "$T/owner-A"
    # wait until libvirt has the job of the killed run or is sure not to
    # (the killed run may have been stopped before it asked for it)
    echo "   the SIGKILLed run left $(basename "$kdir")$(nj_has_job "$dA" && echo ' and its job')" >&2
    nj_guest_write "$dB" vda 0x52 5M 64k
    bk_ok b-after-kill "$dB" -l inc
    snap "$dB" "$id" vda
    if [ -d "$kdir" ]; then ok; else fail "the backup of '$dB' removed the stale job directory of '$dA'"; fi
    check test "$(jf b-after-kill .level)" = inc
    check test "$(jf b-after-kill .parent)" = "${last[$dB]}"
    # forged directories with A's name prefix: not provably A's
    pre=$(basename "$kdir")
    pre=${pre%-*-*}-
    mkdir "$SC/${pre}20990101T000000Z-0000000a" "$SC/${pre}20990101T000000Z-0000000b" \
        "$SC/${pre}20990101T000000Z-0000000c"
    sed 's/^store .*/store 0000000000000000000000000000000000000000000000000000000000000000/' \
        "$T/owner-A" >"$SC/${pre}20990101T000000Z-0000000a/owner"
    cp "$T/owner-A" "$T/owner-link-target"
    ln -s "$T/owner-link-target" "$SC/${pre}20990101T000000Z-0000000b/owner"
    nj_guest_write "$dA" vda 0x53 6M 64k
    bk_ok a-after-kill "$dA" -l inc
    snap "$dA" "$id" vda
    check grep -q "removed '$kdir' left by an interrupted run" "$T/a-after-kill.err"
    check test ! -e "$kdir"
    for x in a b c; do
        check test -d "$SC/${pre}20990101T000000Z-0000000$x"
        check grep -q "left '$SC/${pre}20990101T000000Z-0000000$x' alone" "$T/a-after-kill.err"
    done
    check test -f "$T/owner-link-target"
    rm -rf "$SC/${pre}"20990101T000000Z-*
    check test "$(jf a-after-kill .level)" = inc
    check test "$(jf a-after-kill .parent)" = "${last[$dA]}"
else
    fail "the backup of '$dA' to be killed ended before its job directory was seen: $(cat "$T/kill.err")"
fi
check test -z "$(ls -A "$SC")"
restore_all
POINTS=()
nj_domain_remove "$dA"
nj_domain_remove "$dB"
fi

###########################################################################
dM=$(nj_unique_name opts)
if want 2 || want 3; then
# (mounted before the domain starts: QEMU runs in a mount namespace of its
# own, which does not see mounts made later)
SM=$(mktemp -d /var/tmp/nj-h5m.XXXXXX)
cleanup_hooks+=("umount $(printf '%q' "$SM") 2>/dev/null; rmdir $(printf '%q' "$SM")")
mount -t tmpfs -o size=16m,mode=0711 nj-h5-scratch "$SM"
nj_domain_create "$dM" vda:qcow2:8M vdb:raw:8M:block
blk=$(nj_image_path "$dM" vdb)
check test -b "$blk"
check grep -q "<disk type='block'" <(nj_virsh dumpxml "$dM")
fi

if want 2; then
section "2. --max-age with the backup clock; 4. a block disk"
# the domain's backups are taken "in the future": after every real one
f0=$(($(date +%s) + 86400))
nj_guest_write "$dM" vda 0x11 0 1M
nj_guest_write "$dM" vdb 0x12 1M 1M
NIGHTJAR_FAKE_NOW=$f0 bk_ok m0 "$dM"
m0=$id; snap "$dM" "$m0" vda vdb
check test "$(jf m0 .level)" = full
check test "$(jf m0 '[.disks[] | .target + "=" + .level] | join(",")')" = "vda=full,vdb=full"
fin0=$("$R" list -s "$S" -d "$dM" --json | jq -r --arg id "$m0" '.[] | select(.id == $id) | .time')
check test "$fin0" -ge "$f0"
# just before the full is 2 days old: an inc
nj_guest_write "$dM" vda 0x13 2M 64k
nj_guest_write "$dM" vdb 0x14 3M 100k
NIGHTJAR_FAKE_NOW=$((fin0 + 2 * 86400 - 600)) bk_ok m1 "$dM" --max-age 2
m1=$id; snap "$dM" "$m1" vda vdb
check test "$(jf m1 .level)" = inc
check test "$(jf m1 .parent)" = "$m0"
check test "$(jf m1 '[.disks[] | .target + "=" + .level] | join(",")')" = "vda=inc,vdb=full"
# just after: a full, said on stderr
nj_guest_write "$dM" vda 0x15 4M 64k
NIGHTJAR_FAKE_NOW=$((fin0 + 2 * 86400 + 600)) bk_ok m2 "$dM" --max-age 2
m2=$id; snap "$dM" "$m2" vda vdb
check test "$(jf m2 .level)" = full
check test "$(jf m2 .parent)" = null
check grep -q "older than 2 days: full" "$T/m2.err"
fin2=$("$R" list -s "$S" -d "$dM" --json | jq -r --arg id "$m2" '.[] | select(.id == $id) | .time')
# --max-age 0: never, even 1000 days later
nj_guest_write "$dM" vda 0x16 5M 64k
nj_guest_write "$dM" vdb 0x17 0 4k
NIGHTJAR_FAKE_NOW=$((fin2 + 1000 * 86400)) bk_ok m3 "$dM" --max-age 0
m3=$id; snap "$dM" "$m3" vda vdb
check test "$(jf m3 .level)" = inc
check test "$(jf m3 .parent)" = "$m2"
# the default is 7 days: 1000 days after m2's full, a full
nj_guest_write "$dM" vda 0x18 6M 64k
NIGHTJAR_FAKE_NOW=$((fin2 + 1000 * 86400 + 60)) bk_ok m4 "$dM"
m4=$id; snap "$dM" "$m4" vda vdb
check test "$(jf m4 .level)" = full
check grep -q "older than 7 days: full" "$T/m4.err"
# 6 days later with the default: an inc of m4
nj_guest_write "$dM" vda 0x19 7M 64k
NIGHTJAR_FAKE_NOW=$((fin2 + 1006 * 86400)) bk_ok m5 "$dM"
m5=$id; snap "$dM" "$m5" vda vdb
check test "$(jf m5 .level)" = inc
check test "$(jf m5 .parent)" = "$m4"
check test "$("$R" list -s "$S" -d "$dM" --json | jq -r --arg id "$m5" '.[] | select(.id == $id) | [.disks[] | .target + "/" + .format] | join(",")')" = vda/qcow2,vdb/raw
fi

if want 3; then
section "3. --scratch-min against a tmpfs of known free space"
free=$(stat -f -c '%a * %S' "$SM")
free=$((free))
check test "$free" -gt 0
store_state() { (cd "$S" && find . -path ./locks -prune -o -print | LC_ALL=C sort); }
cps() { nj_virsh checkpoint-list --name "$dM" | sed '/^$/d' | LC_ALL=C sort; }
[ -e "$S/nightjar-store.json" ] || { NIGHTJAR_FAKE_NOW=$(($(date +%s) + 86400)) bk_ok s0 "$dM"; snap "$dM" "$id" vda vdb; }
before=$(store_state) cps_before=$(cps)
nj_guest_write "$dM" vda 0x21 1M 64k
rc=0
BK_SCRATCH=$SM bk sfail "$dM" --scratch-min $((free + 1)) || rc=$?
check test "$rc" -ne 0
if [ "$(wc -l <"$T/sfail.err")" -eq 1 ] &&
    grep -q "scratch directory '$SM' has .* free, at least .* is needed" "$T/sfail.err"; then ok; else
    fail "--scratch-min $((free + 1)) with $free free: $(cat "$T/sfail.err")"
fi
check test ! -s "$T/sfail.json"
check test "$(store_state)" = "$before"
check test "$(cps)" = "$cps_before"
check test -z "$(ls -A "$SM")"
if nj_has_job "$dM"; then fail "a job is left after the refused backup"; else ok; fi
# exactly what is free is enough
NIGHTJAR_FAKE_NOW=$(($(date +%s) + 2000 * 86400)) BK_SCRATCH=$SM bk_ok sok "$dM" --scratch-min "$free"
snap "$dM" "$id" vda vdb
check test -z "$(ls -A "$SM")"
echo "   tmpfs free: $free bytes; --scratch-min $((free + 1)) refused, $free accepted" >&2
fi

if want 2 || want 3; then
restore_all
"$R" verify -s "$S" >"$T/verify.out" 2>&1 || fail "verify: $(cat "$T/verify.out")"
nj_domain_remove "$dM"
# the loop device is detached (it may already serve someone else)
if losetup -n -O BACK-FILE "$blk" 2>/dev/null | grep -qF "$T/"; then
    fail "$blk is still attached to our image"
else ok; fi
fi

section "done"
echo "total $((SECONDS - t_start)) s" >&2
finish
