#!/bin/bash
# nightjar-restore against a hostile neighbourhood: an output directory
# shared with other users (symlinks planted at the output name), hostile
# names in the store, a damaged store, signals in the middle of a restore,
# and the umask.  No libvirt needed.
#
#   1. qemu-img and qemu-nbd are only ever given a path inside a fresh
#      private directory (0700, ours, empty when qemu-img runs, next to the
#      output), and the final name appears only at the end: wrappers first
#      in PATH record what they are given and check it.  A race cannot be
#      won on purpose, so the invariant that makes it harmless is checked.
#   2. a symlink at the output: refused without --force, replaced (not
#      followed) with --force, its target's content and mtime untouched,
#      also when the restore then fails on a damaged chunk; a failed
#      --force over a regular file leaves that file as it was.
#   3. images are 0600 under umask 022 and 0, --mode sets the mode.
#   4. SIGTERM and SIGINT in the middle of a restore: non-zero exit
#      (128 + signal), one line, no output, no temporary directory, no
#      qemu-nbd left running.
#   5. list and error messages escape control characters from the store.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-nbd nbdkit jq cmp stat env
R=$NIGHTJAR_RESTORE

real_img=$(command -v qemu-img)
real_nbd=$(command -v qemu-nbd)
H=$T/hook
mkdir "$T/bin" "$H"
# The wrappers record one line per call: the image path, its directory's
# resolved path, mode, owner and type, how many entries the directory had,
# and what was at the final name (NJ_HOOK_FINAL) at that moment.
cat > "$T/bin/record" <<'EOF'
#!/bin/bash
tool=$1; shift
img=
prev=
for a in "$@"; do [ "$prev" = "--" ] && img=$a; prev=$a; done
d=$(dirname -- "$img")
final=$(stat -c %F -- "$NJ_HOOK_FINAL" 2>/dev/null || echo absent)
printf '%s|%s|%s|%s|%s|%s\n' "$tool" "$img" "$(readlink -f -- "$d")" \
    "$(stat -L -c '%a %u %F' -- "$d")" "$(ls -A -- "$d" | wc -l)" "$final" \
    >> "$NJ_HOOK/calls"
EOF
cat > "$T/bin/qemu-img" <<EOF
#!/bin/bash
[ "\${1-}" = create ] && "$T/bin/record" qemu-img "\$@"
exec "$real_img" "\$@"
EOF
# NJ_HOOK_NBD=block: serve with nbdkit instead, whose first write blocks
# forever after leaving a mark: a restore stopped mid-write, for certain.
# NJ_HOOK_NBD=fail: nbdkit too, failing every write.
cat > "$T/bin/qemu-nbd" <<EOF
#!/bin/bash
"$T/bin/record" qemu-nbd "\$@"
echo \$\$ > "\$NJ_HOOK/nbd.pid"
echo \$\$ >> "\$NJ_HOOK/nbd.pids"
if [ "\${NJ_HOOK_NBD-}" = block ]; then
    exec nbdkit -f eval get_size="echo \$NJ_HOOK_SIZE" \\
        pread='head -c \$3 /dev/zero' \\
        pwrite="echo \\\$\\\$ >> '\$NJ_HOOK/blocked.pids'; touch '\$NJ_HOOK/written'; exec sleep infinity"
fi
# NJ_HOOK_NBD=fail: a server whose writes all fail with EIO.
if [ "\${NJ_HOOK_NBD-}" = fail ]; then
    exec nbdkit -f eval get_size="echo \$NJ_HOOK_SIZE" \\
        pread='head -c \$3 /dev/zero' pwrite='echo EIO >&2; exit 1'
fi
exec "$real_nbd" "\$@"
EOF
chmod +x "$T/bin/record" "$T/bin/qemu-img" "$T/bin/qemu-nbd"
# Whatever a failing run leaves blocked is killed on exit: only processes
# that still carry this test's NJ_HOOK in their environment.
kill_ours() {
    local p
    for p in $(cat "$H"/nbd.pids "$H"/blocked.pids 2>/dev/null); do
        { tr '\0' '\n' < /proc/$p/environ; } 2>/dev/null |
            grep -qx "NJ_HOOK=$H" &&
            kill -KILL $p 2>/dev/null
    done
    return 0
}
cleanup_hooks+=(kill_ours)
export NJ_HOOK=$H NJ_HOOK_FINAL=/nonexistent
export PATH=$T/bin:$PATH

S=$T/store
mkdir "$T/truth"
size=$((6 * 1048576 + 4097))
"$NJ_TESTGEN" --seed 3 --size $size --incs 1 "$S" "$T/truth" > "$T/ids"
last=$(tail -n1 "$T/ids")
truth=$T/truth/$last.raw
# A shared directory, as /tmp is: everyone may create, sticky.
P=$T/shared
mkdir -m 1777 "$P"
restore() { "$R" restore -s "$S" -d testgen --disk vda "$@"; }
no_temp() { ! compgen -G "$1/.nightjar-restore-*" > /dev/null; }
has_temp_image() { compgen -G "$1/.nightjar-restore-*/image" > /dev/null; }
uid=$(id -u)

# every recorded call: a fresh private directory next to the output
check_calls() { # OUTDIR EXPECTED-FINAL-TYPE
    local tool img dir st n final
    local outdir
    outdir=$(readlink -f -- "$1")
    [ -s "$H/calls" ] || { fail "no qemu-img/qemu-nbd call recorded"; return; }
    while IFS='|' read -r tool img dir st n final; do
        case $dir in
        "$outdir"/.nightjar-restore-*) ok ;;
        *) fail "$tool got '$img' in '$dir', not a private directory in '$outdir'" ;;
        esac
        check test "$st" = "700 $uid directory"
        check test "$final" = "$2"
        if [ "$tool" = qemu-img ]; then check test "$n" -eq 0; fi
    done < "$H/calls"
    rm -f "$H/calls"
}

# --- 1. what qemu-img and qemu-nbd are given ---
NJ_HOOK_FINAL=$P/new.qcow2 restore -f qcow2 -o "$P/new.qcow2"
check_calls "$P" absent
check test "$(grep -c . <<< "$(ls "$P")")" -eq 1
check qemu-img compare -q -f qcow2 -F raw "$P/new.qcow2" "$truth"
check no_temp "$P"

# --- 2. symlinks planted at the output name ---
echo "precious" > "$T/target"
touch -d '2001-02-03 04:05:06' "$T/target"
target_sum() { stat -c '%s %Y %i' "$T/target"; md5sum < "$T/target"; }
before=$(target_sum)
ln -s "$T/target" "$P/link"
expect_fail "exists (a symbolic link); use --force" restore -o "$P/link"
expect_fail "exists (a symbolic link); use --force" restore -o "$P/link" -f qcow2
check test "$(target_sum)" = "$before"
check test -L "$P/link"
# dangling: qemu-img would have created the target
ln -s "$T/created-by-restore" "$P/dangling"
expect_fail "exists (a symbolic link); use --force" restore -o "$P/dangling" -f qcow2
check test ! -e "$T/created-by-restore"
expect_fail "exists (a symbolic link); use --force" restore -o "$P/dangling"
check test ! -e "$T/created-by-restore"

# --force replaces the link itself, raw and qcow2
NJ_HOOK_FINAL=$P/link restore -f qcow2 -o "$P/link" --force
check_calls "$P" "symbolic link"
check test ! -L "$P/link"
check qemu-img compare -q -f qcow2 -F raw "$P/link" "$truth"
check test "$(target_sum)" = "$before"
rm "$P/link"; ln -s "$T/target" "$P/link"
restore -o "$P/link" --force
check test ! -L "$P/link"
check cmp "$P/link" "$truth"
check test "$(target_sum)" = "$before"
check no_temp "$P"

# the same with a damaged chunk: the restore fails, nothing changes
D=$T/damaged
cp -a "$S" "$D"
find "$D/chunks" -type f | sort | tail -n 3 | while read -r c; do
    printf 'garbage!' | dd of="$c" bs=1 seek=20 conv=notrunc status=none
done
restore_d() { "$R" restore -s "$D" -d testgen --disk vda "$@"; }
rm "$P/link"; ln -s "$T/target" "$P/link"
expect_fail "nothing written to" restore_d -o "$P/link" --force
expect_fail "nothing written to" restore_d -o "$P/link" --force -f qcow2
check test -L "$P/link"
check test "$(readlink "$P/link")" = "$T/target"
check test "$(target_sum)" = "$before"
echo "old image" > "$P/old.raw"
expect_fail "nothing written to" restore_d -o "$P/old.raw" --force
check grep -qx "old image" "$P/old.raw"
expect_fail "nothing written to" restore_d -o "$P/fresh.raw"
expect_fail "nothing written to" restore_d -o "$P/fresh.qcow2" -f qcow2
check test ! -e "$P/fresh.raw"
check test ! -e "$P/fresh.qcow2"
check no_temp "$P"
rm -f "$P"/* "$H/calls"

# --- 3. modes, whatever the umask ---
for u in 022 0; do
    (umask $u; restore -o "$T/m$u.raw"; restore -o "$T/m$u.qcow2" -f qcow2)
    check test "$(stat -c %a "$T/m$u.raw")" = 600
    check test "$(stat -c %a "$T/m$u.qcow2")" = 600
done
(umask 077; restore -o "$T/m640.raw" --mode 0640; restore -o "$T/m640.qcow2" -f qcow2 --mode 640)
check test "$(stat -c %a "$T/m640.raw")" = 640
check test "$(stat -c %a "$T/m640.qcow2")" = 640
check cmp "$T/m640.raw" "$truth"
for bad in 9 01777 rw-r----- ""; do
    rc=0; restore -o "$T/bad.raw" --mode "$bad" 2>/dev/null || rc=$?
    check test "$rc" -eq 2
done
check test ! -e "$T/bad.raw"
rm -f "$H/calls"

# --- 4. signals in the middle of a restore ---
# no process of the helper's group may be left (zombies aside)
group_gone() {
    ! ps -eo pgid=,stat= | awk -v g="$1" '$1 == g && $2 !~ /^Z/ { found = 1 } END { exit !found }'
}
# qcow2: the first write blocks in the server, so the kill lands while the
# restore is writing, always.
for sig in TERM INT; do
    rm -f "$H/written" "$H/nbd.pid"
    out=$P/sig-$sig.qcow2
    # A background job of a script ignores SIGINT; give it back.
    NJ_HOOK_NBD=block NJ_HOOK_SIZE=$size env --default-signal=INT \
        "$R" restore -s "$S" -d testgen --disk vda -f qcow2 -o "$out" \
        2> "$T/sig.err" &
    pid=$!
    while [ ! -e "$H/written" ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done
    check test -e "$H/written"
    check has_temp_image "$P"
    kill -$sig $pid 2>/dev/null || true
    rc=0; wait $pid || rc=$?
    if [ $sig = TERM ]; then check test $rc -eq 143; else check test $rc -eq 130; fi
    check test "$(wc -l < "$T/sig.err")" -eq 1
    check grep -qx "nightjar-restore: interrupted by SIG$sig; partial output removed" "$T/sig.err"
    check test ! -e "$out"
    check no_temp "$P"
    check group_gone "$(cat "$H/nbd.pid")"
done
rm -f "$H/calls"

# raw: a large restore, stopped (SIGSTOP) once its temporary image is
# seen; if the image is still unpublished then, the SIGTERM sent before
# SIGCONT lands before the publish.  Kills that came too late are retried
# and counted, and at least one must land.
head -c $((96 * 1048576)) /dev/urandom > "$T/big.raw"
"$NIGHTJAR_AGENT" import -s "$T/bigstore" -d big --disk vda "$T/big.raw" > /dev/null
landed=0
for attempt in 1 2 3 4 5 6 7 8; do
    out=$P/big.raw
    rm -f "$out"
    "$R" restore -s "$T/bigstore" -d big --disk vda -o "$out" --threads 1 \
        2> "$T/sig.err" &
    pid=$!
    while kill -0 $pid 2>/dev/null && ! has_temp_image "$P"; do
        sleep 0.005
    done
    kill -STOP $pid 2>/dev/null || true
    if kill -0 $pid 2>/dev/null && [ ! -e "$out" ] && has_temp_image "$P"; then
        kill -TERM $pid
        kill -CONT $pid
        rc=0; wait $pid || rc=$?
        landed=$((landed + 1))
        check test $rc -eq 143
        check test "$(wc -l < "$T/sig.err")" -eq 1
        check grep -qx "nightjar-restore: interrupted by SIGTERM; partial output removed" "$T/sig.err"
        check test ! -e "$out"
        check no_temp "$P"
        break
    fi
    kill -CONT $pid 2>/dev/null || true
    wait $pid || true
done
echo "raw SIGTERM: landed before the publish in $landed of $attempt attempts"
check test $landed -ge 1
rm -f "$T/big.raw" "$P/big.raw"

# --- 4b. the server fails the writes: the restore fails (the workers that
# wait for a write buffer are released), nothing is published or left ---
rm -f "$H/nbd.pid"
rc=0
NJ_HOOK_NBD=fail NJ_HOOK_SIZE=$size "$R" restore -s "$S" -d testgen \
    --disk vda -f qcow2 -o "$P/eio.qcow2" 2> "$T/eio.err" || rc=$?
check test $rc -eq 1
check grep -q "^nightjar-restore: .*write '$P/eio.qcow2'.*Input/output error" "$T/eio.err"
check test ! -e "$P/eio.qcow2"
check no_temp "$P"
check group_gone "$(cat "$H/nbd.pid")"

# --- 5. hostile names in the store ---
N=$T/names
# (\xc2\x9b is U+009B, the one-byte CSI of 8-bit terminals)
name=$'evil\n\x1b[2J'"fake-row   full  2001-01-01"$'\r\xc2\x9b'
mkdir "$T/truth2"
"$NJ_TESTGEN" --domain "$name" --seed 5 --size 65536 --incs 1 "$N" "$T/truth2" > /dev/null
"$R" list -s "$N" > "$T/list"
check test "$(wc -l < "$T/list")" -eq 3      # header and two backups
check test "$(tr -d '\n' < "$T/list" | LC_ALL=C tr -d '[:print:]' | wc -c)" -eq 0
check grep -qF 'evil\n\x1b[2Jfake-row' "$T/list"
check grep -qF '\r\xc2\x9b' "$T/list"
"$R" list -s "$N" --json > "$T/list.json"
check test "$(jq -r '.[0].domain' "$T/list.json")" = "$name"
# JSON: control characters escaped by json-c (U+009B may stay, JSON allows it)
check test "$(LC_ALL=C tr -d '\n\040-\176\200-\377' < "$T/list.json" | wc -c)" -eq 0
# error messages that quote the name
expect_fail 'no disk' "$R" restore -s "$N" -d 11111111-2222-4333-8444-000000000005 --disk vdz -o "$T/x.raw"
err=$("$R" restore -s "$N" -d 11111111-2222-4333-8444-000000000005 --disk vdz -o "$T/x.raw" 2>&1 || true)
check grep -qF 'evil\n\x1b[2J' <<< "$err"
check test "$(printf '%s' "$err" | LC_ALL=C tr -d '[:print:]' | wc -c)" -eq 0
# verify's report of a damaged chunk names the domain: escaped too
find "$N/chunks" -type f | sort | head -n 1 | while read -r c; do
    printf 'garbage!' | dd of="$c" bs=1 seek=20 conv=notrunc status=none
done
rc=0; "$R" verify -s "$N" > "$T/verify" 2>&1 || rc=$?
check test $rc -eq 1
check grep -qF "(domain 'evil\n\x1b[2Jfake-row" "$T/verify"
check test "$(tr -d '\n' < "$T/verify" | LC_ALL=C tr -d '[:print:]' | wc -c)" -eq 0

finish
