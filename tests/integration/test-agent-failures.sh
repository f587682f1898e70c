#!/bin/bash
# Failures around `nightjar-agent backup`, with a real libvirtd and QEMU.
#
#   1. SIGKILL in the middle of a backup (of a running domain, and of a
#      shut-off one that the agent started): nothing committed, the store
#      verifies, the next run ends the stale job, deletes the killed run's
#      checkpoint and job directory, and takes an incremental based on the
#      last *committed* backup.  SIGINT and SIGTERM: a one-line
#      "interrupted" error, the agent deletes its checkpoint and ends its
#      job itself; the next -l inc works.  Every write made before, during
#      or after an interrupted run is in the next backup.
#   2. Checkpoint metadata lost (undefine --checkpoints-metadata and define
#      again, on a shut-off domain): the agent redefines the chain from the
#      catalog and takes a real incremental.
#   3. A checkpoint bitmap removed behind libvirt's back (QMP
#      block-dirty-bitmap-remove; and with the checkpoint's metadata gone
#      too): that disk falls back to a full, said on stderr and in the JSON.
#   4. Clear one-line errors, non-zero exit, nothing in the store: unknown
#      domain or disk, a cdrom, a driver without backups, -l inc with no
#      earlier backup, a store that is a file, --quiesce with no guest
#      agent (--quiesce=try warns and goes on); -l inc --disk on a raw disk.
#   5. Two agents on one domain: the second is refused, the first commits.
#
# Every restore is compared byte for byte with lib-libvirt.sh's shadow of
# each disk, copied at each committed point.  A backup is made slow enough
# to be interrupted by writing fresh random data through the guest and
# asking for zstd level 19 with one thread, connection and request.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-libvirt.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp
nj_require_libvirt

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store
SLOW=(--threads 1 --requests 1 --connections 1 --zstd-level 19 --max-inflight 1048576)

# Background agents started here; killed (by pid) if the test dies first.
bg_pids=()
kill_bg() {
    local p
    for p in "${bg_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    return 0
}
cleanup_hooks=("kill_bg" "${cleanup_hooks[@]}")

# The scratch directory: the NBD socket path inside it must fit in 108
# bytes, so not under $T.  QEMU's user must traverse it.
SC=$(mktemp -d /var/tmp/njaf.XXXXXX)
chmod 0711 "$SC"
cleanup_hooks+=("rm -rf $(printf '%q' "$SC")")

# NJ_SECTIONS="1 4" runs only those sections (for debugging).
want() { [ -z "${NJ_SECTIONS:-}" ] || [[ " $NJ_SECTIONS " == *" $1 "* ]]; }
t_start=$SECONDS
t_sec=$SECONDS
section() {
    echo "== $* (previous section $((SECONDS - t_sec)) s)" >&2
    t_sec=$SECONDS
}

# bk NAME DOMAIN ARGS...: one backup into $S; JSON in $T/NAME.json, stderr
# in $T/NAME.err; the agent's exit status.
bk() {
    local name=$1 dom=$2 rc=0
    shift 2
    "$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json "$@" \
        >"$T/$name.json" 2>"$T/$name.err" || rc=$?
    return $rc
}
# bk_ok NAME DOMAIN ARGS...: bk that must succeed, and leave no job; sets
# $id to the new backup's id ("none" when it failed).
bk_ok() {
    id=none
    if ! bk "$@"; then
        fail "backup $1 of '$2' failed: $(cat "$T/$1.err")"
        return 0
    fi
    ok
    check_no_job "$2" "after backup $1"
    id=$(jq -r .id "$T/$1.json")
}
jf() { jq -r "$2" "$T/$1.json" 2>/dev/null; }

# bk_bg NAME DOMAIN ARGS...: bk in the background; the pid is in $bg.
bk_bg() {
    local name=$1 dom=$2
    shift 2
    "$A" backup -s "$S" -d "$dom" --scratch-dir "$SC" --json "$@" \
        >"$T/$name.json" 2>"$T/$name.err" &
    bg=$!
    bg_pids+=("$bg")
}

# snap DOMAIN LABEL TARGET...: the shadows, as the truth of point LABEL.
snap() {
    local dom=$1 l=$2 t
    shift 2
    for t; do cp --sparse=always "$(nj_shadow_path "$dom" "$t")" "$T/truth-$l-$t.raw"; done
}

# restores DOMAIN ID LABEL TARGET...: each TARGET of backup ID restores to
# exactly the truth of LABEL.
restores() {
    local dom=$1 id=$2 l=$3 t
    shift 3
    for t; do
        rm -f "$T/out.raw"
        if "$R" restore -s "$S" -d "$dom" -b "$id" --disk "$t" -o "$T/out.raw" 2>"$T/restore.err"; then
            if cmp -s "$T/out.raw" "$T/truth-$l-$t.raw"; then ok; else
                fail "restore of $t of backup $id (point $l) differs from the truth: $(cmp "$T/out.raw" "$T/truth-$l-$t.raw" 2>&1 | head -1)"
            fi
        else
            fail "restore of $t of backup $id (point $l): $(cat "$T/restore.err")"
        fi
    done
    rm -f "$T/out.raw"
}

count() { "$R" list -s "$S" -d "$1" --json | jq length; }
verify_store() {
    if "$R" verify -s "$S" >"$T/verify.out" 2>&1; then ok; else fail "verify: $(cat "$T/verify.out")"; fi
}
# Checkpoints libvirt knows (those of $S's checkpoint namespace once it has
# one), and those of committed backups, sorted.
cps() {
    local tag
    tag=$(committed_cps "$1" | head -n 1 | cut -d. -f2)
    nj_virsh checkpoint-list --name "$1" 2>/dev/null | sed '/^[[:space:]]*$/d' \
        | { if [ -n "$tag" ]; then grep -F "nightjar.$tag." || true; else cat; fi; } | LC_ALL=C sort
}
committed_cps() {
    "$R" list -s "$S" -d "$1" --json | jq -r '.[] | .checkpoint // empty' | LC_ALL=C sort
}
check_cps() {
    local have want
    have=$(cps "$1") want=$(committed_cps "$1")
    if [ "$have" = "$want" ]; then ok; else
        fail "checkpoints of '$1' ($2): libvirt has [$(echo $have)], committed backups use [$(echo $want)]"
    fi
}
# check_no_job DOMAIN WHAT: no job right now (an agent that has exited
# must not leave its pull job to end later).  When there is one, wait up
# to 10 s for it to end by itself, so that one failure does not cascade.
check_no_job() {
    local i
    if ! nj_has_job "$1"; then ok; return; fi
    for i in $(seq 100); do
        nj_has_job "$1" || break
        sleep 0.1
    done
    if nj_has_job "$1"; then fail "'$1' still has a job ($2)"; else
        fail "'$1' still had a job after the agent exited ($2); it ended by itself about $((i * 100)) ms later"
    fi
}
check_no_dirs() {
    if [ -z "$(ls -A "$SC")" ]; then ok; else fail "job directories left ($1): $(ls "$SC")"; fi
}
check_no_staging() {
    if [ -z "$(ls -A "$S/staging" 2>/dev/null)" ]; then ok; else fail "staging left ($1): $(ls "$S/staging")"; fi
}
# one_line FILE PATTERN: FILE is one line that matches PATTERN.
one_line() {
    if [ "$(wc -l <"$1")" -eq 1 ] && grep -Eq -- "$2" "$1"; then ok; else
        fail "expected one line matching '$2', got: $(cat "$1")"
    fi
}

# guest_random DOMAIN TARGET OFFSET LENGTH: the guest writes LENGTH fresh
# random bytes at OFFSET (one qemu-io "write -s FILE" through QEMU's block
# layer, so dirty bitmaps see it); the shadow gets the same bytes.  vdX
# disks only.
guest_random() {
    local dom=$1 t=$2 off len out f=$T/random.bin qdev
    off=$(nj_bytes "$3") && len=$(nj_bytes "$4") || return 1
    qdev=/machine/peripheral/ua-nj-$t/virtio-backend
    # base64 of random bytes: fresh every time (no dedup), and compressible
    # enough (6 bits a byte) that zstd really runs on it: the slow settings
    # then make a backup slow (nightjar skips compressing random data).
    { head -c "$len" /dev/urandom | base64 -w 0 || true; } | head -c "$len" >"$f"
    chmod 0644 "$f"
    out=$(nj_virsh qemu-monitor-command "$dom" --hmp "qemu-io -d $qdev \"write -s $f $off $len\"" 2>&1 \
        | tr -d '\r' | sed '/^[[:space:]]*$/d')
    [ -z "$out" ] || { echo "guest_random: $out" >&2; return 1; }
    out=$(nj_virsh qemu-monitor-command "$dom" --hmp "qemu-io -d $qdev \"flush\"" 2>&1 \
        | tr -d '\r' | sed '/^[[:space:]]*$/d')
    [ -z "$out" ] || { echo "guest_random: flush: $out" >&2; return 1; }
    dd if="$f" of="$(nj_shadow_path "$dom" "$t")" bs=1M oflag=seek_bytes seek="$off" \
        conv=notrunc status=none
    rm -f "$f"
    nj_guest_check "$dom" "$t" || { echo "guest_random: $t of '$dom' differs from its shadow" >&2; return 1; }
}


# wait_job DOMAIN PID: wait until the backup run PID has begun its pull job
# and its staging directory (the datapath is reading), then half a
# second more.  Sets $job_id.  1 if PID ended first.
wait_job() {
    local pid=$2 d i
    job_id=
    for i in $(seq 1200); do
        kill -0 "$pid" 2>/dev/null || return 1
        # job directories are nj-<key>-<first 8 of the UUID>-<id>
        d=$(nj_job_dir "$SC" "$1")
        if [ -n "$d" ]; then
            job_id=${d##*/}
            job_id=${job_id#nj-*-*-}
            if [ -S "$d/nbd.sock" ] && [ -d "$S/staging/$job_id" ]; then
                sleep 0.5
                kill -0 "$pid" 2>/dev/null
                return
            fi
        fi
        sleep 0.05
    done
    return 1
}

###########################################################################
if want 1; then
section "1. SIGKILL, SIGINT and SIGTERM in the middle of a backup"
d1=$(nj_unique_name kill)
nj_domain_create "$d1" vda:qcow2:64M vdb:qcow2:16M vdc:raw:8M
D1=(vda vdb vdc)
guest_random "$d1" vda 0 64M
nj_guest_write "$d1" vdb 0x31 0 4M
nj_guest_write "$d1" vdc 0x32 1M 2M
bk_ok k1 "$d1" -l full
k1=$id
snap "$d1" k1 "${D1[@]}"
check test "$(jf k1 .level)" = full

nj_guest_write "$d1" vda 0x41 8M 1M
nj_guest_zero "$d1" vda 20M 128k
nj_guest_discard "$d1" vdb 1M 1M
nj_guest_write "$d1" vdc 0x42 0 64k
bk_ok k2 "$d1" -l auto
k2=$id
snap "$d1" k2 "${D1[@]}"
check test "$(jf k2 .level)" = inc
check test "$(jf k2 .parent)" = "$k1"

# Writes between the committed backup and the killed one, then 48 MiB of
# fresh random data that the killed run reads slowly.
nj_guest_write "$d1" vda 0x51 40M 256k
nj_guest_write "$d1" vdb 0x52 8M 512k
nj_guest_zero "$d1" vda 0 64k
guest_random "$d1" vda 1M 48M
bk_bg kill "$d1" -l auto "${SLOW[@]}"
pid=$bg
if wait_job "$d1" "$pid"; then
    ok
    # A write during the job: after the killed run's checkpoint.
    nj_guest_write "$d1" vdb 0x53 12M 64k
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    killed_cp=$(comm -23 <(cps "$d1") <(committed_cps "$d1"))
    check test -n "$killed_cp"
    check test "$killed_cp" = "$(jf k1 .checkpoint | sed "s/\.$k1\$/.$job_id/")"
    # What SIGKILL leaves: the job, its directory, its checkpoint, staging.
    if nj_has_job "$d1"; then ok; else fail "no job left by the SIGKILLed run (the test proves nothing)"; fi
    check test "$(nj_job_dir "$SC" "$d1")" != ""
    check test "$(basename "$(nj_job_dir "$SC" "$d1")")" = "$(basename "$(compgen -G "$SC/nj-*-$job_id")")"
    check test -d "$S/staging/$job_id"
else
    fail "the slow backup ended before it could be killed: $(cat "$T/kill.err")"
    wait "$pid" 2>/dev/null || true
    killed_cp=
fi
check test "$(count "$d1")" -eq 2
verify_store
nj_guest_write "$d1" vda 0x54 60M 1M
nj_guest_write "$d1" vdc 0x55 4M 64k

bk_ok k3 "$d1" -l auto
k3=$id
snap "$d1" k3 "${D1[@]}"
check test "$(jf k3 .level)" = inc
check test "$(jf k3 .parent)" = "$k2"
check grep -q "ended a backup job" "$T/k3.err"
check grep -q "deleted checkpoint '$killed_cp'" "$T/k3.err"
check grep -q "removed '.*' left by an interrupted run" "$T/k3.err"
check_cps "$d1" "after the run that follows SIGKILL"
check_no_job "$d1" "after the run that follows SIGKILL"
check_no_dirs "after the run that follows SIGKILL"
check_no_staging "after the run that follows SIGKILL"
restores "$d1" "$k1" k1 "${D1[@]}"
restores "$d1" "$k2" k2 "${D1[@]}"
restores "$d1" "$k3" k3 "${D1[@]}"
verify_store

# SIGINT, then SIGTERM: the agent cleans up itself.
last=$k3
n=3
for sig in INT TERM; do
    n=$((n + 1))
    nj_guest_write "$d1" vdb 0x6$n 2M 128k
    guest_random "$d1" vda $(( (n % 2) * 16 ))M 48M
    bk_bg sig$sig "$d1" -l inc "${SLOW[@]}"
    pid=$bg
    if wait_job "$d1" "$pid"; then
        ok
        check test "$(comm -23 <(cps "$d1") <(committed_cps "$d1") | wc -l)" -eq 1
        nj_guest_write "$d1" vdc 0x7$n 6M 64k
        t0=$(date +%s.%N)
        kill -"$sig" "$pid"
        rc=0
        wait "$pid" || rc=$?
        t1=$(date +%s.%N)
        echo "   SIG$sig: the agent exited $rc after $(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }") s" >&2
        check test "$rc" -eq 1
        one_line "$T/sig$sig.err" "^nightjar-agent: .*interrupted"
        check test ! -s "$T/sig$sig.json"
    else
        fail "the slow backup ended before SIG$sig: $(cat "$T/sig$sig.err")"
        wait "$pid" 2>/dev/null || true
    fi
    check_cps "$d1" "after SIG$sig"
    check_no_job "$d1" "after SIG$sig"
    check_no_dirs "after SIG$sig"
    check_no_staging "after SIG$sig"
    check test "$(count "$d1")" -eq $((n - 1))
    verify_store
    nj_guest_write "$d1" vda 0x7$n 30M 64k
    bk_ok k$n "$d1" -l inc
    snap "$d1" k$n "${D1[@]}"
    check test "$(jf k$n .level)" = inc
    check test "$(jf k$n .parent)" = "$last"
    check test "$(wc -c <"$T/k$n.err")" -eq 0
    restores "$d1" "$id" k$n "${D1[@]}"
    check_cps "$d1" "after the inc that follows SIG$sig"
    last=$id
done

# SIGKILL of an agent that started a shut-off domain: autodestroy ends
# QEMU and the job with it; the checkpoint stays until the next run.
guest_random "$d1" vda 8M 48M
nj_guest_write "$d1" vdb 0x66 0 64k
nj_virsh destroy "$d1" >/dev/null
bk_bg killoff "$d1" -l auto "${SLOW[@]}"
pid=$bg
if wait_job "$d1" "$pid"; then
    ok
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        [ "$(nj_virsh domstate "$d1")" = "shut off" ] && break
        sleep 0.1
    done
    check test "$(nj_virsh domstate "$d1")" = "shut off"
    killed_cp=$(comm -23 <(cps "$d1") <(committed_cps "$d1"))
    check test -n "$killed_cp"
else
    fail "the slow backup of the shut-off domain ended before it could be killed: $(cat "$T/killoff.err")"
    wait "$pid" 2>/dev/null || true
fi
check test "$(count "$d1")" -eq 5
bk_ok k6 "$d1" -l auto
snap "$d1" k6 "${D1[@]}"
check test "$(jf k6 .level)" = inc
check test "$(jf k6 .parent)" = "$last"
[ -z "$killed_cp" ] || check grep -q "deleted checkpoint '$killed_cp'" "$T/k6.err"
check test "$(nj_virsh domstate "$d1")" = "shut off"
restores "$d1" "$id" k6 "${D1[@]}"
check_cps "$d1" "after the run that follows SIGKILL of a shut-off domain"
check_no_dirs "after the run that follows SIGKILL of a shut-off domain"
nj_domain_remove "$d1"
fi

###########################################################################
if want 2; then
section "2. checkpoint metadata lost (undefine --checkpoints-metadata, define)"
d2=$(nj_unique_name meta)
nj_domain_create "$d2" vda:qcow2:32M vdb:qcow2:16M vdc:raw:4M
D2=(vda vdb vdc)
nj_guest_write "$d2" vda 0x11 0 4M
nj_guest_write "$d2" vdb 0x12 1M 1M
nj_guest_write "$d2" vdc 0x13 0 1M
bk_ok m1 "$d2" -l full
m1=$id
snap "$d2" m1 "${D2[@]}"
nj_guest_write "$d2" vda 0x14 16M 64k
nj_guest_zero "$d2" vdb 1M 64k
bk_ok m2 "$d2" -l inc
m2=$id
snap "$d2" m2 "${D2[@]}"
last=$m2

# lose_metadata DOMAIN: shut off, undefine --checkpoints-metadata, define
# the same XML again, start paused.
lose_metadata() {
    nj_virsh destroy "$1" >/dev/null
    nj_virsh dumpxml --inactive "$1" >"$T/redefine.xml"
    nj_virsh undefine --checkpoints-metadata "$1" >/dev/null
    nj_virsh define "$T/redefine.xml" >/dev/null
    check test -z "$(cps "$1")"
    nj_virsh start --paused "$1" >/dev/null
}
r=0
for round in shutoff running; do
    r=$((r + 1))
    # writes before the metadata is lost, and after
    nj_guest_write "$d2" vda 0x2$r 8M 1M
    nj_guest_write "$d2" vdb 0x3$r 4M 64k
    lose_metadata "$d2"
    nj_guest_write "$d2" vda 0x4$r 9M 64k
    nj_guest_discard "$d2" vda 0 64k
    nj_guest_write "$d2" vdc 0x5$r 2M 4k
    [ "$round" = running ] || nj_virsh destroy "$d2" >/dev/null
    bk_ok m-$round "$d2" -l inc
    snap "$d2" m-$round "${D2[@]}"
    check grep -q "redefined" "$T/m-$round.err"
    check test "$(jf m-$round .level)" = inc
    check test "$(jf m-$round .parent)" = "$last"
    check test "$(jf m-$round '.disks[] | select(.target == "vda") | .level')" = inc
    check test "$(jf m-$round '.disks[] | select(.target == "vdb") | .level')" = inc
    # a real incremental: the dirty blocks, not the disks
    check test "$(jf m-$round '.disks[] | select(.target == "vda") | .bytes_read')" -le $((2 * 1024 * 1024))
    check test "$(jf m-$round '.disks[] | select(.target == "vdb") | .bytes_read')" -le $((256 * 1024))
    if [ "$round" = shutoff ]; then
        check test "$(nj_virsh domstate "$d2")" = "shut off"
        nj_virsh start --paused "$d2" >/dev/null
    fi
    check_cps "$d2" "after redefinition ($round)"
    restores "$d2" "$m1" m1 "${D2[@]}"
    restores "$d2" "$id" m-$round "${D2[@]}"
    last=$id
done
nj_domain_remove "$d2"
fi

###########################################################################
if want 3; then
section "3. a checkpoint bitmap removed behind libvirt's back"
d3=$(nj_unique_name bitmap)
nj_domain_create "$d3" vda:qcow2:32M vdb:qcow2:16M
D3=(vda vdb)
nj_guest_write "$d3" vda 0x11 0 2M
nj_guest_write "$d3" vdb 0x12 0 1M
bk_ok b1 "$d3" -l full
b1=$id
snap "$d3" b1 "${D3[@]}"
nj_guest_write "$d3" vda 0x13 4M 64k
nj_guest_write "$d3" vdb 0x14 4M 64k
bk_ok b2 "$d3" -l inc
b2=$id
snap "$d3" b2 "${D3[@]}"

# remove_bitmap DOMAIN TARGET BITMAP: QMP block-dirty-bitmap-remove on
# the qcow2 node of TARGET's image.
remove_bitmap() {
    local node out
    node=$(nj_virsh qemu-monitor-command "$1" '{"execute":"query-named-block-nodes","arguments":{"flat":true}}' \
        | jq -r --arg f "$(nj_image_path "$1" "$2")" --arg b "$3" \
            '.return[] | select(.drv == "qcow2" and .file == $f and any(.["dirty-bitmaps"][]?; .name == $b)) | .["node-name"]')
    [ "$(printf '%s\n' "$node" | sed '/^$/d' | wc -l)" -eq 1 ] \
        || { fail "no single qcow2 node of $2 with bitmap $3: '$node'"; return 1; }
    out=$(nj_virsh qemu-monitor-command "$1" \
        "{\"execute\":\"block-dirty-bitmap-remove\",\"arguments\":{\"node\":\"$node\",\"name\":\"$3\"}}")
    [ "$(printf '%s' "$out" | jq -c .return)" = "{}" ] || { fail "block-dirty-bitmap-remove: $out"; return 1; }
}

# 3a. the bitmap of the last checkpoint is gone on vda; libvirt still
# lists the checkpoint.
nj_guest_write "$d3" vda 0x15 8M 64k
nj_guest_write "$d3" vdb 0x16 8M 64k
remove_bitmap "$d3" vda "$(jf b2 .checkpoint)"
nj_guest_write "$d3" vda 0x17 12M 64k
rc=0
bk b3 "$d3" -l auto || rc=$?
if [ "$rc" -eq 0 ]; then
    ok
    b3=$(jf b3 .id)
    snap "$d3" b3 "${D3[@]}"
    check test "$(jf b3 '.disks[] | select(.target == "vda") | .level')" = full
    check grep -q "vda.*full" "$T/b3.err"
    echo "   3a: level $(jf b3 .level), vdb $(jf b3 '.disks[] | select(.target == "vdb") | .level'); stderr: $(cat "$T/b3.err")" >&2
    restores "$d3" "$b3" b3 "${D3[@]}"
else
    fail "3a: backup after a bitmap was removed failed (exit $rc): $(cat "$T/b3.err")"
    check_no_job "$d3" "after the failed backup"
    check_cps "$d3" "after the failed backup"
    # recover as a user would
    bk_ok b3 "$d3" -l full
    b3=$id
    snap "$d3" b3 "${D3[@]}"
fi
check_cps "$d3" "after the fallback (3a)"
check_no_dirs "after the fallback (3a)"
nj_guest_write "$d3" vda 0x18 16M 64k
nj_guest_write "$d3" vdb 0x19 12M 64k
bk_ok b4 "$d3" -l inc
b4=$id
snap "$d3" b4 "${D3[@]}"
check test "$(jf b4 .level)" = inc
check test "$(jf b4 .parent)" = "$b3"
check test "$(jf b4 '[.disks[].level] | unique | join(",")')" = inc
restores "$d3" "$b4" b4 "${D3[@]}"
restores "$d3" "$b2" b2 "${D3[@]}"

# 3b. the checkpoint's metadata is gone (checkpoint-delete --metadata) and
# so is its bitmap on vda: redefinition from the catalog cannot validate.
nj_guest_write "$d3" vda 0x1a 20M 64k
nj_guest_write "$d3" vdb 0x1b 14M 64k
cp4=$(jf b4 .checkpoint)
nj_virsh checkpoint-delete --metadata "$d3" "$cp4" >/dev/null
remove_bitmap "$d3" vda "$cp4"
rc=0
bk b5 "$d3" -l inc || rc=$?
if [ "$rc" -eq 0 ]; then
    ok
    b5=$(jf b5 .id)
    snap "$d3" b5 "${D3[@]}"
    check test "$(jf b5 '.disks[] | select(.target == "vda") | .level')" = full
    check grep -q "full" "$T/b5.err"
    echo "   3b: level $(jf b5 .level), vdb $(jf b5 '.disks[] | select(.target == "vdb") | .level'); stderr: $(cat "$T/b5.err")" >&2
    restores "$d3" "$b5" b5 "${D3[@]}"
else
    fail "3b: backup after checkpoint metadata and bitmap were removed failed (exit $rc): $(cat "$T/b5.err")"
fi
check_no_job "$d3" "3b"
check_no_dirs "3b"
restores "$d3" "$b1" b1 "${D3[@]}"
verify_store
nj_domain_remove "$d3"
fi

###########################################################################
if want 4; then
section "4. clear errors, nothing written"
d4=$(nj_unique_name err)
nj_domain_create "$d4" vda:qcow2:16M vdb:raw:4M sda:raw:1M:cdrom
nj_guest_write "$d4" vda 0x21 0 1M
nj_guest_write "$d4" vdb 0x22 0 1M
# (the store exists when sections 1-3 ran; seed it when they did not)
if [ ! -e "$S/nightjar-store.json" ]; then
    head -c 1M /dev/urandom >"$T/seed.raw"
    "$A" import -s "$S" -d seed --disk vda "$T/seed.raw" >/dev/null
fi
store_state() { (cd "$S" && find . -path ./locks -prune -o -print | LC_ALL=C sort); }
before=$(store_state)
# expect_clean PATTERN ARGS...: `nightjar-agent backup ARGS` fails with one
# line matching PATTERN, and leaves the store, $d4's checkpoints and jobs
# and the scratch directory as they were.
expect_clean() {
    local pat=$1
    shift
    local err rc=0
    err=$("$A" backup --scratch-dir "$SC" "$@" 2>&1 >/dev/null) || rc=$?
    # notes about skipped disks may come first; the error is one line
    err=$(printf '%s\n' "$err" | grep -v "^nightjar-agent: .*: disk '[^']*' skipped: " || true)
    if [ "$rc" -eq 0 ]; then
        fail "expected failure: backup $*"
    elif [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then
        fail "expected one error line from: backup $* -- got: $err"
    elif ! printf '%s' "$err" | grep -q -- "$pat"; then
        fail "error of 'backup $*' does not match '$pat': $err"
    else
        ok
    fi
    if [ "$(store_state)" = "$before" ]; then ok; else
        fail "the store changed after: $*: $(diff <(echo "$before") <(store_state) | tr '\n' ' ')"
    fi
    check test -z "$(cps "$d4")"
    check_no_job "$d4" "after: $*"
    check_no_dirs "after: $*"
}
missing=$(nj_unique_name missing)
expect_clean "$missing" -s "$S" -d "$missing"
expect_clean "vdz" -s "$S" -d "$d4" --disk vdz
expect_clean "sda.*\(cdrom\|CD\)" -s "$S" -d "$d4" --disk sda
expect_clean "sda.*\(cdrom\|CD\)" -s "$S" -d "$d4" --disk vda --disk sda
expect_clean "no earlier" -s "$S" -d "$d4" -l inc
expect_clean "no earlier" -s "$S" -d "$d4" -l diff
expect_clean "support\|backup" -c test:///default -s "$S" -d test
touch "$T/afile"
expect_clean "afile" -s "$T/afile" -d "$d4"
# --quiesce needs the guest agent of a running guest
nj_virsh resume "$d4" >/dev/null
expect_clean "guest agent" -s "$S" -d "$d4" --quiesce
expect_clean "guest agent" -s "$S" -d "$d4" --quiesce -l full
check test "$(count "$d4")" -eq 0

bk_ok e1 "$d4" --quiesce=try
e1=$id
nj_virsh suspend "$d4" >/dev/null
check grep -q "warning: .*guest agent" "$T/e1.err"
check_no_dirs "after --quiesce=try"
check test "$(jf e1 .level)" = full
check test "$(jf e1 '[.disks[].target] | join(",")')" = vda,vdb
snap "$d4" e1 vda vdb
restores "$d4" "$e1" e1 vda vdb

# -l inc naming only the raw disk.  A raw disk has no bitmap and is read
# whole every time, so this may be a full of that disk (the JSON says so)
# or a clear failure; either way nothing may be lost or left behind.
nj_guest_write "$d4" vda 0x23 2M 64k
nj_guest_write "$d4" vdb 0x24 2M 64k
rc=0
bk e2 "$d4" -l inc --disk vdb || rc=$?
if [ "$rc" -eq 0 ]; then
    ok
    e2=$(jf e2 .id)
    check test "$(jf e2 '[.disks[].target] | join(",")')" = vdb
    check test "$(jf e2 '.disks[0].level')" = full
    echo "   -l inc --disk vdb (raw): level $(jf e2 .level), parent $(jf e2 .parent), stderr: $(cat "$T/e2.err")" >&2
    snap "$d4" e2 vdb
    restores "$d4" "$e2" e2 vdb
else
    echo "   -l inc --disk vdb (raw) fails: $(cat "$T/e2.err")" >&2
    check test "$(wc -l <"$T/e2.err")" -eq 1
    check_no_job "$d4" "-l inc --disk raw"
fi
check_cps "$d4" "after -l inc --disk vdb"
# and the whole domain afterwards
nj_guest_write "$d4" vda 0x25 4M 64k
bk_ok e3 "$d4" -l inc
e3=$id
echo "   the next -l inc: level $(jf e3 .level), disks $(jf e3 '[.disks[] | .target + ":" + .level] | join(",")')" >&2
snap "$d4" e3 vda vdb
restores "$d4" "$e3" e3 vda vdb
check_cps "$d4" "after the next -l inc"
nj_domain_remove "$d4"
fi

###########################################################################
if want 5; then
section "5. two agents on one domain"
d5=$(nj_unique_name two)
nj_domain_create "$d5" vda:qcow2:32M vdb:qcow2:8M
nj_guest_write "$d5" vdb 0x31 0 1M
bk_ok f1 "$d5" -l full
f1=$id
last=$f1
# The second agent writes into the same store (the store's domain lock
# refuses it), then into another store: libvirt runs one backup job per
# domain, so it must be refused too, and must not end the first's job.
for variant in same-store other-store; do
    guest_random "$d5" vda 0 32M
    nj_guest_write "$d5" vdb 0x32 2M 64k
    bk_bg first-$variant "$d5" -l inc "${SLOW[@]}"
    pid=$bg
    if wait_job "$d5" "$pid"; then
        ok
        if [ "$variant" = same-store ]; then
            expect_fail "already being backed up" "$A" backup -s "$S" -d "$d5" --scratch-dir "$SC" -l inc
        else
            rc=0
            "$A" backup -s "$T/store2" -d "$d5" --scratch-dir "$SC" -l full \
                >/dev/null 2>"$T/second.err" || rc=$?
            if [ "$rc" -ne 0 ] && [ "$(wc -l <"$T/second.err")" -eq 1 ]; then ok; else
                fail "a second agent with another store ran during the first (exit $rc): $(cat "$T/second.err")"
            fi
        fi
        if kill -0 "$pid" 2>/dev/null && nj_has_job "$d5"; then ok; else
            fail "the first agent's job did not survive the second agent ($variant)"
        fi
    else
        fail "the first backup ended before the second could start: $(cat "$T/first-$variant.err")"
    fi
    rc=0
    wait "$pid" || rc=$?
    if [ "$rc" -eq 0 ]; then
        ok
        id=$(jf first-$variant .id)
        snap "$d5" f-$variant vda vdb
        check test "$(jf first-$variant .level)" = inc
        check test "$(jf first-$variant .parent)" = "$last"
        restores "$d5" "$id" f-$variant vda vdb
        last=$id
    else
        fail "the first agent failed ($variant, exit $rc): $(cat "$T/first-$variant.err")"
    fi
    check_cps "$d5" "after two agents ($variant)"
    check_no_job "$d5" "after two agents ($variant)"
    check_no_dirs "after two agents ($variant)"
done
verify_store
nj_domain_remove "$d5"
fi

section "done"
echo "total $((SECONDS - t_start)) s" >&2
finish
