#!/bin/bash
# probe-libvirt-backup.sh: record what the installed libvirt/QEMU really do
# with pull-mode backups and checkpoints (a developer tool, not a test).
#
#   bash tests/integration/probe-libvirt-backup.sh [-k DIR] > probe.md
#
# Runs as root against qemu:///system with one throwaway domain (two qcow2
# disks, one raw disk, a read-only disk and a CD-ROM, no guest OS) and
# prints every command, the XML libvirt returns and a summary of facts, in
# Markdown.  -k DIR keeps the XML files and logs in DIR.  Idempotent and
# self-cleaning: the domain, its images and every job are removed on exit,
# whatever happens.  docs/libvirt-notes.md is written from its output.
export NIGHTJAR_RESTORE=${NIGHTJAR_RESTORE:-/bin/false}   # lib.sh wants it
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/lib-libvirt.sh"
keep=
if [ "${1:-}" = -k ] && [ -n "${2:-}" ]; then keep=$(mkdir -p "$2" && cd "$2" && pwd); fi
nj_require_libvirt
require nbdinfo nbdcopy qemu-img cmp jq
[ -z "$keep" ] || cleanup_hooks+=("cp -r \"\$T\"/*.xml \"\$T\"/*.log $(printf %q "$keep")/ 2>/dev/null")

M=1048576
facts=()
fact() { facts+=("$*"); }

section() { printf '\n## %s\n\n' "$*"; }
# Readable commands and output: the domain name and $T are abbreviated.
tidy() {
    local s
    s=$(cat)
    s=${s//"$dom"/'$DOM'}
    s=${s//"$uuid"/'$UUID'}
    s=${s//"$T"/'$T'}
    printf '%s\n' "$s"
}
# run CMD...: print the command, its output and its exit status (never fails).
# The output is left in $out and the status in $rc.
run() {
    local a shown=''
    for a in "$@"; do
        case $a in *[!A-Za-z0-9_./:=,+-]*) shown+=" '$a'" ;; *) shown+=" $a" ;; esac
    done
    rc=0
    out=$("$@" 2>&1) || rc=$?
    { printf '```\n$%s\n' "$shown"; [ -z "$out" ] || printf '%s\n' "$out"; printf '[exit %d]\n```\n' "$rc"; } | tidy
}
v() { run virsh -c "$NJ_LIBVIRT_URI" "$@"; }
showxml() {   # showxml TITLE FILE
    { printf '%s:\n\n```xml\n' "$1"; cat "$2"; printf '```\n'; } | tidy
}
bitmaps() {   # bitmaps TARGET: show qemu-img info of TARGET's image
    run qemu-img info -U "$(nj_image_path "$dom" "$1")"
}
bitmap_names() {  # the persistent bitmaps of TARGET's image: NAME(FLAGS)...
    qemu-img info -U --output=json "$(nj_image_path "$dom" "$1")" \
        | jq -r '[.["format-specific"].data.bitmaps[]? | "\(.name)(\(.flags | join(",")))"] | join(" ")'
}
# qbitmaps: the dirty bitmaps QEMU holds, per image, as QEMU reports them
# (qemu-img info does not show bitmaps created since QEMU opened the image).
qbitmaps() {
    nj_virsh qemu-monitor-command "$uuid" '{"execute":"query-named-block-nodes","arguments":{"flat":true}}' \
        | jq -r '.return[] | select([(.["dirty-bitmaps"] // [])[] | select(.name)] | length > 0)
            | (.file | sub(".*/"; "") | sub("^disk-.*-"; "")) + ": " + ([.["dirty-bitmaps"][] | select(.name)
            | "\(.name)(count=\(.count),recording=\(.recording),persistent=\(.persistent),busy=\(.busy))"] | join(" "))' \
        | sort | sed 's/$/;/' | tr '\n' ' ' | sed 's/; $//'
}
oneline() { printf '%s' "$out" | tr '\n' ' ' | sed 's/ *$//'; }
job_active() { [[ $(nj_virsh domjobinfo "$uuid" 2>/dev/null) == *"Job type:"*Unbounded* ]]; }
nbd_uri() { echo "nbd+unix:///$1?socket=$sock"; }

# --- the domain ---------------------------------------------------------------
dom=$(nj_unique_name "probe 'q\"&<x>")
uuid=__no_uuid_yet__
nj_domain_create "$dom" vda:qcow2:64M vdb:qcow2:32M vdc:raw:32M vdd:qcow2:16M:ro sda:raw:1M:cdrom
uuid=$(nj_virsh domuuid "$dom")
SD=$(nj_qemu_dir nbd)          # QEMU's user must be able to create the socket here
sock=$SD/nbd.sock

section "Environment"
run virsh -c "$NJ_LIBVIRT_URI" version
printf 'Domain type: %s; domain name used (verbatim): `%s`\n\n' "$(nj_virt_type)" "$dom"
run sh -c "virsh -c '$NJ_LIBVIRT_URI' domcapabilities --virttype $(nj_virt_type) | grep -E '<backup|<domain>|<machine>'"
nj_virsh dumpxml --inactive "$dom" > "$T/domain-inactive.xml"

# guest data before any backup
nj_guest_write "$dom" vda 0x11 0 4M
nj_guest_write "$dom" vdb 0x22 1M 1M
nj_guest_write "$dom" vdc 0x33 0 1M

# backup XML: backup_xml FILE [INCREMENTAL] DISKLINE...
backup_xml() {
    local f=$1 inc=$2; shift 2
    {
        echo "<domainbackup mode='pull'>"
        [ -z "$inc" ] || echo "  <incremental>$inc</incremental>"
        echo "  <server transport='unix' socket='$(nj_xml_escape "$sock")'/>"
        if [ $# -gt 0 ]; then
            echo "  <disks>"
            printf '    %s\n' "$@"
            echo "  </disks>"
        fi
        echo "</domainbackup>"
    } > "$f"
}
scratch() { echo "<scratch file='$(nj_xml_escape "$SD/scratch-$1-$2.qcow2")'/>"; }
ckpt_xml() {  # ckpt_xml FILE NAME DISKLINE...
    local f=$1 n=$2; shift 2
    {
        echo "<domaincheckpoint>"
        echo "  <name>$n</name>"
        if [ $# -gt 0 ]; then
            echo "  <disks>"
            printf '    %s\n' "$@"
            echo "  </disks>"
        fi
        echo "</domaincheckpoint>"
    } > "$f"
}
abort_job() {
    v domjobabort "$uuid"
    for _ in $(seq 50); do job_active || break; sleep 0.1; done
}

# --- where the socket may live ------------------------------------------------
section "NBD socket in a directory QEMU's user cannot write"
mkdir -m 0700 "$T/rootonly"
sock_saved=$sock; sock=$T/rootonly/nbd.sock
backup_xml "$T/b-perm.xml" ""
sock=$sock_saved
v backup-begin "$uuid" "$T/b-perm.xml"
fact "Socket in a root-owned 0700 directory: exit $rc $(oneline) (QEMU, running as $(_nj_qemu_user), binds the socket; libvirt does not relabel its directory)"
[ "$rc" -ne 0 ] || abort_job

# --- defaults -----------------------------------------------------------------
section "Which disks a backup and a checkpoint take by default"
backup_xml "$T/b-default.xml" ""
showxml "Backup XML with no <disks>" "$T/b-default.xml"
v backup-begin "$uuid" "$T/b-default.xml"
v backup-dumpxml "$uuid"
printf '%s\n' "$out" > "$T/b-default-dump.xml"
default_disks=$(sed -n "s/.*<disk name='\([a-z]*\)' backup='yes'.*/\1/p" "$T/b-default-dump.xml" | tr '\n' ' ')
default_no=$(sed -n "s/.*<disk name='\([a-z]*\)' backup='no'.*/\1/p" "$T/b-default-dump.xml" | tr '\n' ' ')
fact "A backup with no <disks> takes: ${default_disks:-none}; lists as backup='no': ${default_no:-none}"
fact "Default scratch files (no <scratch>): $(grep -o "<scratch file='[^']*'" "$T/b-default-dump.xml" | head -n 1 | tidy) (next to the image, suffixed with the job's start time)"
abort_job
run ls "$T"
fact "Default scratch files after domjobabort: $(ls "$T" | grep -c 'qcow2\.[0-9]\|raw\.[0-9]' || true) left"

ckpt_xml "$T/c-default.xml" cdefault
v checkpoint-create "$uuid" "$T/c-default.xml"
if [ "$rc" -eq 0 ]; then
    v checkpoint-dumpxml --no-domain "$uuid" cdefault
    fact "A checkpoint with no <disks> on a domain with a raw disk: created; $(printf '%s' "$out" | grep -o "<disk name='[a-z]*' checkpoint='[a-z]*'" | sed "s/<disk name=//" | tr '\n' ' ')"
    v checkpoint-delete "$uuid" cdefault
else
    fact "A checkpoint with no <disks> on a domain with a raw disk fails: $(oneline)"
fi
ckpt_xml "$T/c-raw.xml" craw "<disk name='vdc' checkpoint='bitmap'/>"
v checkpoint-create "$uuid" "$T/c-raw.xml"
if [ "$rc" -eq 0 ]; then fact "checkpoint='bitmap' on a raw disk: accepted"; v checkpoint-delete "$uuid" craw
else fact "checkpoint='bitmap' on a raw disk fails: $(oneline)"; fi

# --- full backup with checkpoint c1 -------------------------------------------
section "Full backup with a new checkpoint c1"
backup_xml "$T/b1.xml" "" \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda 1)</disk>" \
    "<disk name='vdb' backup='yes' type='file'>$(scratch vdb 1)</disk>" \
    "<disk name='vdc' backup='yes' type='file'>$(scratch vdc 1)</disk>"
ckpt_xml "$T/c1.xml" c1 "<disk name='vda' checkpoint='bitmap'/>" "<disk name='vdb' checkpoint='bitmap'/>" \
    "<disk name='vdc' checkpoint='no'/>"
showxml "backup.xml" "$T/b1.xml"
showxml "checkpoint.xml" "$T/c1.xml"
v backup-begin "$uuid" "$T/b1.xml" "$T/c1.xml"
[ "$rc" -eq 0 ] || { echo "full backup failed: cannot go on" >&2; exit 1; }
for d in vda vdb vdc; do cp "$(nj_shadow_path "$dom" $d)" "$T/truth1-$d.raw"; done
v backup-dumpxml "$uuid"
printf '%s\n' "$out" > "$T/b1-dump.xml"
fact "Full job: $(grep -o "<disk name='vda'[^>]*>" "$T/b1-dump.xml")"
v domjobinfo "$uuid"
v checkpoint-dumpxml --no-domain "$uuid" c1
run ls -l "$SD"
run nbdinfo --list "nbd+unix:///?socket=$sock"
# writes after the job began: the export must not see them
nj_guest_write "$dom" vda 0x44 0 64k
ok_full=1
for d in vda vdb vdc; do
    run nbdcopy "$(nbd_uri $d)" "$T/full-$d.raw"
    if [ "$rc" -ne 0 ] || ! cmp -s "$T/full-$d.raw" "$T/truth1-$d.raw"; then ok_full=0; fi
done
if [ $ok_full = 1 ]; then
    fact "The full exports equal the disks at backup-begin (a guest write after begin is not seen)"
else
    fact "The full exports DIFFER from the disks at backup-begin"
fi
run nbdinfo --map "$(nbd_uri vda)"
fact "QEMU's bitmaps during the full job: $(qbitmaps)"

section "A second job while one runs"
backup_xml "$T/b-second.xml" "" "<disk name='vda' backup='yes' type='file'>$(scratch vda x)</disk>"
v backup-begin "$uuid" "$T/b-second.xml"
fact "backup-begin while a backup job runs: exit $rc: $(oneline)"

section "The NBD client disconnects in the middle of a read"
nbdcopy "$(nbd_uri vda)" - 2>/dev/null | head -c 100000 > /dev/null || true
sleep 0.5
if job_active; then
    fact "A client that disconnects in the middle of a copy (SIGPIPE) leaves the job running; the export still serves"
else
    fact "A client disconnect ENDS the backup job"
fi
nbdcopy "$(nbd_uri vdb)" - > "$T/fifo-reader.raw" 2>/dev/null &
cpid=$!
sleep 0.05
kill -9 $cpid 2>/dev/null || true
wait $cpid 2>/dev/null || true
v domjobinfo "$uuid"
run nbdinfo "$(nbd_uri vda)"
if [ "$rc" -eq 0 ] && job_active; then
    fact "After a SIGKILLed client the job is still active and a new client can connect"
fi

section "domjobabort while a client is connected"
nbdcopy "$(nbd_uri vdc)" - 2>"$T/held.err" | { sleep 3; cat > /dev/null; } &
hpid=$!
sleep 1
v domjobabort "$uuid"
abort_rc=$rc
wait $hpid && held_rc=0 || held_rc=$?
fact "domjobabort with a client connected and reading: exit $abort_rc; the client then fails (pipeline exit $held_rc: $(head -n 1 "$T/held.err"))"
v domjobinfo "$uuid"

section "Full backup again, ended with domjobabort"
backup_xml "$T/b1b.xml" "" \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda 1b)</disk>"
v backup-begin "$uuid" "$T/b1b.xml"
run ls -l "$SD"

section "Ending the job with domjobabort"
abort_job
v domjobinfo "$uuid"
v domjobinfo --completed "$uuid"
run ls -l "$SD"
v checkpoint-list "$uuid"
fact "After domjobabort: socket $( [ -e "$sock" ] && echo 'still exists' || echo removed); scratch files $(ls "$SD"/scratch-* >/dev/null 2>&1 && echo 'remain' || echo 'removed'); checkpoint c1 $(nj_virsh checkpoint-info "$uuid" c1 >/dev/null 2>&1 && echo kept || echo gone)"
bitmaps vda
fact "After the full job: QEMU holds [$(qbitmaps)]; qemu-img info -U of the running images shows vda [$(bitmap_names vda)], vdb [$(bitmap_names vdb)] (new persistent bitmaps reach the qcow2 file only when QEMU closes it)"

# --- incremental ------------------------------------------------------------------
section "Guest writes after c1"
nj_guest_write "$dom" vda 0x55 8M 128k
nj_guest_write "$dom" vda 0x56 $((20 * M + 4096)) 100
nj_guest_zero "$dom" vda 1M 64k
nj_guest_discard "$dom" vda 2M 64k
nj_guest_write "$dom" vdb 0x66 30M 64k
nj_guest_write "$dom" vdc 0x77 5M 4k
echo "vda: 0x44 at 0+64k (during the full job), 0x55 at 8M+128k, 0x56 at 20M+4096 (100 bytes),"
echo "write-zeroes at 1M+64k, discard at 2M+64k; vdb: 0x66 at 30M+64k; vdc (raw): 0x77 at 5M+4k"
v checkpoint-dumpxml --size --no-domain "$uuid" c1
fact "checkpoint-dumpxml --size c1 after the writes: $(printf '%s' "$out" | grep -o "<disk name='[a-z]*'[^/]*size='[0-9]*'" | sed "s/<disk name=//; s/ checkpoint='bitmap' bitmap='[^']*'//" | tr '\n' ' ')"

section "Incremental including the raw disk without backupmode"
backup_xml "$T/b-rawinc.xml" c1 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda r)</disk>" \
    "<disk name='vdc' backup='yes' type='file'>$(scratch vdc r)</disk>"
showxml "backup.xml" "$T/b-rawinc.xml"
v backup-begin "$uuid" "$T/b-rawinc.xml"
fact "Incremental job with a raw disk (no backupmode): exit $rc: $(oneline)"
[ "$rc" -ne 0 ] || abort_job

section "Incremental from c1 with checkpoint c2; the raw disk with backupmode='full'"
backup_xml "$T/b2.xml" c1 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda 2)</disk>" \
    "<disk name='vdb' backup='yes' type='file'>$(scratch vdb 2)</disk>" \
    "<disk name='vdc' backup='yes' backupmode='full' type='file'>$(scratch vdc 2)</disk>"
ckpt_xml "$T/c2.xml" c2 "<disk name='vda' checkpoint='bitmap'/>" "<disk name='vdb' checkpoint='bitmap'/>" \
    "<disk name='vdc' checkpoint='no'/>"
showxml "backup.xml" "$T/b2.xml"
showxml "checkpoint.xml" "$T/c2.xml"
v backup-begin "$uuid" "$T/b2.xml" "$T/c2.xml"
inc_ok=$rc
for d in vda vdb vdc; do cp "$(nj_shadow_path "$dom" $d)" "$T/truth2-$d.raw"; done
v backup-dumpxml "$uuid"
printf '%s\n' "$out" > "$T/b2-dump.xml"
if [ "$inc_ok" -eq 0 ]; then
    fact "Per-disk backupmode='full' for a raw disk inside an incremental job: works"
    fact "Incremental job: $(grep -o "<disk name='vda'[^>]*>" "$T/b2-dump.xml")"
    fact "Incremental job, raw disk: $(grep -o "<disk name='vdc'[^>]*>" "$T/b2-dump.xml")"
    run nbdinfo --list "nbd+unix:///?socket=$sock"
    fact "QEMU's bitmaps during the incremental job: $(qbitmaps)"
    vda_bitmap=$(sed -n "s/.*<disk name='vda'.*exportbitmap='\([^']*\)'.*/\1/p" "$T/b2-dump.xml")
    run nbdinfo --map="qemu:dirty-bitmap:$vda_bitmap" "$(nbd_uri vda)"
    printf '%s\n' "$out" > "$T/map-vda.txt"
    dirty=$(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' "$T/map-vda.txt")
    fact "Dirty bitmap of vda (context qemu:dirty-bitmap:$vda_bitmap): ${dirty}(written: 0+64k, 1M+64k zeroed, 2M+64k discarded, 8M+128k, 20M+4096+100)"
    want="0+65536 1048576+65536 2097152+65536 8388608+131072 20971520+65536 "
    [ "$dirty" = "$want" ] && fact "The dirty map is exactly the written 64 KiB blocks, zeroed and discarded ones included"
    run nbdinfo --map="qemu:dirty-bitmap:backup-vdb" "$(nbd_uri vdb)"
    run nbdinfo --map="qemu:dirty-bitmap:backup-vdc" "$(nbd_uri vdc)"
    fact "Raw disk in the incremental job: map of qemu:dirty-bitmap:backup-vdc exits $rc ($(oneline))"
    run nbdinfo --map "$(nbd_uri vda)"
    printf '%s\n' "$out" > "$T/alloc-vda.txt"
    ok_inc=1
    for d in vda vdb vdc; do
        run nbdcopy "$(nbd_uri $d)" "$T/inc-$d.raw"
        cmp -s "$T/inc-$d.raw" "$T/truth2-$d.raw" || ok_inc=0
    done
    [ $ok_inc = 1 ] && fact "Exports of the incremental job read the whole disk as at begin (the bitmap only says what changed)"
    abort_job
else
    fact "Per-disk backupmode='full' inside an incremental job FAILS: $(oneline)"
fi
bitmaps vda
fact "Bitmaps after c2 (QEMU): $(qbitmaps)"

section "Per-disk incremental='CHECKPOINT' and explicit exportname/exportbitmap"
nj_guest_write "$dom" vda 0x58 12M 64k
backup_xml "$T/b-perdisk.xml" "" \
    "<disk name='vda' backup='yes' backupmode='incremental' incremental='c1' exportname='my-vda' exportbitmap='my-bitmap' type='file'>$(scratch vda p)</disk>" \
    "<disk name='vdb' backup='yes' backupmode='incremental' incremental='c2' type='file'>$(scratch vdb p)</disk>"
showxml "backup.xml" "$T/b-perdisk.xml"
v backup-begin "$uuid" "$T/b-perdisk.xml"
if [ "$rc" -eq 0 ]; then
    v backup-dumpxml "$uuid"
    printf '%s\n' "$out" > "$T/b-perdisk-dump.xml"
    run nbdinfo --list "nbd+unix:///?socket=$sock"
    run nbdinfo --map=qemu:dirty-bitmap:my-bitmap "nbd+unix:///my-vda?socket=$sock"
    fact "Per-disk incremental='c1' and exportname/exportbitmap given by the caller: accepted; $(grep -o "<disk name='vda'[^>]*>" "$T/b-perdisk-dump.xml"); dirty map from c1: $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
    abort_job
else
    fact "Per-disk incremental= / exportname= / exportbitmap=: rejected: $(oneline)"
fi

# --- checkpoint='no' ---------------------------------------------------------
section "A disk with checkpoint='no' in c3"
backup_xml "$T/b3.xml" c2 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda 3)</disk>" \
    "<disk name='vdb' backup='yes' type='file'>$(scratch vdb 3)</disk>"
ckpt_xml "$T/c3.xml" c3 "<disk name='vda' checkpoint='bitmap'/>" "<disk name='vdb' checkpoint='no'/>" \
    "<disk name='vdc' checkpoint='no'/>"
showxml "checkpoint.xml" "$T/c3.xml"
v backup-begin "$uuid" "$T/b3.xml" "$T/c3.xml"
abort_job
v checkpoint-dumpxml --no-domain "$uuid" c3
nj_guest_write "$dom" vdb 0x67 4M 64k
backup_xml "$T/b-nockpt.xml" c3 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda n)</disk>" \
    "<disk name='vdb' backup='yes' type='file'>$(scratch vdb n)</disk>"
v backup-begin "$uuid" "$T/b-nockpt.xml"
if [ "$rc" -eq 0 ]; then
    v backup-dumpxml "$uuid"
    run nbdinfo --map=qemu:dirty-bitmap:backup-vdb "$(nbd_uri vdb)"
    fact "Incremental from c3 including vdb (checkpoint='no' in c3): accepted; vdb dirty map: $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
    abort_job
else
    fact "Incremental from c3 including vdb, which had checkpoint='no' in c3: fails: $(oneline)"
fi
backup_xml "$T/b-nockpt2.xml" c3 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda m)</disk>" \
    "<disk name='vdb' backup='yes' backupmode='full' type='file'>$(scratch vdb m)</disk>"
v backup-begin "$uuid" "$T/b-nockpt2.xml"
fact "Incremental from c3 with vdb backupmode='full': exit $rc $(oneline)"
[ "$rc" -ne 0 ] || abort_job
bitmaps vdb
fact "Bitmaps after c3 (vdb had checkpoint='no'), as QEMU has them: $(qbitmaps)"

# --- sizes, listing -----------------------------------------------------------
section "Checkpoint list and sizes"
v checkpoint-list --parent "$uuid"
v checkpoint-list --tree "$uuid"
for c in c1 c2 c3; do v checkpoint-dumpxml --size --no-domain "$uuid" $c; done
v checkpoint-dumpxml "$uuid" c1
printf '%s\n' "$out" > "$T/c1-full.xml"
fact "checkpoint-dumpxml (default) includes the <domain> element: $(grep -q '<domain ' "$T/c1-full.xml" && echo yes || echo no)"
for c in c1 c2 c3; do nj_virsh checkpoint-dumpxml "$uuid" $c > "$T/saved-$c.xml"; done

# --- checkpoint-delete --------------------------------------------------------
section "checkpoint-delete of a middle checkpoint (c2) and of the leaf (c3)"
v checkpoint-dumpxml --size --no-domain "$uuid" c1
size_c1_before=$(printf '%s' "$out" | grep -o "<disk name='vdb'[^>]*size='[0-9]*'" | grep -o "size='[0-9]*'" || true)
v checkpoint-delete "$uuid" c2
bitmaps vda; bitmaps vdb
v checkpoint-list --parent "$uuid"
fact "After checkpoint-delete c2 (middle): QEMU has $(qbitmaps); c3's parent is now: $(nj_virsh checkpoint-info "$uuid" c3 2>/dev/null | sed -n 's/^Parent: *//p')"
v checkpoint-dumpxml --size --no-domain "$uuid" c1
fact "c1 vdb size before/after deleting c2: $size_c1_before / $(printf '%s' "$out" | grep -o "<disk name='vdb'[^>]*size='[0-9]*'" | grep -o "size='[0-9]*'")"
backup_xml "$T/b-afterdel.xml" c1 "<disk name='vdb' backup='yes' type='file'>$(scratch vdb d)</disk>"
v backup-begin "$uuid" "$T/b-afterdel.xml"
if [ "$rc" -eq 0 ]; then
    run nbdinfo --map=qemu:dirty-bitmap:backup-vdb "$(nbd_uri vdb)"
    fact "Incremental from c1 after deleting c2 still sees the writes made after c2 (vdb 4M+64k): $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
    abort_job
fi
v checkpoint-delete "$uuid" c3
bitmaps vda
fact "After checkpoint-delete c3 (leaf): QEMU has $(qbitmaps)"

section "checkpoint-delete --metadata keeps the bitmap; --redefine brings the checkpoint back"
v checkpoint-delete --metadata "$uuid" c1
v checkpoint-list "$uuid"
fact "After checkpoint-delete --metadata c1 (no checkpoints left in libvirt): QEMU still has $(qbitmaps)"
v checkpoint-create --redefine "$uuid" "$T/saved-c1.xml"
fact "checkpoint-create --redefine of c1 with the saved XML (with <domain>): exit $rc $(oneline)"
nj_virsh checkpoint-delete --metadata "$uuid" c1 >/dev/null 2>&1 || true
nj_virsh checkpoint-dumpxml --no-domain "$uuid" c1 > /dev/null 2>&1 || true
sed '/<domain /,/<\/domain>/d' "$T/saved-c1.xml" > "$T/saved-c1-nodomain.xml"
v checkpoint-create --redefine "$uuid" "$T/saved-c1-nodomain.xml"
fact "checkpoint-create --redefine of c1 from XML without <domain>: exit $rc $(oneline)"
nj_virsh checkpoint-info "$uuid" c1 >/dev/null 2>&1 || nj_virsh checkpoint-create --redefine "$uuid" "$T/saved-c1.xml" >/dev/null
ckpt_xml "$T/c-bogus.xml" cbogus "<disk name='vda' checkpoint='bitmap'/>"
sed -i 's|</domaincheckpoint>|  <creationTime>1700000000</creationTime>\n</domaincheckpoint>|' "$T/c-bogus.xml"
v checkpoint-create --redefine --redefine-validate "$uuid" "$T/c-bogus.xml"
fact "--redefine --redefine-validate of a checkpoint whose bitmap does not exist: exit $rc $(oneline)"
[ "$rc" -ne 0 ] || nj_virsh checkpoint-delete --metadata "$uuid" cbogus >/dev/null 2>&1 || true
v checkpoint-create --redefine "$uuid" "$T/c-bogus.xml"
fact "--redefine (no validate) of a checkpoint whose bitmap does not exist: exit $rc $(oneline)"
if [ "$rc" -eq 0 ]; then
    backup_xml "$T/b-bogus.xml" cbogus "<disk name='vda' backup='yes' type='file'>$(scratch vda g)</disk>"
    v backup-begin "$uuid" "$T/b-bogus.xml"
    fact "An incremental from that bogus checkpoint: exit $rc $(oneline)"
    [ "$rc" -ne 0 ] || abort_job
    v checkpoint-delete --metadata "$uuid" cbogus
fi
backup_xml "$T/b-redef.xml" c1 "<disk name='vda' backup='yes' type='file'>$(scratch vda e)</disk>"
v backup-begin "$uuid" "$T/b-redef.xml"
if [ "$rc" -eq 0 ]; then
    run nbdinfo --map=qemu:dirty-bitmap:backup-vda "$(nbd_uri vda)"
    fact "Incremental from the redefined c1 works; vda dirty: $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
    abort_job
else
    fact "Incremental from the redefined c1 fails: $(oneline)"
fi

# --- undefine --checkpoints-metadata + define ----------------------------------
section "undefine --checkpoints-metadata and define of the running domain, then --redefine"
nj_virsh checkpoint-dumpxml "$uuid" c1 > "$T/saved-c1.xml"
v undefine --checkpoints-metadata "$uuid"
v list --all --uuid
v define "$T/domain-inactive.xml"
v checkpoint-list "$uuid"
fact "After undefine --checkpoints-metadata + define of the RUNNING domain: checkpoints listed: [$(nj_virsh checkpoint-list --name "$uuid" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')]; QEMU has $(qbitmaps)"
nj_guest_write "$dom" vda 0x59 16M 64k
v backup-begin "$uuid" "$T/b-redef.xml"
fact "Incremental from c1 before redefinition: exit $rc $(oneline)"
[ "$rc" -ne 0 ] || abort_job
v checkpoint-create --redefine "$uuid" "$T/saved-c1.xml"
fact "--redefine c1 after undefine+define (running): exit $rc $(oneline)"
v backup-begin "$uuid" "$T/b-redef.xml"
if [ "$rc" -eq 0 ]; then
    run nbdinfo --map=qemu:dirty-bitmap:backup-vda "$(nbd_uri vda)"
    fact "Incremental from redefined c1 (running domain) works; the bitmap kept counting while the metadata was gone (16M+64k): $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
    abort_job
fi

# --- shut-off domain --------------------------------------------------------------
section "Shut-off domain: checkpoints, backups, start --paused --autodestroy"
v destroy "$uuid"
bitmaps vda
fact "After virsh destroy: vda bitmaps [$(bitmap_names vda)]"
ckpt_xml "$T/c-off.xml" coff "<disk name='vda' checkpoint='bitmap'/>"
v checkpoint-create "$uuid" "$T/c-off.xml"
fact "checkpoint-create on a shut-off domain: exit $rc $(oneline)"
v backup-begin "$uuid" "$T/b-redef.xml"
fact "backup-begin on a shut-off domain: exit $rc $(oneline)"
v checkpoint-list "$uuid"

# undefine + define while shut off, redefine, then start
v undefine --checkpoints-metadata "$uuid"
v define "$T/domain-inactive.xml"
v checkpoint-create --redefine "$uuid" "$T/saved-c1.xml"
fact "--redefine c1 on the shut-off domain after undefine+define: exit $rc $(oneline)"
v checkpoint-create --redefine --redefine-validate "$uuid" "$T/saved-c1.xml"
fact "--redefine --redefine-validate on a shut-off domain (c1 already there): exit $rc $(oneline)"

v start --paused --autodestroy "$uuid"
v domstate "$uuid"
fact "virsh start --paused --autodestroy, then another virsh: domain is '$(nj_virsh domstate "$uuid" 2>/dev/null)' (autodestroy is bound to the connection of the virsh that started it, which has exited)"

# a virsh session kept open on a FIFO: the domain lives as long as it does
mkfifo "$T/vsh.in"
virsh -c "$NJ_LIBVIRT_URI" < "$T/vsh.in" > "$T/vsh.log" 2>&1 &
vsh=$!
exec 7>"$T/vsh.in"
cleanup_hooks+=("exec 7>&-; kill $vsh 2>/dev/null")
echo "start --paused --autodestroy $uuid" >&7
for _ in $(seq 100); do [ "$(nj_virsh domstate "$uuid" 2>/dev/null)" = paused ] && break; sleep 0.1; done
v domstate "$uuid"
state_open=$out
ckpt_xml "$T/c4.xml" c4 "<disk name='vda' checkpoint='bitmap'/>" "<disk name='vdb' checkpoint='bitmap'/>" \
    "<disk name='vdc' checkpoint='no'/>"
backup_xml "$T/b4.xml" c1 \
    "<disk name='vda' backup='yes' type='file'>$(scratch vda 4)</disk>" \
    "<disk name='vdb' backup='yes' type='file'>$(scratch vdb 4)</disk>"
v backup-begin "$uuid" "$T/b4.xml" "$T/c4.xml"
if [ "$rc" -eq 0 ]; then
    run nbdinfo --map=qemu:dirty-bitmap:backup-vda "$(nbd_uri vda)"
    fact "Autodestroy domain held by an open virsh session ($state_open): incremental from c1 with new checkpoint c4 works from another connection; vda dirty: $(awk '$3 == 1 { printf "%d+%d ", $1, $2 }' <<<"$out")"
fi
# close the session with the job still running
exec 7>&-
wait $vsh || true
sleep 1
cat "$T/vsh.log" | tidy
v domstate "$uuid"
fact "Closing the session with the pull job running: domain '$(nj_virsh domstate "$uuid" 2>/dev/null)'; checkpoints [$(nj_virsh checkpoint-list --name "$uuid" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')]; vda bitmaps [$(bitmap_names vda)]"
bitmaps vda
v checkpoint-list --parent "$uuid"
v start --paused "$uuid"
fact "qemu-img info -U of a running image whose bitmaps existed when QEMU opened it: vda [$(bitmap_names vda)]"
backup_xml "$T/b5.xml" c4 "<disk name='vda' backup='yes' type='file'>$(scratch vda 5)</disk>"
v backup-begin "$uuid" "$T/b5.xml"
fact "After autodestroy killed the job, incremental from the checkpoint that job created (c4): exit $rc $(oneline)"
[ "$rc" -ne 0 ] || abort_job

section "Offline: checkpoint order on --redefine, --size, checkpoint-delete"
v destroy "$uuid"
for c in c1 c4; do nj_virsh checkpoint-dumpxml "$uuid" $c > "$T/saved2-$c.xml"; done
v checkpoint-dumpxml --size "$uuid" c1
fact "checkpoint-dumpxml --size on a shut-off domain: exit $rc $(oneline)"
v undefine --checkpoints-metadata "$uuid"
v define "$T/domain-inactive.xml"
v checkpoint-create --redefine "$uuid" "$T/saved2-c4.xml"
fact "--redefine of c4 before its parent c1: exit $rc $(oneline)"
v checkpoint-list --parent "$uuid"
nj_virsh checkpoint-delete --metadata "$uuid" c4 >/dev/null 2>&1 || true
v checkpoint-create --redefine "$uuid" "$T/saved2-c1.xml"
v checkpoint-create --redefine "$uuid" "$T/saved2-c4.xml"
v checkpoint-list --parent "$uuid"
v checkpoint-delete "$uuid" c4
fact "checkpoint-delete c4 on a shut-off domain: exit $rc $(oneline); checkpoints [$(nj_virsh checkpoint-list --name "$uuid" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')]; vda bitmaps [$(bitmap_names vda)]"
bitmaps vda
v checkpoint-delete --metadata "$uuid" c4
run qemu-img bitmap --remove "$(nj_image_path "$dom" vda)" c4
run qemu-img bitmap --remove "$(nj_image_path "$dom" vdb)" c4
fact "Offline rollback of c4 = checkpoint-delete --metadata + qemu-img bitmap --remove on each image: checkpoints [$(nj_virsh checkpoint-list --name "$uuid" 2>/dev/null | tr '\n' ' ' | sed 's/ *$//')]; vda bitmaps [$(bitmap_names vda)], vdb [$(bitmap_names vdb)]"
v start --paused "$uuid"
backup_xml "$T/b6.xml" c1 "<disk name='vda' backup='yes' type='file'>$(scratch vda 6)</disk>"
v backup-begin "$uuid" "$T/b6.xml"
fact "After that rollback, incremental from c1 on the restarted domain: exit $rc $(oneline)"
[ "$rc" -ne 0 ] || abort_job

section "End state"
nj_domain_remove "$dom"
v list --all
left=$(nj_virsh list --all --uuid | grep -c "$uuid" || true)
fact "Domain removed at the end: $([ "$left" -eq 0 ] && echo yes || echo NO)"

section "Summary"
for f in "${facts[@]}"; do printf -- '- %s\n' "$f" | tidy; done
