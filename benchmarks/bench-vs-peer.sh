#!/bin/bash
# nightjar against virtnbdbackup, on real libvirt domains, in one run:
#
#   bash benchmarks/bench-vs-peer.sh [--tiny] [--runs N] [--out FILE]
#
# As root, on a machine with libvirtd, QEMU and virtnbdbackup (Debian
# package).  Builds nightjar (release, build-benchpeer) unless
# NIGHTJAR_AGENT, NIGHTJAR_RESTORE and NJ_BENCH_COMPUTE are set.
#
# The disk: the image of bench-datapath.sh (lib-bench.sh: 8 GiB virtual
# qcow2, about 2.8 GiB of binaries from /usr, 1 GiB random, the rest
# zero), generated once and cached in $NJ_BENCH_DIR (/var/tmp/nightjar-bench).
# Each tool gets its own domain with a fresh copy of it (virtnbdbackup
# refuses to work on a domain that has checkpoints it did not make; the
# run checks that and reports it), and both domains receive exactly the
# same guest writes.  Domains have no guest OS: they stay paused and the
# guest writes go through QEMU's block layer (HMP qemu-io, one virsh
# session per batch), so the dirty bitmaps see them as guest writes.
#
# One repetition, on fresh domains, stores and output directories:
#   full backup; 4 x (a write set, then an incremental); restore of the
#   latest point to qcow2, compared (qemu-img compare) with the live disk.
# A write set is 2000 scattered 4 KiB writes (distinct 64 KiB blocks) plus
# one 64 MiB sequential write, half random and half binary data, different
# for every set and identical for every domain and repetition.
#   nightjar:      nightjar-agent backup -l full|inc; nightjar-restore -f qcow2
#   virtnbdbackup: virtnbdbackup -l full|inc -z (lz4, its default level 2);
#                  virtnbdrestore
# Every timed command runs after a sync (so no tool pays for another's
# dirty pages) under /usr/bin/time (wall time, peak RSS); the order of the
# tools alternates between repetitions.  Figures are medians over the
# repetitions (the incremental: over every incremental of every
# repetition); stored bytes are du -sb of the store / output directory.
#
# Also measured: the CPU (model; SHA-256 and zstd per core on a sample of
# the image, lib-bench.sh nj_bench_rates); the hardware bounds on the same
# bytes (lib-bench.sh: nbdcopy from a qemu-nbd export to null:, and
# SHA-256 + zstd on all cores); the machine bound of each full (the CPU
# time it needs: the tool's own, user and system, plus what QEMU spent
# serving the export, from /proc/PID/stat, divided by the cores); one
# nightjar full per zstd level and with the adaptive default, on one more
# domain (the time-against-bytes curve); verify, prune and gc of the
# chain's store (chunks/s, MB/s, peak RSS); the incremental time with the same dirty bytes on an 8 GiB and
# a 256 GiB virtual disk (nightjar; N incrementals each); and dedup: the
# full of a second domain whose disk is a cp of the first's, into the same
# store.  --tiny: 64 MiB disk, 20 scattered writes + 1 MiB, 2 GiB for the
# scale part, levels 1 and 3 and auto for the curve, one repetition (the
# test suite runs it so it cannot rot).
set -euo pipefail

tiny=0 runs='' out=''
while [ $# -gt 0 ]; do
    case $1 in
    --tiny) tiny=1 ;;
    --runs) runs=$2; shift ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--tiny] [--runs N] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$runs" ] || runs=$((tiny ? 1 : 3))
[ "$runs" -ge 1 ] || { echo "bench-vs-peer: --runs must be >= 1" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib-bench.sh"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
date_start=$(date -u '+%Y-%m-%d %H:%M UTC')

for t in qemu-img qemu-nbd qemu-io nbdcopy jq bc virsh; do
    command -v $t >/dev/null || { echo "SKIP: $t not installed" >&2; exit 77; }
done
for t in virtnbdbackup virtnbdrestore; do
    command -v $t >/dev/null || { echo "SKIP: $t not installed (apt install virtnbdbackup)" >&2; exit 77; }
done
[ -x /usr/bin/time ] || { echo "SKIP: GNU time (/usr/bin/time) not installed" >&2; exit 77; }
nj_bench_build build-benchpeer
: "${NIGHTJAR_AGENT:?}" "${NIGHTJAR_RESTORE:?}" "${NJ_BENCH_COMPUTE:?}"

G=65536                 # dirty bitmap granularity
if [ $tiny = 1 ]; then
    vsize=$((64 << 20)) bin=$((20 << 20)) rnd=$((8 << 20)) rnd_at=$((40 << 20))
    nscat=20 seqlen=$((1 << 20)) big=$((2 << 30)) curve="1 3 auto"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nj-bench-tiny.XXXXXX")
    workroot=${TMPDIR:-/tmp}
else
    vsize=$((8 << 30)) bin=$((2867 << 20)) rnd=$((1 << 30)) rnd_at=$((5 << 30))
    nscat=2000 seqlen=$((64 << 20)) big=$((256 << 30)) curve="-5 -3 -1 1 2 3 6 auto"
    dir=${NJ_BENCH_DIR:-/var/tmp/nightjar-bench}
    workroot=${NJ_BENCH_WORK:-/var/tmp}
    mkdir -p "$dir"
fi
nsets=$((runs > 4 ? runs : 4))          # 4 for the chain, $runs for the scale part
dirty=$((nscat * G + seqlen))           # bytes dirtied by one write set

# The libvirt helpers of the test suite; they want $T and cleanup_hooks.
T=$(mktemp -d "$workroot/nj-bench-peer.XXXXXX")
cleanup_hooks=()
cleanup() {
    local rc=$? h
    for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
    [ -z "$nj_bench_qpid" ] || kill "$nj_bench_qpid" 2>/dev/null || true
    rm -rf "$T"
    [ $tiny = 0 ] || rm -rf "$dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
. "$here/../tests/integration/lib-libvirt.sh"
nj_require_libvirt
peer_py=$(sed -n '1s/^#! *//p' "$(command -v virtnbdbackup)")
${peer_py:-python3} -c 'import lz4.frame' 2>/dev/null \
    || { echo "SKIP: python3-lz4 missing (virtnbdbackup -z needs it)" >&2; exit 77; }
URI=$NJ_LIBVIRT_URI
QDEV=/machine/peripheral/ua-nj-vda/virtio-backend
tag=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')

t0=$SECONDS
say() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
die() { echo "bench-vs-peer: $*" >&2; exit 1; }

raw=$dir/image.raw img=$dir/image.qcow2
nj_bench_image "$dir" $vsize $bin $rnd $rnd_at
ncpu=$(nproc) clk=$(getconf CLK_TCK)
nj_bench_rates "$raw" "-3 1 3"
rates="SHA-256 $nj_rate_sha MB/s; zstd -3: ${nj_rate_zstd[-3]} MB/s, 1: ${nj_rate_zstd[1]} MB/s, 3: ${nj_rate_zstd[3]} MB/s (one core, 512 MiB of the image's data)"
say "CPU: $(nj_bench_machine); $rates"

# --- the write sets: data files (readable by QEMU) ---
say "generating $nsets write sets ($nscat x 4 KiB + $(numfmt --to=iec $seqlen) each)"
nj_bench_write_sets "$nsets" "$raw" "$bin"

nj_backup() {   # KEY DOMAIN STORE LEVEL [OPTION...]
    local key=$1 dom=$2 st=$3 lv=$4; shift 4
    timed "$key" "$NIGHTJAR_AGENT" backup -c "$URI" -s "$st" -d "$dom" -l "$lv" --json "$@"
    set -- "$key" "$dom" "$st" "$lv"
    [ "$(jq -r .level "$T/out")" = "$4" ] || die "$1: nightjar did a $(jq -r .level "$T/out"), not a $4"
    cp "$T/out" "$T/json-$1"
}
peer_backup() { # KEY DOMAIN DIR LEVEL
    local s
    timed "$1" virtnbdbackup -U "$URI" -d "$2" -l "$4" -o "$3" -z -n
    # virtnbdbackup does not fsync its files: how long would that take?
    s=$(date +%s.%N)
    find "$3" -type f -exec sync {} +
    M[${1/./.fsync.}]=$(echo "$(date +%s.%N) - $s" | bc)
}

# --- the comparison, $runs repetitions ---
verify_failed=0 coexist_peer='' coexist_nj=''
for ((r = 1; r <= runs; r++)); do
    dn=nj-bench-$tag-nj$r dp=nj-bench-$tag-peer$r
    S=$T/store-$r P=$T/peer-$r
    say "repetition $r: domains $dn and $dp"
    domain "$dn" $vsize "$img"
    domain "$dp" $vsize "$img"
    if [ $((r % 2)) = 1 ]; then order="nj peer"; else order="peer nj"; fi
    for tool in $order; do
        if [ "$tool" = nj ]; then cpu_timed "nj.full.$r" "$dn" nj_backup "nj.full.$r" "$dn" "$S" full; M[nj.stored.full.$r]=$(du_b "$S")
        else cpu_timed "peer.full.$r" "$dp" peer_backup "peer.full.$r" "$dp" "$P" full; M[peer.stored.full.$r]=$(du_b "$P"); fi
        say "  full $tool: ${M[$tool.full.$r]}"
    done
    for ((k = 1; k <= 4; k++)); do
        guest_writes $k "$dn" $vsize "$dp" $vsize
        for tool in $order; do
            if [ "$tool" = nj ]; then
                b=$(du_b "$S"); nj_backup "nj.inc$k.$r" "$dn" "$S" inc
                M[nj.stored.inc$k.$r]=$(($(du_b "$S") - b))
            else
                b=$(du_b "$P"); peer_backup "peer.inc$k.$r" "$dp" "$P" inc
                M[peer.stored.inc$k.$r]=$(($(du_b "$P") - b))
            fi
            say "  inc $k $tool: ${M[$tool.inc$k.$r]} (+${M[$tool.stored.inc$k.$r]} bytes)"
        done
    done
    for tool in $order; do
        if [ "$tool" = nj ]; then
            o=$T/restore-nj.qcow2 live=$(nj_image_path "$dn" vda)
            timed "nj.restore.$r" "$NIGHTJAR_RESTORE" restore -s "$S" -d "$dn" -b latest --disk vda -o "$o" -f qcow2
        else
            live=$(nj_image_path "$dp" vda)
            o=$T/restore-peer/$(basename "$live")
            timed "peer.restore.$r" virtnbdrestore -i "$P" -o "$T/restore-peer" -d vda -n -L "$T/peer-restore.log"
        fi
        if qemu-img compare -q -U -f qcow2 -F qcow2 "$live" "$o"; then
            M[$tool.verify.$r]=equal
        else
            M[$tool.verify.$r]=DIFFERENT verify_failed=1
            echo "bench-vs-peer: the $tool restore of repetition $r differs from the live disk" >&2
        fi
        say "  restore $tool: ${M[$tool.restore.$r]} (${M[$tool.verify.$r]} to the live disk)"
        rm -rf "$o" "$T/restore-peer"
    done
    # nightjar's store maintenance on the chain (full + 4 incrementals):
    # verify everything, prune to the last 2 points (merging the chain),
    # gc with no grace period.
    timed "nj.check.$r" "$NIGHTJAR_RESTORE" verify -s "$S" --json
    cp "$T/out" "$T/json-check.$r"
    timed "nj.prune.$r" "$NIGHTJAR_AGENT" prune -s "$S" -d "$dn" --keep-last 2 --json
    timed "nj.gc.$r" "$NIGHTJAR_AGENT" gc -s "$S" --grace 0 --json
    cp "$T/out" "$T/json-gc.$r"
    say "  verify ${M[nj.check.$r]}, prune ${M[nj.prune.$r]}, gc ${M[nj.gc.$r]}"
    if [ $r = 1 ]; then
        # Do the tools coexist on one domain?  nightjar backs up the peer's
        # domain (which has virtnbdbackup.N checkpoints), then the peer tries
        # an incremental there.
        if "$NIGHTJAR_AGENT" backup -c "$URI" -s "$T/coexist" -d "$dp" -l full --json > /dev/null 2> "$T/err"; then
            coexist_nj="nightjar backs up a domain that has virtnbdbackup's checkpoints (its own are named nightjar.<store>.<id>)"
        else
            coexist_nj="nightjar failed on a domain with virtnbdbackup's checkpoints: $(tail -n 1 "$T/err")"
        fi
        if virtnbdbackup -U "$URI" -d "$dp" -l inc -o "$P" -z -n > /dev/null 2> "$T/err"; then
            coexist_peer="virtnbdbackup took an incremental although nightjar's checkpoint was there"
        else
            coexist_peer="virtnbdbackup refuses: \"$(grep -o 'Foreign checkpoint found: \[[^]]*\]' "$T/err" | head -n 1 || tail -n 1 "$T/err")\""
        fi
        rm -rf "$T/coexist"
    fi
    nj_domain_remove "$dn"
    nj_domain_remove "$dp"
    rm -rf "$S" "$P"
done

# --- the bounds, on the same bytes; the compute bound at the level that
# compressed most of the first nightjar full ---
blevel=$(jq -r '.disks[0].compression | (.levels | max_by(.bytes) | .level) // .level_min' "$T/json-nj.full.1")
say "bounds: nbdcopy and SHA-256+zstd (level $blevel), $runs runs each"
nj_bench_bounds "$img" "$raw" "$runs" "$blevel"

# --- scale: the same dirty bytes on an 8 GiB and a $big disk; dedup ---
d8=nj-bench-$tag-s8 db=nj-bench-$tag-sbig dc=nj-bench-$tag-clone
D=$T/store-scale
say "scale and dedup: $d8 ($(numfmt --to=iec $vsize)), $db ($(numfmt --to=iec $big)), $dc (cp of $d8's disk)"
domain "$d8" $vsize "$img" nostart
domain "$dc" $vsize "$(nj_image_path "$d8" vda)"
nj_virsh start --paused "$d8" >/dev/null
domain "$db" $big "$img"
nj_backup scale.full8 "$d8" "$D" full
first_full=$(du_b "$D")
nj_backup dedup.clone "$dc" "$D" full
clone_added=$(($(du_b "$D") - first_full))
nj_domain_remove "$dc"
nj_backup scale.fullbig "$db" "$D" full
for ((k = 1; k <= runs; k++)); do
    guest_writes $k "$d8" $vsize "$db" $big
    if [ $((k % 2)) = 1 ]; then order="8 big"; else order="big 8"; fi
    for s in $order; do
        if [ "$s" = 8 ]; then nj_backup "scale.inc8.$k" "$d8" "$D" inc
        else nj_backup "scale.incbig.$k" "$db" "$D" inc; fi
        say "  inc $k on $s: ${M[scale.inc$s.$k]}"
    done
done
nj_domain_remove "$d8"
nj_domain_remove "$db"

# --- the curve: one nightjar full per zstd level, and the default ---
dl=nj-bench-$tag-curve
say "compression curve on $dl: levels $curve, $runs pass(es)"
domain "$dl" $vsize "$img"
for ((k = 1; k <= runs; k++)); do
    for l in $curve; do
        Ls=$T/store-curve
        if [ "$l" = auto ]; then nj_backup "curve.$l.$k" "$dl" "$Ls" full
        else nj_backup "curve.$l.$k" "$dl" "$Ls" full --zstd-level "$l"; fi
        M[curve.stored.$l.$k]=$(du_b "$Ls")
        cp "$T/out" "$T/json-curve.$l.$k"
        rm -rf "$Ls"
        say "  level $l: ${M[curve.$l.$k]} s, $(hb "${M[curve.stored.$l.$k]}")"
    done
done
nj_domain_remove "$dl"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the report ---
med() {  # KEY-PREFIX FIELD(1=seconds 2=rss): median over the repetitions
    local p=$1 f=${2:-1} i
    for ((i = 1; i <= runs; i++)); do echo "${M[$p.$i]}"; done | cut -d' ' -f"$f" | nj_bench_median
}
medinc() {  # TOOL FIELD: median over every incremental of every repetition
    local k i
    for ((k = 1; k <= 4; k++)); do for ((i = 1; i <= runs; i++)); do echo "${M[$1.inc$k.$i]}"; done; done \
        | cut -d' ' -f"$2" | nj_bench_median
}
medstored() {  # TOOL STEP
    local i
    for ((i = 1; i <= runs; i++)); do echo "${M[$1.stored.$2.$i]}"; done | nj_bench_median
}
medstoredinc() {
    local k i
    for ((k = 1; k <= 4; k++)); do for ((i = 1; i <= runs; i++)); do echo "${M[$1.stored.inc$k.$i]}"; done; done \
        | nj_bench_median
}
rssmax() {  # TOOL: peak RSS in KiB over every backup and restore
    local k
    for k in "${!M[@]}"; do
        case $k in
        *.cpu) ;;
        "$1".full.* | "$1".inc*.* | "$1".restore.*) echo "${M[$k]}" | cut -d' ' -f2 ;;
        esac
    done | nj_bench_max
}
ratio() { echo "$1 / $2" | bc -l; }
f2() { printf '%.2f' "$1"; }
f3() { printf '%.3f' "$1"; }
mib() { echo $(( ($1 + 1023) / 1024 ))" MiB"; }

nf=$(med nj.full) pf=$(med peer.full) ni=$(medinc nj 1) pi=$(medinc peer 1)
nr=$(med nj.restore) pr=$(med peer.restore)
nsf=$(medstored nj full) psf=$(medstored peer full)
nsi=$(medstoredinc nj) psi=$(medstoredinc peer)
nrss=$(rssmax nj) prss=$(rssmax peer)
s8=$(med scale.inc8) sb=$(med scale.incbig)
# The machine bound of each full: (the tool's CPU + QEMU's CPU) / cores,
# and the wall time's fraction of it; medians over the repetitions.
for t in nj peer; do
    for ((i = 1; i <= runs; i++)); do
        read -r c q <<<"${M[$t.full.$i.cpu]}"
        M[$t.mbound.$i]=$(echo "($c + $q) / $ncpu" | bc -l)
        M[$t.mfrac.$i]=$(echo "${M[$t.mbound.$i]} / $(cut -d' ' -f1 <<<"${M[$t.full.$i]}")" | bc -l)
        M[$t.owncpu.$i]=$c M[$t.qemucpu.$i]=$q
    done
done
nmb=$(med nj.mbound) nmf=$(med nj.mfrac) pmb=$(med peer.mbound)
nown=$(med nj.owncpu) nq=$(med nj.qemucpu) pown=$(med peer.owncpu) pq=$(med peer.qemucpu)
# the curve
curve_row() {  # LEVEL
    local l=$1 t b i mix=''
    t=$(med "curve.$l")
    b=$(for ((i = 1; i <= runs; i++)); do echo "${M[curve.stored.$l.$i]}"; done | nj_bench_median)
    if [ "$l" = auto ]; then
        mix=$(jq -r '.disks[0].compression | ([.levels[].bytes] | add) as $t
            | [.levels[] | "\(.level): \(100 * .bytes / $t | floor) %"] | join(", ")' "$T/json-curve.auto.1")
        mix=" (default; plaintext compressed per level: $mix)"
    fi
    echo "| $l$mix | $(f2 "$t") | $(hb "$b") | $(f2 "$(ratio "$t" "$pf")") | $(f2 "$(ratio "$b" "$psf")") |"
}
# store maintenance
vchunks=$(jq .chunks "$T/json-check.1") vbytes=$(jq .bytes "$T/json-check.1")
gscan=$(jq '.chunks_kept + .chunks_freed' "$T/json-gc.1") gfreed=$(jq .chunks_freed "$T/json-gc.1")
vt=$(med nj.check) pt=$(med nj.prune) gt=$(med nj.gc)
mrss=$(for k in check prune gc; do for ((i = 1; i <= runs; i++)); do cut -d' ' -f2 <<<"${M[nj.$k.$i]}"; done; done | nj_bench_max)
mbs() { printf '%.0f' "$(echo "$vsize / $1 / 1000000" | bc -l)"; }
pass() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "**pass**"; else echo "**FAIL**"; fi; }
virt=$(case $NJ_VIRT_TYPE in kvm) echo KVM ;; *) echo "TCG (no usable KVM)" ;; esac)
rev=$(git -C "$here/.." describe --always --dirty 2>/dev/null || echo unknown)

tab=$T/table.md
{
    echo "### nightjar vs virtnbdbackup, $date_start"
    echo
    echo "Machine: $(nj_bench_machine), $virt, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r)."
    echo "Per core: $rates."
    echo "nightjar $rev (release build); virtnbdbackup $(virtnbdbackup -V 2>&1 | tail -n 1);" \
        "$(qemu-img --version | head -n 1 | sed 's/ (.*//'); libvirt $(nj_virsh version --daemon 2>/dev/null | sed -n 's/.*daemon: *[^0-9]*\([0-9.]*\).*/\1/p' | head -n 1)."
    echo
    echo "Disk: $(hb $vsize) virtual qcow2, $(hb "$nj_bound_data") non-zero in 4 MiB cells (binaries from /usr, $(hb $rnd) random, the rest zero)."
    echo "Each incremental follows one write set: $nscat scattered 4 KiB writes (distinct 64 KiB blocks) and one $(hb $seqlen) sequential write, half random and half binary data ($(hb $dirty) dirty in the bitmap)."
    echo "Median of $runs repetitions (incrementals: of all $((4 * runs))). Every timed command ran after a sync; wall time and peak RSS from /usr/bin/time."
    echo
    echo "| step | nightjar | virtnbdbackup -z | nightjar / peer |"
    echo "|---|---|---|---|"
    echo "| full backup, seconds | $(f2 "$nf") | $(f2 "$pf") | $(f2 "$(ratio "$nf" "$pf")") |"
    echo "| store after the full | $(hb "$nsf") | $(hb "$psf") | $(f2 "$(ratio "$nsf" "$psf")") |"
    echo "| incremental, seconds | $(f2 "$ni") | $(f2 "$pi") | $(f2 "$(ratio "$ni" "$pi")") |"
    echo "| incremental, bytes added | $(hb "$nsi") | $(hb "$psi") | $(f2 "$(ratio "$nsi" "$psi")") |"
    echo "| restore of the latest point to qcow2, seconds | $(f2 "$nr") | $(f2 "$pr") | $(f2 "$(ratio "$nr" "$pr")") |"
    echo "| peak RSS, backups and restores | $(mib "$nrss") | $(mib "$prss") | $(f2 "$(ratio "$nrss" "$prss")") |"
    echo
    verdict() { local i v=; for ((i = 1; i <= runs; i++)); do v+="${v:+, }${M[$1.verify.$i]}"; done; echo "$v"; }
    echo "Every restore was compared with the live disk (qemu-img compare -U after a flush), repetition by repetition: nightjar $(verdict nj); virtnbdbackup $(verdict peer)."
    echo
    echo "Per step (median seconds; bytes added to the store):"
    echo
    echo "| step | nightjar s | virtnbdbackup s | nightjar bytes | virtnbdbackup bytes |"
    echo "|---|---|---|---|---|"
    echo "| full | $(f2 "$nf") | $(f2 "$pf") | $(hb "$nsf") | $(hb "$psf") |"
    for ((k = 1; k <= 4; k++)); do
        echo "| inc $k | $(f2 "$(med nj.inc$k)") | $(f2 "$(med peer.inc$k)") | $(hb "$(medstored nj inc$k)") | $(hb "$(medstored peer inc$k)") |"
    done
    echo "| restore | $(f2 "$nr") | $(f2 "$pr") | | |"
    echo
    echo "Bounds on the same bytes (median of $runs):"
    echo
    echo "| measure | seconds | MB/s of virtual disk |"
    echo "|---|---|---|"
    echo "| nbdcopy from qemu-nbd to null: (NBD read bound) | $(f2 "$nj_bound_copy") | $(mbs "$nj_bound_copy") |"
    echo "| SHA-256 + zstd level $blevel on all cores (compute bound) | $(f2 "$nj_bound_cpu") | $(mbs "$nj_bound_cpu") |"
    echo "| nightjar full backup | $(f2 "$nf") | $(mbs "$nf") |"
    echo "| virtnbdbackup -z full backup | $(f2 "$pf") | $(mbs "$pf") |"
    echo
    echo "Machine bound of a full (median of $runs): the CPU time it needs, the tool's own (user + system: hashing, compression, its share of the kernel's copies) plus what QEMU spent serving the export, divided by the $ncpu cores. A full that keeps every core busy with its own work runs at 100 %."
    echo
    echo "| tool | own CPU s | QEMU CPU s | machine bound s | wall s | bound / wall |"
    echo "|---|---|---|---|---|---|"
    echo "| nightjar | $(f2 "$nown") | $(f2 "$nq") | $(f2 "$nmb") | $(f2 "$nf") | $(printf '%.0f' "$(echo "100 * $nmf" | bc -l)") % |"
    echo "| virtnbdbackup -z | $(f2 "$pown") | $(f2 "$pq") | $(f2 "$pmb") | $(f2 "$pf") | $(printf '%.0f' "$(echo "100 * $(med peer.mfrac)" | bc -l)") % |"
    echo
    echo "Compression level against time and bytes: nightjar fulls of one more domain (a fresh copy of the image), into an empty store each, at each forced level (--zstd-level N) and with the adaptive default; median of $runs; ratios to the peer's median full above."
    echo
    echo "| zstd level | full, seconds | store | time / peer | bytes / peer |"
    echo "|---|---|---|---|---|"
    for l in $curve; do curve_row "$l"; done
    echo
    echo "Store maintenance on the chain's store (full + 4 incrementals; median of $runs): verify read and checked $vchunks chunks, $(hb "$vbytes") of plaintext, in $(f2 "$vt") s ($(printf '%.0f' "$(echo "$vchunks / $vt" | bc -l)") chunks/s, $(printf '%.0f' "$(echo "$vbytes / $vt / 1000000" | bc -l)") MB/s); prune --keep-last 2 took $(f2 "$pt") s; gc looked at $gscan chunks and freed $gfreed in $(f2 "$gt") s ($(printf '%.0f' "$(echo "$gscan / $gt" | bc -l)") chunks/s); peak RSS of the three $(mib "$mrss")."
    echo
    echo "Scale (nightjar; the same $(hb $dirty) dirty, scattered over the whole disk; median of $runs incrementals):" \
        "$(hb $vsize): $(f2 "$s8") s, $(hb $big): $(f2 "$sb") s, ratio $(f2 "$(ratio "$sb" "$s8")")." \
        "Bytes read by the first incremental: $(hb "$(jq .disks[0].bytes_read "$T/json-scale.inc8.1")") and $(hb "$(jq .disks[0].bytes_read "$T/json-scale.incbig.1")")."
    echo
    echo "Dedup (nightjar): the first full stored $(hb "$first_full"); the full of a second domain whose disk is a cp of the first's added $(hb "$clone_added") to the same store ($(printf '%.2f' "$(echo "100 * $clone_added / $first_full" | bc -l)") %)."
    echo
    echo "| target | measured | goal | |"
    echo "|---|---|---|---|"
    echo "| full backup wall time | $(f3 "$(ratio "$nf" "$pf")") x peer | <= 0.4 | $(pass "$nf <= 0.4 * $pf") |"
    echo "| store bytes after the full | $(f3 "$(ratio "$nsf" "$psf")") x peer | <= 0.85 | $(pass "$nsf <= 0.85 * $psf") |"
    echo "| where both cannot hold: full time and store | $(f3 "$(ratio "$nf" "$pf")") x and $(f3 "$(ratio "$nsf" "$psf")") x peer | <= 0.5 and <= 0.9 | $(pass "$nf <= 0.5 * $pf && $nsf <= 0.9 * $psf") |"
    echo "| incremental wall time | $(f3 "$(ratio "$ni" "$pi")") x peer | <= 0.5 | $(pass "$ni <= 0.5 * $pi") |"
    echo "| incremental stored bytes | $(f3 "$(ratio "$nsi" "$psi")") x peer | <= 1.0 | $(pass "$nsi <= $psi") |"
    echo "| restore of the latest point | $(f3 "$(ratio "$nr" "$pr")") x peer | <= 0.4 | $(pass "$nr <= 0.4 * $pr") |"
    echo "| peak RSS, backup and restore | $(mib "$nrss") | <= 64 MiB | $(pass "$nrss <= 65536") |"
    echo "| peak RSS, verify, prune and gc | $(mib "$mrss") | <= 64 MiB | $(pass "$mrss <= 65536") |"
    echo "| incremental, $(hb $big) vs $(hb $vsize) | $(f3 "$(ratio "$sb" "$s8")") x | <= 1.3 | $(pass "$sb <= 1.3 * $s8") |"
    echo "| clone's full added to the store | $(printf '%.2f' "$(echo "100 * $clone_added / $first_full" | bc -l)") % of the first full | <= 2 % | $(pass "$clone_added <= 0.02 * $first_full") |"
    echo "| full backup, machine bound / wall time | $(printf '%.0f' "$(echo "100 * $nmf" | bc -l)") % | >= 85 % | $(pass "$nmf >= 0.85") |"
    echo "| (for reference) compute bound / wall time | $(printf '%.0f' "$(echo "100 * $nj_bound_cpu / $nf" | bc -l)") % | | |"
    echo
    echo "Each repetition (seconds; full, inc 1-4, restore):"
    echo
    echo "| rep | nightjar | virtnbdbackup |"
    echo "|---|---|---|"
    for ((i = 1; i <= runs; i++)); do
        row() { local s=; for st in full inc1 inc2 inc3 inc4 restore; do s+="$(cut -d' ' -f1 <<<"${M[$1.$st.$i]}") "; done; echo "${s% }"; }
        echo "| $i | $(row nj) | $(row peer) |"
    done
    echo
    echo "- Coexistence on one domain: $coexist_nj; $coexist_peer. So each tool got its own domain, a fresh copy of the same image, with the same writes."
    echo "- virtnbdbackup never fsyncs what it writes; nightjar makes its chunks durable (syncfs) before it commits, and pays for it in its wall time. An fsync of the peer's files right after its full took $(f2 "$(med peer.fsync.full)") s more (median; not counted above)."
    echo "- Load average (1, 5, 15 min) at the start: $load_start; at the end: $load_end (other jobs may share the machine)."
    echo "- Run time of the benchmark: $(((SECONDS - t0) / 60)) min. Command: bash benchmarks/bench-vs-peer.sh$([ $tiny = 1 ] && echo ' --tiny') --runs $runs."
} > "$tab"
cat "$tab"
[ -z "$out" ] || cp "$tab" "$out"
[ $verify_failed = 0 ] || die "a restore differs from the live disk"
