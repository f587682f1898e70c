#!/bin/bash
# nightjar-agent backup against a real libvirtd and real QEMU domains (KVM,
# or TCG with NJ_VIRT_TYPE=qemu): chains of full, inc, diff and copy
# backups of qcow2 and raw disks, with random-pattern writes, write-zeroes
# and discards between them (at the very last bytes of disks whose size is
# not a multiple of 64 KiB too), foreign checkpoints, a second store, and
# shut-off domains backed up before and after online ones; estimates and
# disk selection.  The shadow of every disk (lib-libvirt.sh) is saved at
# every backup point, and at the end EVERY point of EVERY disk is restored
# and compared byte for byte with it.
#
#   NJ_TEST_SEED=N   replay the random writes of an earlier run
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-libvirt.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp qemu-img qemu-io
nj_require_libvirt

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store                       # the store of every domain
S2=$T/store2                     # a second store, sharing one domain
J=$T/json                        # backup and estimate outputs
P=$T/points                      # shadows saved at each backup point
mkdir -p "$J" "$P"
# --scratch-dir: QEMU must traverse it, and the NBD socket path in it must
# stay under the 107 bytes of a UNIX socket address: a short one, not under $T
SCR=$(mktemp -d /var/tmp/nj-ac.XXXXXX)
cleanup_hooks+=("rm -rf $(printf '%q' "$SCR")")
chmod 0711 "$SCR"
G=65536                          # dirty bitmap granularity

seed=${NJ_TEST_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
RANDOM=$seed
echo "test-agent-chain: seed $seed (NJ_TEST_SEED=$seed replays it), virt type $NJ_VIRT_TYPE"
t0=$SECONDS
step() { echo "[$((SECONDS - t0))s] $*"; }
die() { echo "FATAL: $*" >&2; exit 1; }

# Domains by short key; disk sizes by "KEY/TARGET".
declare -A DOM=() SIZE=() ID=() SEQ_AT=() LASTW=()
POINTS=()                        # "STORE|KEY|ID|TARGET" for every saved point
SEQ=0                            # guest write counter

# mk KEY NAME SPEC...: nj_domain_create, remembering the disk sizes.
mk() {
    local key=$1 name=$2 spec t s; shift 2
    DOM[$key]=$name
    nj_domain_create "$name" "$@"
    for spec in "$@"; do
        IFS=: read -r t _ s _ <<<"$spec"
        SIZE[$key/$t]=$(nj_bytes "$s")
    done
}

# Every 64 KiB block a guest write touches is stamped with the write's
# sequence number, so the blocks dirtied since any moment can be counted.
mark() {
    local key=$1 t=$2 off=$3 len=$4 b
    SEQ=$((SEQ + 1))
    for ((b = off / G; b <= (off + len - 1) / G; b++)); do LASTW[$key/$t/$b]=$SEQ; done
}
# dirty KEY TARGET SINCE: "BLOCKS BYTES" dirtied after write SINCE (BYTES
# clipped to the disk size: the last block may be partial).
dirty() {
    local key=$1 t=$2 since=$3 k b n=0 bytes=0 size=${SIZE[$1/$2]} e
    for k in "${!LASTW[@]}"; do
        if [[ $k != "$key/$t/"* ]] || [ "${LASTW[$k]}" -le "$since" ]; then continue; fi
        b=${k##*/}
        n=$((n + 1))
        e=$(((b + 1) * G))
        [ "$e" -le "$size" ] || e=$size
        bytes=$((bytes + e - b * G))
    done
    echo "$n $bytes"
}

gw() { nj_guest_write "${DOM[$1]}" "$2" "$3" "$4" "$5" && mark "$1" "$2" "$4" "$5"; }
gz() { nj_guest_zero "${DOM[$1]}" "$2" "$3" "$4" && mark "$1" "$2" "$3" "$4"; }
gd() { nj_guest_discard "${DOM[$1]}" "$2" "$3" "$4" && mark "$1" "$2" "$3" "$4"; }

rnd() { echo $(((RANDOM << 15 | RANDOM) % $1)); }
# scatter KEY TARGET N: N writes of random bytes (nonzero mostly, a zero
# data pattern sometimes), random lengths from 1 byte to 256 KiB at random
# offsets, any alignment.
scatter() {
    local key=$1 t=$2 n=$3 i len off pat size=${SIZE[$1/$2]}
    for ((i = 0; i < n; i++)); do
        case $((RANDOM % 3)) in
            0) len=$((1 + $(rnd 4096))) ;;
            1) len=$((1 + $(rnd $((2 * G))))) ;;
            *) len=$((1 + $(rnd $((4 * G))))) ;;
        esac
        off=$(rnd $((size - len + 1)))
        pat=$((RANDOM % 16 == 0 ? 0 : 1 + RANDOM % 255))
        gw "$key" "$t" "$pat" "$off" "$len"
    done
}

# offline_write KEY TARGET FORMAT PATTERN OFFSET LENGTH: write to the image
# of a shut-off domain with qemu-io (as an offline tool would), and the
# same bytes to the shadow.  Persistent bitmaps of the image record it.
offline_write() {
    local key=$1 t=$2 fmt=$3 pat=$4 off=$5 len=$6 dom=${DOM[$1]}
    [ "$(nj_virsh domstate "$dom")" = "shut off" ] || die "offline_write: '$dom' is running"
    qemu-io -f "$fmt" -c "write -P $pat $off $len" "$(nj_image_path "$dom" "$t")" >/dev/null
    head -c "$len" /dev/zero | tr '\0' "\\$(printf '%03o' "$pat")" \
        | dd of="$(nj_shadow_path "$dom" "$t")" bs=1M oflag=seek_bytes seek="$off" \
            conv=notrunc status=none
    mark "$key" "$t" "$off" "$len"
}

# offline_write_file KEY TARGET FORMAT FILE OFFSET: the same with the
# content of FILE.
offline_write_file() {
    local key=$1 t=$2 fmt=$3 f=$4 off=$5 dom=${DOM[$1]} len
    len=$(stat -c %s "$f")
    [ "$(nj_virsh domstate "$dom")" = "shut off" ] || die "offline_write_file: '$dom' is running"
    qemu-io -f "$fmt" -c "write -s $f $off $len" "$(nj_image_path "$dom" "$t")" >/dev/null
    dd if="$f" of="$(nj_shadow_path "$dom" "$t")" bs=1M oflag=seek_bytes seek="$off" \
        conv=notrunc status=none
    mark "$key" "$t" "$off" "$len"
}

# bk KEY LABEL ARGS...: back up domain KEY (into $BK_STORE, default $S)
# with --json; the output is $J/LABEL.json and ID[LABEL] the new id.  The
# shadow of each disk the backup holds is saved as that point's truth.
bk() {
    local key=$1 label=$2 store=${BK_STORE:-$S} id t; shift 2
    [ ! -e "$J/$label.json" ] || die "backup label $label used twice"
    if ! "$A" backup -s "$store" -d "${DOM[$key]}" --scratch-dir "$SCR" --json "$@" \
        >"$J/$label.json" 2>"$J/$label.err"; then
        cat "$J/$label.err" >&2
        die "backup $label ($*) of '${DOM[$key]}' failed"
    fi
    id=$(jq -r .id "$J/$label.json") || die "backup $label: no JSON: $(cat "$J/$label.json")"
    for t in "${!ID[@]}"; do
        [ "${ID[$t]}" != "$id" ] || fail "backup $label has the id of backup $t: $id"
    done
    ID[$label]=$id
    SEQ_AT[$label]=$SEQ
    for t in $(jq -r '.disks[].target' "$J/$label.json"); do
        cp --sparse=always "$(nj_shadow_path "${DOM[$key]}" "$t")" "$P/$id-$t.raw"
        POINTS+=("$store|$key|$id|$t")
    done
    # the job's private directory is gone
    check test -z "$(ls -A "$SCR")"
}

# bk_during KEY LABEL FUNCTION ARGS...: like bk, but the agent holds inside
# its begun pull job (its test hook NIGHTJAR_TEST_HOLD_JOB: the file
# HOLD/<uuid> appears once the job has begun, and the agent waits until
# the file is removed), FUNCTION makes guest writes, and the agent goes
# on.  The job is required to exist (virsh domjobinfo / backup-dumpxml)
# before and after the writes, and the agent has read nothing yet, so
# every write lands during the job and before the datapath reads its
# blocks: QEMU must copy the old data aside for the backup.  The point
# saved is the disks as the job began: the writes must not be in it.
bk_during() {
    local key=$1 label=$2 fn=$3 pid i uuid hold id t k; shift 3
    [ ! -e "$J/$label.json" ] || die "backup label $label used twice"
    uuid=$(nj_virsh domuuid "${DOM[$key]}" | tr -d ' \n')
    mkdir -p "$T/hold"
    hold=$T/hold/$uuid
    NIGHTJAR_TEST_HOLD_JOB=$T/hold "$A" backup -s "$S" -d "${DOM[$key]}" --scratch-dir "$SCR" \
        --json "$@" >"$J/$label.json" 2>"$J/$label.err" &
    pid=$!
    for ((i = 0; i < 60000; i++)); do       # a failsafe of about 10 minutes
        if [ -e "$hold" ] || ! kill -0 "$pid" 2>/dev/null; then break; fi
        sleep 0.01
    done
    if [ ! -e "$hold" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" || true
        cat "$J/$label.err" >&2
        die "backup $label of '${DOM[$key]}': it never held in its job"
    fi
    for k in "${!SIZE[@]}"; do
        [ "${k%%/*}" = "$key" ] || continue
        cp --sparse=always "$(nj_shadow_path "${DOM[$key]}" "${k#*/}")" "$P/pending-${k#*/}.raw"
    done
    SEQ_AT[$label]=$SEQ
    check kill -0 "$pid"
    if nj_has_job "${DOM[$key]}"; then ok; else
        rm -f "$hold"
        wait "$pid" || true
        die "backup $label of '${DOM[$key]}': no job while the agent holds in it: $(cat "$J/$label.err")"
    fi
    "$fn"
    if nj_has_job "${DOM[$key]}"; then ok; else fail "backup $label: the job of '${DOM[$key]}' ended during the writes"; fi
    check test -e "$hold"                  # still holding: nothing read yet
    rm -f "$hold"
    if ! wait "$pid"; then
        cat "$J/$label.err" >&2
        die "backup $label of '${DOM[$key]}' failed"
    fi
    id=$(jq -r .id "$J/$label.json") || die "backup $label: no JSON"
    ID[$label]=$id
    for t in $(jq -r '.disks[].target' "$J/$label.json"); do
        mv "$P/pending-$t.raw" "$P/$id-$t.raw"
        POINTS+=("$S|$key|$id|$t")
    done
    rm -f "$P"/pending-*
    check test -z "$(ls -A "$SCR")"
}


# jeq FILE JQ-FILTER WANT: the filter's raw output is WANT.
jeq() {
    local got
    got=$(jq -r "$2" "$1" 2>&1) || true
    if [ "$got" = "$3" ]; then ok; else fail "${1##*/}: $2 is '$got', want '$3'"; fi
}
# jtrue FILE JQ-EXPRESSION: the expression is true.
jtrue() {
    if [ "$(jq -r "$2" "$1" 2>&1)" = true ]; then ok; else
        fail "${1##*/}: $2 is not true in: $(jq -c . "$1" 2>&1 | head -c 2000)"
    fi
}
# disk LABEL TARGET FIELD: a field of one disk of backup LABEL.
disk() { jq -r --arg t "$2" ".disks[] | select(.target == \$t) | .$3" "$J/$1.json"; }

# check_backup LABEL LEVEL PARENT-LABEL|- DISKS: level, parent, the set of
# disks (comma-separated TARGET=LEVEL, sorted by target), each disk's size.
check_backup() {
    local l=$1 key
    jeq "$J/$l.json" .level "$2"
    if [ "$3" = - ]; then jeq "$J/$l.json" .parent null; else jeq "$J/$l.json" .parent "${ID[$3]}"; fi
    jeq "$J/$l.json" '[.disks[] | "\(.target)=\(.level)"] | sort | join(",")' "$4"
    key=$(jkey "$l")
    for t in $(jq -r '.disks[].target' "$J/$l.json"); do
        check test "$(disk "$l" "$t" size)" = "${SIZE[$key/$t]}"
    done
}
# jkey LABEL: the domain key of a backup, from its domain name.
jkey() {
    local k n
    n=$(jq -r .domain "$J/$1.json")
    for k in "${!DOM[@]}"; do [ "${DOM[$k]}" != "$n" ] || { echo "$k"; return; }; done
    echo "?"
}

# inc_read_ok LABEL KEY TARGET SINCE-LABEL [far]: an incremental disk read
# at most the blocks dirtied since SINCE-LABEL (and with "far", less than
# an eighth of the disk).
inc_read_ok() {
    local read d max
    # (a disk that is not an inc already failed check_backup)
    [ "$(disk "$1" "$3" level)" = inc ] || return 0
    read=$(disk "$1" "$3" bytes_read)
    d=$(dirty "$2" "$3" "${SEQ_AT[$4]}")
    max=${d#* }
    if [ "${5:-}" = far ] && [ $((SIZE[$2/$3] / 8)) -lt "$max" ]; then max=$((SIZE[$2/$3] / 8)); fi
    if [ "$read" -le "$max" ]; then ok; else
        fail "backup $1 disk $3 read $read bytes; dirty since $4: ${d#* } bytes, disk ${SIZE[$2/$3]}${5:+ (want far below)}"
    fi
}

# cps KEY: the names of the domain's checkpoints, sorted.
cps() { nj_virsh checkpoint-list --name "${DOM[$1]}" | sed '/^$/d' | sort; }
ncps() { cps "$1" | wc -l; }

# estimate KEY LABEL: nightjar-agent estimate -d --json into $J/LABEL.json.
estimate() {
    "$A" estimate -s "${BK_STORE:-$S}" -d "${DOM[$1]}" --json >"$J/$2.json" 2>"$J/$2.err" \
        || { cat "$J/$2.err" >&2; fail "estimate $2 of '${DOM[$1]}' failed"; return 0; }
    ok
}
# estimate_inc_ok LABEL KEY TARGET SINCE-LABEL: an estimated qcow2 disk is
# an inc whose bytes cover the blocks dirtied since SINCE-LABEL.
estimate_inc_ok() {
    local d b
    d=$(dirty "$2" "$3" "${SEQ_AT[$4]}")
    b=$(disk "$1" "$3" bytes)
    jeq "$J/$1.json" ".disks[] | select(.target == \"$3\") | .level" inc
    if [ "$b" -ge "${d#* }" ] && [ "$b" -le $((${d% *} * G)) ]; then ok; else
        fail "estimate $1 disk $3: bytes $b, dirty since $4: ${d% *} blocks (${d#* } bytes)"
    fi
}

# projections_ok LABEL: the projections of estimate LABEL are those of
# nj-estimate.c's formula, computed here from the manifests in the store:
# per disk class (full disks of any backup, incremental disks), ratio =
# sum(bytes_stored) / sum(bytes_read), throughput = sum(bytes_read) /
# sum(seconds) over disks with a duration; projected_stored =
# floor(bytes * stored / read) (exact), projected_seconds = bytes /
# throughput (within 1e-9 relative); the totals are the sums, or null when
# a disk has none.
projections_ok() {
    local e=$J/$1.json st=${BK_STORE:-$S} r
    r=$(find "$st/backups" -name manifest.json -exec cat {} + | jq -r -s --slurpfile e "$e" '
        $e[0] as $e | . as $m |
        def h(l): [$m[] | select(.domain.uuid == $e.uuid) | .disks[] | select(.level == l) | .stats] |
            { read: (map(.bytes_read) | add // 0), stored: (map(.bytes_stored) | add // 0),
              secs: (map(select(.usec > 0) | .usec / 1e6) | add // 0),
              sread: (map(select(.usec > 0) | .bytes_read) | add // 0) };
        { full: h("full"), inc: h("inc") } as $h |
        [ $e.disks[] | select(.bytes != null) | . as $d | $h[$d.level] as $x |
          { ps: (if $x.read > 0 then ($d.bytes * $x.stored / $x.read | floor) else null end),
            pt: (if $x.secs > 0 and $x.sread > 0 then $d.bytes / ($x.sread / $x.secs) else null end),
            gps: $d.projected_stored, gpt: $d.projected_seconds, t: $d.target } ] as $p |
        def close(a; b): (a == null and b == null) or
            (a != null and b != null and ((a - b) | fabs) <= 1e-9 * ([1, (a | fabs)] | max));
        [ ($p[] | select(.ps != .gps) | "\(.t): projected_stored \(.gps), formula \(.ps)"),
          ($p[] | select(close(.pt; .gpt) | not) | "\(.t): projected_seconds \(.gpt), formula \(.pt)"),
          (if ($p | map(.ps) | all(. != null)) then ($p | map(.ps) | add) else null end) as $ts |
            (select($ts != $e.projected_stored) | "total projected_stored \($e.projected_stored), formula \($ts)"),
          (if ($p | map(.pt) | all(. != null)) then ($p | map(.pt) | add) else null end) as $tt |
            (select(close($tt; $e.projected_seconds) | not) | "total projected_seconds \($e.projected_seconds), formula \($tt)"),
          (select($p | map(.ps) | all(. == null)) | if $h.full.read > 0 then "no disk has a projection" else empty end)
        ] | join("; ")') || r="jq failed"
    if [ -z "$r" ]; then ok; else fail "estimate $1: $r"; fi
}
# next_backup_ok ESTIMATE-LABEL BACKUP-LABEL: with no write between them,
# the backup read at most the bytes the estimate announced for each of
# its incremental disks (the dirty bitmap covers what an inc reads); the
# projections against the actual figures are printed, not judged (the
# formula promises no bound: dedup and compression vary with the data).
next_backup_ok() {
    local e=$J/$1.json b=$J/$2.json t eb rb
    for t in $(jq -r '.disks[] | select(.level == "inc") | .target' "$e"); do
        eb=$(jq -r --arg t "$t" '.disks[] | select(.target == $t) | .bytes' "$e")
        rb=$(disk "$2" "$t" bytes_read)
        if [ "$rb" -le "$eb" ]; then ok; else fail "backup $2 disk $t read $rb bytes, estimate $1 said $eb"; fi
    done
    echo "estimate $1 -> backup $2: $(jq -r '"projected stored \(.projected_stored), seconds \(.projected_seconds)"' "$e"); actual stored $(jq '[.disks[].bytes_stored] | add' "$b"), seconds $(jq '[.disks[].seconds] | add' "$b")"
}

# ===================================================================
# 1. full -> inc -> inc -> diff -> inc of two qcow2 disks and a raw one,
#    with a cdrom and a read-only disk left out.
# ===================================================================
step "1: chain full inc inc diff inc"
V1=$((40 * 1048576 + 3 * 512))    # not a multiple of 64 KiB
V3=$((12 * 1048576 + 5 * 512))
mk d1 "$(nj_unique_name chain) it's \"A&B\" vm" \
    vda:qcow2:$V1 vdb:qcow2:16M vdc:raw:$V3 sda:raw:1M:cdrom vde:qcow2:1M:ro

gw d1 vda 0x11 0 1                         # the first byte
gw d1 vda 0x12 $((V1 - 1)) 1               # the last byte
gw d1 vda 0x5a $((4 * 1048576)) $((300 * 1024))
gw d1 vda 0x5b $((8 * 1048576)) $((512 * 1024))
gw d1 vdb 0x21 $((16 * 1048576 - 70000)) 70000
gw d1 vdc 0x31 $((V3 - 1000)) 1000
gw d1 vdc 0x32 0 $((200 * 1024))
scatter d1 vda 10
scatter d1 vdb 5
scatter d1 vdc 5
bk d1 full -l full
check_backup full full - "vda=full,vdb=full,vdc=full"
jtrue "$J/full.json" '.checkpoint | startswith("nightjar.")'
jeq "$J/full.json" .domain "${DOM[d1]}"

# changes for inc1: overwrite, zero data the full holds, discard, the end
gz d1 vda $((4 * 1048576 + 1000)) $((100 * 1024))
gd d1 vda $((8 * 1048576 + 2 * G)) $((3 * G))
gw d1 vda 0x13 $((V1 - 100)) 100
gw d1 vdb 0x22 $((G - 10)) 20                # across a block boundary
gz d1 vdb $((16 * 1048576 - 70000)) 4096
gd d1 vdc 0 $((2 * G))
gw d1 vdc 0x33 $((V3 - 512)) 512
scatter d1 vda 6
scatter d1 vdb 3

# 5. estimate: the qcow2 disks are incs covering the dirtied blocks, the
# raw disk a full of its allocation
estimate d1 e1
jeq "$J/e1.json" .base "${ID[full]}"
estimate_inc_ok e1 d1 vda full
estimate_inc_ok e1 d1 vdb full
jeq "$J/e1.json" '.disks[] | select(.target == "vdc") | .level' full
alloc=$(nj_virsh domblkinfo "${DOM[d1]}" vdc | sed -n 's/^Allocation: *//p')
jeq "$J/e1.json" '.disks[] | select(.target == "vdc") | .bytes' "$alloc"
jeq "$J/e1.json" '[.disks[].target] | join(",")' "vda,vdb,vdc"

# only the full is history: the inc disks have no projection, the raw
# disk one from the full's figures
projections_ok e1
jeq "$J/e1.json" '[.disks[] | select(.level == "inc") | .projected_stored] | unique' '[
  null
]'
jeq "$J/e1.json" .projected_stored null

bk d1 inc1 -l inc
next_backup_ok e1 inc1
check_backup inc1 inc full "vda=inc,vdb=inc,vdc=full"
inc_read_ok inc1 d1 vda full far
inc_read_ok inc1 d1 vdb full

# changes for inc2: the partial last block discarded, vdb's dirty
# region zeroed again, data written then zeroed within the interval
gd d1 vda $((V1 / G * G)) $((V1 % G))
gw d1 vda 0x14 $((20 * 1048576)) $((128 * 1024))
gz d1 vda $((20 * 1048576 + 4096)) $((64 * 1024))
gz d1 vdb 0 $((2 * G))
gd d1 vdc $((V3 / G * G)) $((V3 % G))
scatter d1 vda 5
scatter d1 vdc 3

# with history, the estimate projects stored bytes and seconds
estimate d1 e2
estimate_inc_ok e2 d1 vda inc1
estimate_inc_ok e2 d1 vdb inc1
jtrue "$J/e2.json" '[.disks[] | (.projected_stored | type) == "number" and (.projected_seconds | type) == "number"] | all'
jtrue "$J/e2.json" '(.projected_stored | type) == "number" and (.projected_seconds | type) == "number"'
projections_ok e2

bk d1 inc2 -l inc
next_backup_ok e2 inc2
check_backup inc2 inc inc1 "vda=inc,vdb=inc,vdc=full"
inc_read_ok inc2 d1 vda inc1 far

# a diff: everything since the full
scatter d1 vda 4
scatter d1 vdb 4
gw d1 vdb 0x23 $((16 * 1048576 - 1)) 1
bk d1 diff -l diff
check_backup diff diff full "vda=inc,vdb=inc,vdc=full"
inc_read_ok diff d1 vda full
inc_read_ok diff d1 vdb full

# an inc on top of the diff
gz d1 vda 0 $((1048576 + 77))
gw d1 vda 0x15 $((V1 - G - 3)) $((G + 3))
scatter d1 vdb 3
gw d1 vdc 0x34 $((5 * 1048576 + 3)) 10000
bk d1 inc3 -l inc
check_backup inc3 inc diff "vda=inc,vdb=inc,vdc=full"
inc_read_ok inc3 d1 vda diff far

# libvirt holds exactly the five checkpoints of the chain
want=$(for l in full inc1 inc2 diff inc3; do jq -r .checkpoint "$J/$l.json"; done | sort)
check test "$(cps d1)" = "$want"
for t in vda vdb vdc; do check nj_guest_check "${DOM[d1]}" $t; done

# the cdrom and the read-only disk cannot be chosen
expect_fail "cdrom" "$A" backup -s "$S" -d "${DOM[d1]}" --scratch-dir "$SCR" --disk sda
expect_fail "read-only" "$A" backup -s "$S" -d "${DOM[d1]}" --scratch-dir "$SCR" --disk vde
expect_fail "no disk 'vdz'" "$A" backup -s "$S" -d "${DOM[d1]}" --scratch-dir "$SCR" --disk vdz

# ===================================================================
# 2. -l auto, --max-chain, -l copy; 6. --disk selection
# ===================================================================
step "2: auto, max-chain, copy; 6: --disk"
mk d2 "$(nj_unique_name auto) two & co" vda:qcow2:24M vdb:qcow2:16M vdc:raw:8M sda:raw:1M:cdrom
# (--json: no notes about skipped disks before the error line)
expect_fail "no earlier committed backup" "$A" backup -s "$S" -d "${DOM[d2]}" --scratch-dir "$SCR" -l inc --json
expect_fail "no earlier full backup" "$A" backup -s "$S" -d "${DOM[d2]}" --scratch-dir "$SCR" -l diff --json
scatter d2 vda 4; scatter d2 vdb 2; scatter d2 vdc 2
# before any backup of the domain: every disk is due a full
estimate d2 e0
jeq "$J/e0.json" .base null
jeq "$J/e0.json" '[.disks[] | "\(.target)=\(.level)"] | join(",")' "vda=full,vdb=full,vdc=full"
bk d2 a1                                  # no -l: auto
check_backup a1 full - "vda=full,vdb=full,vdc=full"
scatter d2 vda 3; scatter d2 vdc 1
bk d2 a2 -l auto
check_backup a2 inc a1 "vda=inc,vdb=inc,vdc=full"
scatter d2 vda 2; scatter d2 vdb 2
bk d2 a3 -l auto --max-chain 2            # a chain of 2 reached: a full
check_backup a3 full - "vda=full,vdb=full,vdc=full"
scatter d2 vda 3; scatter d2 vdb 1
n_before=$(ncps d2)
bk d2 copy -l copy
check_backup copy copy - "vda=full,vdb=full,vdc=full"
jeq "$J/copy.json" .checkpoint null
check test "$(ncps d2)" -eq "$n_before"
scatter d2 vda 3; scatter d2 vdc 1
bk d2 a4 --max-chain 2                    # a3 alone is a chain of 1
check_backup a4 inc a3 "vda=inc,vdb=inc,vdc=full"
inc_read_ok a4 d2 vda a3                   # the writes before the copy too
# 6. only vda
gw d2 vda 0x41 $((24 * 1048576 - 5)) 5
gw d2 vdb 0x42 0 $((3 * G))
bk d2 vdaonly --disk vda
check_backup vdaonly inc a4 "vda=inc"
expect_fail "no disk 'vdb'" "$R" restore -s "$S" -d "${DOM[d2]}" -b "${ID[vdaonly]}" --disk vdb -o "$T/nope.raw"
check test ! -e "$T/nope.raw"
before=$("$R" list -s "$S" --json | jq length)
expect_fail "cdrom" "$A" backup -s "$S" -d "${DOM[d2]}" --scratch-dir "$SCR" --disk vda --disk sda
check test "$("$R" list -s "$S" --json | jq length)" -eq "$before"
# vdb is not in the parent: it falls back to a full on its own; its
# bitmap-less interval does not lose its writes
scatter d2 vdb 2
bk d2 a5
check_backup a5 inc vdaonly "vda=inc,vdb=full,vdc=full"
# a diff from a3: vdb's bitmap of a3 recorded everything since, also while
# vdaonly's checkpoint had no bitmap on vdb
scatter d2 vda 1; scatter d2 vdb 2
bk d2 a6 -l diff
check_backup a6 diff a3 "vda=inc,vdb=inc,vdc=full"
inc_read_ok a6 d2 vdb a3

# ===================================================================
# 3. foreign checkpoints, before and between backups; a second store
# ===================================================================
step "3: foreign checkpoints, two stores"
mk d3 "$(nj_unique_name foreign) x & y" vda:qcow2:24M vdb:raw:8M
scatter d3 vda 3
# (a raw disk cannot have a bitmap; once one disk is named, the others are
# left out unless named too)
nj_virsh checkpoint-create-as "${DOM[d3]}" other-tool-cp \
    --diskspec vda,checkpoint=bitmap --diskspec vdb,checkpoint=no >/dev/null
SEQ_AT[other-tool-cp]=$SEQ
scatter d3 vda 3; scatter d3 vdb 2
bk d3 f1
check_backup f1 full - "vda=full,vdb=full"
scatter d3 vda 3
cat >"$T/cp2.xml" <<'EOF'
<domaincheckpoint>
  <name>other-tool-cp2</name>
  <description>made by another tool</description>
  <disks><disk name='vda' checkpoint='bitmap'/><disk name='vdb' checkpoint='no'/></disks>
</domaincheckpoint>
EOF
nj_virsh checkpoint-create "${DOM[d3]}" "$T/cp2.xml" >/dev/null
scatter d3 vda 3; gw d3 vda 0x51 $((24 * 1048576 - 1)) 1
bk d3 f2
check_backup f2 inc f1 "vda=inc,vdb=full"
inc_read_ok f2 d3 vda f1
# the other tool deletes its second checkpoint: nightjar's inc checkpoint
# now hangs off nightjar's full in libvirt's tree
nj_virsh checkpoint-delete "${DOM[d3]}" other-tool-cp2 >/dev/null
scatter d3 vda 3; scatter d3 vdb 1
bk d3 f3
check_backup f3 inc f2 "vda=inc,vdb=full"
# a second store backs up the same domain: its checkpoints are foreign to
# the first store and the other way round
scatter d3 vda 2
BK_STORE=$S2 bk d3 g1
check_backup g1 full - "vda=full,vdb=full"
scatter d3 vda 2
bk d3 f4
check_backup f4 inc f3 "vda=inc,vdb=full"
inc_read_ok f4 d3 vda f3
scatter d3 vda 2; gz d3 vda 0 $((2 * G))
BK_STORE=$S2 bk d3 g2
check_backup g2 inc g1 "vda=inc,vdb=full"
inc_read_ok g2 d3 vda g1
scatter d3 vda 2
bk d3 f5
check_backup f5 inc f4 "vda=inc,vdb=full"
inc_read_ok f5 d3 vda f4
# every checkpoint is still there, the other tool's one with a bitmap
# that recorded every write since it was made
want=$( (echo other-tool-cp; for l in f1 f2 f3 f4 f5 g1 g2; do jq -r .checkpoint "$J/$l.json"; done) | sort)
check test "$(cps d3)" = "$want"
size=$(nj_virsh checkpoint-dumpxml --size --no-domain "${DOM[d3]}" other-tool-cp \
    | sed -n "s/.*<disk name='vda'.* size='\([0-9]*\)'.*/\1/p")
d=$(dirty d3 vda "${SEQ_AT[other-tool-cp]}")
check test "$size" = $((${d% *} * G))
# someone drops nightjar's newest checkpoint from libvirt's metadata only
# (the bitmap stays): it is redefined from the store and the chain goes on
nj_virsh checkpoint-delete --metadata "${DOM[d3]}" "$(jq -r .checkpoint "$J/f5.json")" >/dev/null
scatter d3 vda 2
bk d3 f6
check_backup f6 inc f5 "vda=inc,vdb=full"
inc_read_ok f6 d3 vda f5
if cps d3 | grep -qxF "$(jq -r .checkpoint "$J/f5.json")"; then ok; else fail "f5's checkpoint was not redefined"; fi
# someone deletes it for real (bitmap and all): nightjar cannot base an
# inc on it; whatever it does instead, the point restores exactly
nj_virsh checkpoint-delete "${DOM[d3]}" "$(jq -r .checkpoint "$J/f6.json")" >/dev/null
scatter d3 vda 2
bk d3 f7
echo "after its base checkpoint was deleted, the agent made a $(jq -r .level "$J/f7.json"): $(tr '\n' ' ' <"$J/f7.err")"
if [ "$(jq -r .level "$J/f7.json")" = full ]; then
    check_backup f7 full - "vda=full,vdb=full"
else
    check_backup f7 inc f6 "vda=inc,vdb=full"
fi

# ===================================================================
# 4. shut-off domains, before and after online backups
# ===================================================================
step "4: shut-off and online backups"
NJ_DOMAIN_START=no mk d4 "$(nj_unique_name off) 'off' & on" vda:qcow2:16M vdb:qcow2:$((8 * 1048576 + 512)) vdc:raw:4M
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"
offline_write d4 vda qcow2 0x61 $((3 * 1048576 + 17)) 100000
offline_write d4 vdc raw 0x62 0 4096
# shut off, never run: no history, so the estimate is all fulls
estimate d4 e4
jeq "$J/e4.json" '[.disks[].level] | join(",")' "full,full,full"
bk d4 o1
check_backup o1 full - "vda=full,vdb=full,vdc=full"
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"
check test "$(ncps d4)" -eq 1
# started (paused), written, backed up online: it stays as it was
nj_virsh start --paused "${DOM[d4]}" >/dev/null
scatter d4 vda 4; scatter d4 vdb 2; scatter d4 vdc 2
gw d4 vdb 0x63 $((8 * 1048576 + 512 - 300)) 300
bk d4 o2
check_backup o2 inc o1 "vda=inc,vdb=inc,vdc=full"
check test "$(nj_virsh domstate "${DOM[d4]}")" = paused
nj_virsh destroy "${DOM[d4]}" >/dev/null
# run again, write, shut off; an inc of the shut-off domain
nj_virsh start --paused "${DOM[d4]}" >/dev/null
scatter d4 vda 3; gz d4 vda $((3 * 1048576)) 8192; gd d4 vdb 0 $((2 * G))
nj_virsh destroy "${DOM[d4]}" >/dev/null
estimate d4 e5
jtrue "$J/e5.json" '.note | test("shut off")'
bk d4 o3
check_backup o3 inc o2 "vda=inc,vdb=inc,vdc=full"
inc_read_ok o3 d4 vda o2
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"
# an offline tool writes to the image of the shut-off domain: the
# persistent bitmaps record it and the next inc (shut off too) has it
offline_write d4 vda qcow2 0x64 $((10 * 1048576 + 5)) 70000
offline_write d4 vdb qcow2 0x65 $((8 * 1048576 + 512 - 1)) 1
bk d4 o4
check_backup o4 inc o3 "vda=inc,vdb=inc,vdc=full"
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"
# and once more online
nj_virsh start --paused "${DOM[d4]}" >/dev/null
scatter d4 vda 2; scatter d4 vdc 1
bk d4 o5
check_backup o5 inc o4 "vda=inc,vdb=inc,vdc=full"
check test "$(nj_virsh domstate "${DOM[d4]}")" = paused
want=$(for l in o1 o2 o3 o4 o5; do jq -r .checkpoint "$J/$l.json"; done | sort)
check test "$(cps d4)" = "$want"
check test -z "$(nj_virsh domjobinfo "${DOM[d4]}" | grep -v -e 'Job type: *None' -e '^ *$' || true)"
# the domain is undefined (its checkpoint metadata with it) and defined
# again: the checkpoints are redefined from the store, the chain goes on
nj_virsh destroy "${DOM[d4]}" >/dev/null
nj_virsh dumpxml --inactive "${DOM[d4]}" >"$T/d4.xml"
nj_virsh undefine --checkpoints-metadata "${DOM[d4]}" >/dev/null
nj_virsh define "$T/d4.xml" >/dev/null
check test "$(ncps d4)" -eq 0
offline_write d4 vda qcow2 0x66 $((12 * 1048576)) 5000
bk d4 o6
check_backup o6 inc o5 "vda=inc,vdb=inc,vdc=full"
inc_read_ok o6 d4 vda o5
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"
want=$(for l in o1 o2 o3 o4 o5 o6; do jq -r .checkpoint "$J/$l.json"; done | sort)
check test "$(cps d4)" = "$want"
# the same with a second chain: the checkpoint of its full has the first
# chain's last checkpoint as libvirt parent, which the second chain does
# not need; the metadata is lost again and the second chain goes on
offline_write d4 vdb qcow2 0x67 0 3000
bk d4 o7 -l full
check_backup o7 full - "vda=full,vdb=full,vdc=full"
offline_write d4 vda qcow2 0x68 $((12 * 1048576 + 4096)) 5000
bk d4 o8
check_backup o8 inc o7 "vda=inc,vdb=inc,vdc=full"
nj_virsh undefine --checkpoints-metadata "${DOM[d4]}" >/dev/null
nj_virsh define "$T/d4.xml" >/dev/null
offline_write d4 vdb qcow2 0x69 $((7 * 1048576 + 1)) 3000
bk d4 o9
check_backup o9 inc o8 "vda=inc,vdb=inc,vdc=full"
grep -v '^nightjar-agent: .*: redefined checkpoint' "$J/o9.err" >&2 || true
inc_read_ok o9 d4 vdb o8
check test "$(nj_virsh domstate "${DOM[d4]}")" = "shut off"

# ===================================================================
# 7. guest writes while a job reads: the backup holds the disks as the job
#    began, the next inc holds the writes
# ===================================================================
step "7: writes during backups"
NJ_DOMAIN_START=no mk d5 "$(nj_unique_name during) a & b" vda:qcow2:16M vdb:raw:4M
# fresh base64 of random bytes: no dedup, and zstd really works on it
{ head -c $((8 * 1048576)) /dev/urandom | base64 -w 0 || true; } | head -c $((8 * 1048576)) >"$T/random.bin"
offline_write_file d5 vda qcow2 "$T/random.bin" $((1048576 + 4096))
rm -f "$T/random.bin"
nj_virsh start --paused "${DOM[d5]}" >/dev/null
gw d5 vdb 0x71 0 $((1048576))
during1() {
    gw d5 vda 0x72 $((2 * 1048576)) $((3 * 1048576))
    gz d5 vda $((6 * 1048576)) $((512 * 1024 + 7))
    # (no discards here: QEMU 7.2 ignores them while a backup job runs,
    # the copy-before-write filter node is not opened with discard=unmap)
    gz d5 vda $((8 * 1048576 + 3)) $((1048576))
    gw d5 vda 0x73 $((16 * 1048576 - 4096)) 4096
    gw d5 vdb 0x74 $((1048576 / 2)) $((1048576))
}
bk_during d5 w1 during1
check_backup w1 full - "vda=full,vdb=full"
during2() {
    gw d5 vda 0x75 $((3 * 1048576 + 5)) 70000
    gz d5 vda $((1048576)) $((64 * 1024))
    gw d5 vdb 0x76 $((4 * 1048576 - 1)) 1
}
bk_during d5 w2 during2
check_backup w2 inc w1 "vda=inc,vdb=full"
# the writes made during w1's job are in w2 (the bitmap of w1's checkpoint
# recorded them), and it read no more than what changed since w1 began
inc_read_ok w2 d5 vda w1
bk d5 w3
check_backup w3 inc w2 "vda=inc,vdb=full"
inc_read_ok w3 d5 vda w2

# 5. estimate --all includes every domain of ours
"$A" estimate -s "$S" --all --json >"$J/eall.json" 2>"$J/eall.err" \
    || { cat "$J/eall.err" >&2; fail "estimate --all failed"; }
for k in d1 d2 d3 d4 d5; do
    jtrue "$J/eall.json" "map(select(.domain == $(printf '%s' "${DOM[$k]}" | jq -Rs .))) | length == 1"
done

# ===================================================================
# the store: list, verify; every point of every disk restores exactly
# ===================================================================
step "list and verify"
"$R" list -s "$S" --json >"$J/list.json"
"$R" list -s "$S2" --json >"$J/list2.json"
# list_chain LISTFILE KEY LABEL:PARENT-LABEL|-:CHAIN-LABEL...: the domain's
# backups in order with their levels, parents and chain heads
list_chain() {
    local f=$1 key=$2 x l p c want='' uuid; shift 2
    for x in "$@"; do
        IFS=: read -r l p c <<<"$x"
        want+="${ID[$l]} $(jq -r .level "$J/$l.json") $([ "$p" = - ] && echo null || echo "${ID[$p]}") ${ID[$c]}"$'\n'
    done
    uuid=$(nj_virsh domuuid "${DOM[$key]}")
    check test "$(jq -r --arg u "$uuid" '.[] | select(.uuid == $u) | "\(.id) \(.level) \(.parent) \(.chain)"' "$f")" \
        = "${want%$'\n'}"
}
list_chain "$J/list.json" d1 full:-:full inc1:full:full inc2:inc1:full diff:full:full inc3:diff:full
list_chain "$J/list.json" d2 a1:-:a1 a2:a1:a1 a3:-:a3 copy:-:copy a4:a3:a3 vdaonly:a4:a3 a5:vdaonly:a3 a6:a3:a3
if [ "$(jq -r .level "$J/f7.json")" = full ]; then f7=f7:-:f7; else f7=f7:f6:f1; fi
list_chain "$J/list.json" d3 f1:-:f1 f2:f1:f1 f3:f2:f1 f4:f3:f1 f5:f4:f1 f6:f5:f1 "$f7"
list_chain "$J/list2.json" d3 g1:-:g1 g2:g1:g1
if [ "$(jq -r .level "$J/o9.json")" = full ]; then o9=o9:-:o9; else o9=o9:o8:o7; fi
list_chain "$J/list.json" d4 o1:-:o1 o2:o1:o1 o3:o2:o1 o4:o3:o1 o5:o4:o1 o6:o5:o1 o7:-:o7 o8:o7:o7 "$o9"
list_chain "$J/list.json" d5 w1:-:w1 w2:w1:w1 w3:w2:w1
jtrue "$J/list.json" "[.[] | select(.id == \"${ID[inc3]}\") | .disks[] | \"\(.target)/\(.format)/\(.level)\"] == [\"vda/qcow2/inc\", \"vdb/qcow2/inc\", \"vdc/raw/full\"]"
jtrue "$J/list.json" "[.[] | select(.id == \"${ID[copy]}\") | .checkpoint] == [null]"
check "$R" verify -s "$S"
check "$R" verify -s "$S2"
"$R" verify -s "$S" --json >"$J/verify.json" || fail "verify --json"
"$R" verify -s "$S" -d "${DOM[d1]}" -b "${ID[inc3]}" >/dev/null || fail "verify -b"

step "restore ${#POINTS[@]} points"
for p in "${POINTS[@]}"; do
    IFS='|' read -r store key id t <<<"$p"
    out=$T/restored.raw
    rm -f "$out"
    if "$R" restore -s "$store" -d "${DOM[$key]}" -b "$id" --disk "$t" -o "$out" 2>"$T/restore.err"; then
        if cmp -s "$out" "$P/$id-$t.raw"; then ok; else
            fail "restore of $t at $id (${DOM[$key]}) differs from its shadow: $(cmp "$out" "$P/$id-$t.raw" 2>&1 | head -n 1)"
        fi
    else
        fail "restore of $t at $id (${DOM[$key]}): $(cat "$T/restore.err")"
    fi
done
rm -f "$T/restored.raw"
# latest is the last point; qcow2 output equals the shadow too
"$R" restore -s "$S" -d "${DOM[d1]}" --disk vdb -o "$T/latest.raw"
check cmp "$T/latest.raw" "$P/${ID[inc3]}-vdb.raw"
for x in d1:inc1:vda d1:diff:vdc d2:copy:vdb d4:o4:vda d5:w1:vda; do
    IFS=: read -r key l t <<<"$x"
    "$R" restore -s "$S" -d "${DOM[$key]}" -b "${ID[$l]}" --disk "$t" -f qcow2 -o "$T/r-$l-$t.qcow2"
    check qemu-img compare -q -f qcow2 -F raw "$T/r-$l-$t.qcow2" "$P/${ID[$l]}-$t.raw"
    rm -f "$T/r-$l-$t.qcow2"
done

step "done"
finish
