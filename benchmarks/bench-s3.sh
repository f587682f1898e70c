#!/bin/bash
# nightjar to a directory store and to S3 on a local Ceph, against
# virtnbdbackup -z followed by rclone copy of its output to the same bucket
# (what a virtnbdbackup user does today), on real libvirt domains, in one
# run:
#
#   bash benchmarks/bench-s3.sh [--tiny] [--runs N] [--out FILE]
#
# As root, with libvirtd, QEMU, virtnbdbackup, rclone and Ceph's packages
# (scripts/install-deps.sh has them all).  Starts its own single-node Ceph
# (scripts/ceph-start.sh: memstore, radosgw on 127.0.0.1:7490) in a scratch
# directory and stops it at the end.
#
# The disk is bench-vs-peer.sh's (lib-bench.sh: 8 GiB virtual, about
# 2.8 GiB of binaries, 1 GiB random, zeros), cached in $NJ_BENCH_DIR.  One
# repetition: a nightjar domain and a peer domain, each a fresh copy;
#   full: nightjar -> directory, nightjar -> s3://nj-bench/nj-RUN, and
#         virtnbdbackup -z -> directory, then rclone copy -> s3://nj-bench/peer-RUN;
#   2 x (the same write set on both domains, then the same three incrementals);
#   restore of the latest point to qcow2 from the directory and from S3,
#   each compared (qemu-img compare) with the live disk.
# The nightjar domain is backed up into both stores: each store keeps its
# own checkpoint chain (checkpoints are named per store), so the two
# incrementals carry exactly the same changes.  Bytes sent: nightjar's own
# count of request bodies (--json "transfer"), rclone's (its stats);
# requests: nightjar's count.  Ceph's CPU (mon, osd, radosgw, from
# /proc/PID/stat) is measured over each S3 step, as it shares the cores.
# Figures are medians over the repetitions.  --tiny: the 64 MiB disk of
# bench-vs-peer --tiny, for the test suite.
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
[ "$runs" -ge 1 ] || { echo "bench-s3: --runs must be >= 1" >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib-bench.sh"
date_start=$(date -u '+%Y-%m-%d %H:%M UTC')
for t in qemu-img qemu-nbd qemu-io jq bc virsh rclone ceph-mon ceph-osd radosgw; do
    command -v $t >/dev/null || { echo "SKIP: $t not installed (scripts/install-deps.sh)" >&2; exit 77; }
done
for t in virtnbdbackup virtnbdrestore; do
    command -v $t >/dev/null || { echo "SKIP: $t not installed (apt install virtnbdbackup)" >&2; exit 77; }
done
[ -x /usr/bin/time ] || { echo "SKIP: GNU time (/usr/bin/time) not installed" >&2; exit 77; }
nj_bench_build build-benchpeer
: "${NIGHTJAR_AGENT:?}" "${NIGHTJAR_RESTORE:?}"

G=65536
if [ $tiny = 1 ]; then
    vsize=$((64 << 20)) bin=$((20 << 20)) rnd=$((8 << 20)) rnd_at=$((40 << 20))
    nscat=20 seqlen=$((1 << 20)) osd_gb=2
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nj-bench-s3-tiny.XXXXXX")
    workroot=${TMPDIR:-/tmp}
else
    vsize=$((8 << 30)) bin=$((2867 << 20)) rnd=$((1 << 30)) rnd_at=$((5 << 30))
    nscat=2000 seqlen=$((64 << 20)) osd_gb=${NJ_BENCH_OSD_GB:-14}
    dir=${NJ_BENCH_DIR:-/var/tmp/nightjar-bench}
    workroot=${NJ_BENCH_WORK:-/var/tmp}
    mkdir -p "$dir"
fi
ninc=2
dirty=$((nscat * G + seqlen))

T=$(mktemp -d "$workroot/nj-bench-s3.XXXXXX")
cleanup_hooks=()
cleanup() {
    local rc=$? h
    for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
    NJ_CEPH_DIR=$T/ceph bash "$here/../scripts/ceph-stop.sh" >/dev/null 2>&1 || true
    rm -rf "$T"
    [ $tiny = 0 ] || rm -rf "$dir"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
. "$here/../tests/integration/lib-libvirt.sh"
nj_require_libvirt
URI=$NJ_LIBVIRT_URI
QDEV=/machine/peripheral/ua-nj-vda/virtio-backend
tag=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
clk=$(getconf CLK_TCK) ncpu=$(nproc)
t0=$SECONDS
say() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
die() { echo "bench-s3: $*" >&2; exit 1; }

raw=$dir/image.raw img=$dir/image.qcow2
nj_bench_image "$dir" $vsize $bin $rnd $rnd_at
say "generating $ninc write sets"
nj_bench_write_sets $ninc "$raw" "$bin"

# --- the local Ceph, and both tools pointed at it ---
say "starting Ceph (memstore $osd_gb GiB)"
ceph_env=$(NJ_CEPH_DIR=$T/ceph NJ_CEPH_PORT=7490 NJ_CEPH_OSD_GB=$osd_gb bash "$here/../scripts/ceph-start.sh")
while IFS= read -r line; do export "$line"; done <<< "$ceph_env"
export AWS_ENDPOINT_URL=$NJ_TEST_S3_ENDPOINT AWS_REGION=$NJ_TEST_S3_REGION
export AWS_ACCESS_KEY_ID=$NJ_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$NJ_TEST_S3_SECRET_KEY
export AWS_SHARED_CREDENTIALS_FILE=$T/no-credentials
export RCLONE_CONFIG_NJ_TYPE=s3 RCLONE_CONFIG_NJ_PROVIDER=Ceph
export RCLONE_CONFIG_NJ_ENDPOINT=$NJ_TEST_S3_ENDPOINT RCLONE_CONFIG_NJ_REGION=$NJ_TEST_S3_REGION
export RCLONE_CONFIG_NJ_ACCESS_KEY_ID=$NJ_TEST_S3_ACCESS_KEY
export RCLONE_CONFIG_NJ_SECRET_ACCESS_KEY=$NJ_TEST_S3_SECRET_KEY
# rclone refuses a CA bundle with its plain-HTTP transport
rclone_() { env -u AWS_CA_BUNDLE rclone "$@"; }
rclone_ mkdir nj:nj-bench

# ceph_ticks: CPU clock ticks of the Ceph daemons so far
ceph_ticks() {
    local f pid n=0
    for f in "$T"/ceph/run/*.pid; do
        pid=$(cat "$f") || continue
        [ -r "/proc/$pid/stat" ] || continue
        n=$((n + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    echo $n
}
nj_step() {     # KEY DOMAIN STORE LEVEL
    local key=$1 c0
    c0=$(ceph_ticks)
    timed "$key" "$NIGHTJAR_AGENT" backup -c "$URI" -s "$3" -d "$2" -l "$4" --json
    [ "$(jq -r .level "$T/out")" = "$4" ] || die "$key: nightjar did a $(jq -r .level "$T/out"), not a $4"
    cp "$T/out" "$T/json-$key"
    M[$key.ceph]=$(echo "($(ceph_ticks) - $c0) / $clk" | bc -l)
}
peer_step() {   # KEY DOMAIN DIR LEVEL RUN
    local key=$1 c0
    timed "$key" virtnbdbackup -U "$URI" -d "$2" -l "$4" -o "$3" -z -n
    c0=$(ceph_ticks)
    timed "$key.copy" env -u AWS_CA_BUNDLE rclone copy "$3" "nj:nj-bench/peer-$5" \
        --use-json-log --stats 1h --stats-log-level NOTICE -v
    M[$key.sent]=$(grep '"stats"' "$T/err" | tail -n 1 | jq '.stats.bytes')
    M[$key.ceph]=$(echo "($(ceph_ticks) - $c0) / $clk" | bc -l)
}
sent() { jq '.transfer.bytes_sent' "$T/json-$1"; }
requests() { jq '.transfer.requests' "$T/json-$1"; }

verify_failed=0
for ((r = 1; r <= runs; r++)); do
    dn=nj-bench-$tag-s3nj$r dp=nj-bench-$tag-s3peer$r
    S=$T/store-$r U=s3://nj-bench/nj-$r P=$T/peer-$r
    say "repetition $r: domains $dn and $dp"
    domain "$dn" $vsize "$img"
    domain "$dp" $vsize "$img"
    nj_step "dir.full.$r" "$dn" "$S" full
    nj_step "s3.full.$r" "$dn" "$U" full
    peer_step "peer.full.$r" "$dp" "$P" full $r
    say "  full: dir ${M[dir.full.$r]}, s3 ${M[s3.full.$r]} ($(sent "s3.full.$r") bytes sent), peer ${M[peer.full.$r]} + rclone ${M[peer.full.$r.copy]} (${M[peer.full.$r.sent]} bytes)"
    for ((k = 1; k <= ninc; k++)); do
        guest_writes $k "$dn" $vsize "$dp" $vsize
        # the domain's newest checkpoint is the S3 store's; the directory
        # store's incremental reads its own checkpoint, as dirty
        nj_step "dir.inc$k.$r" "$dn" "$S" inc
        nj_step "s3.inc$k.$r" "$dn" "$U" inc
        peer_step "peer.inc$k.$r" "$dp" "$P" inc $r
        say "  inc $k: dir ${M[dir.inc$k.$r]}, s3 ${M[s3.inc$k.$r]}, peer ${M[peer.inc$k.$r]} + ${M[peer.inc$k.$r.copy]}"
    done
    live=$(nj_image_path "$dn" vda)
    for st in dir s3; do
        if [ $st = dir ]; then src=$S; else src=$U; fi
        o=$T/restore-$st.qcow2
        c0=$(ceph_ticks)
        timed "$st.restore.$r" "$NIGHTJAR_RESTORE" restore -s "$src" -d "$dn" -b latest --disk vda -o "$o" -f qcow2
        M[$st.restore.$r.ceph]=$(echo "($(ceph_ticks) - $c0) / $clk" | bc -l)
        if qemu-img compare -q -U -f qcow2 -F qcow2 "$live" "$o"; then
            M[$st.verify.$r]=equal
        else
            M[$st.verify.$r]=DIFFERENT verify_failed=1
            echo "bench-s3: the restore from $st of repetition $r differs from the live disk" >&2
        fi
        say "  restore from $st: ${M[$st.restore.$r]} (${M[$st.verify.$r]})"
        rm -f "$o"
    done
    nj_virsh destroy "$dn" >/dev/null 2>&1 || true
    nj_virsh destroy "$dp" >/dev/null 2>&1 || true
    # memstore keeps every object in RAM: a repetition's objects go before
    # the next one writes its own
    rclone_ purge "nj:nj-bench/nj-$r" 2>/dev/null || true
    rclone_ purge "nj:nj-bench/peer-$r" 2>/dev/null || true
    rm -rf "$S" "$P"
done

# --- the report ---
med() { # KEY-PREFIX (e.g. s3.full): median seconds over the repetitions
    local r; for ((r = 1; r <= runs; r++)); do echo "${M[$1.$r]%% *}"; done | nj_bench_median
}
medv() { # KEY-PREFIX SUFFIX: median of M[KEY.r.SUFFIX]
    local r; for ((r = 1; r <= runs; r++)); do echo "${M[$1.$r.$2]}"; done | nj_bench_median
}
medsent() { local r; for ((r = 1; r <= runs; r++)); do sent "$1.$r"; done | nj_bench_median; }
medinc() { # TOOL: median over every incremental of every repetition
    local r k; for ((r = 1; r <= runs; r++)); do for ((k = 1; k <= ninc; k++)); do echo "${M[$1.inc$k.$r]%% *}"; done; done | nj_bench_median
}
medinc_v() { local r k; for ((r = 1; r <= runs; r++)); do for ((k = 1; k <= ninc; k++)); do echo "${M[$1.inc$k.$r.$2]}"; done; done | nj_bench_median; }
medinc_sent() { local r k; for ((r = 1; r <= runs; r++)); do for ((k = 1; k <= ninc; k++)); do sent "s3.inc$k.$r"; done; done | nj_bench_median; }
rss() { local r m=0 v; for key in "$@"; do for ((r = 1; r <= runs; r++)); do v=${M[$key.$r]#* }; v=${v%% *}; [ "$v" -gt $m ] && m=$v; done; done; echo $m; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
pass() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo "**pass**"; else echo "**miss**"; fi; }

dfull=$(med dir.full) sfull=$(med s3.full)
pfull=$(med peer.full)
pcopy=$(for ((r = 1; r <= runs; r++)); do echo "${M[peer.full.$r.copy]%% *}"; done | nj_bench_median)
ptotal=$(echo "$pfull + $pcopy" | bc -l)
ssent=$(medsent s3.full) psent=$(medv peer.full sent)
dinc=$(medinc dir) sinc=$(medinc s3) pinc=$(medinc peer)
pinc_copy=$(for ((r = 1; r <= runs; r++)); do for ((k = 1; k <= ninc; k++)); do echo "${M[peer.inc$k.$r.copy]%% *}"; done; done | nj_bench_median)
sinc_sent=$(medinc_sent) pinc_sent=$(medinc_v peer sent)
drest=$(med dir.restore) srest=$(med s3.restore)
sreq=$(for ((r = 1; r <= runs; r++)); do requests "s3.full.$r"; done | nj_bench_median)
data_gib=$(echo "$(jq '.disks[0].bytes_read' "$T/json-s3.full.1") / 1073741824" | bc -l)
{
echo "# nightjar to S3 (local Ceph) against virtnbdbackup + rclone"
echo
echo "Generated by \`benchmarks/bench-s3.sh$([ $tiny = 1 ] && echo ' --tiny') --runs $runs\` on $date_start; $(nj_bench_machine), $ncpu cores; Ceph 16 single node (memstore, radosgw beast on loopback) on the same cores. Disk: $(hb $vsize) virtual, $(hb "$(jq '.disks[0].bytes_read' "$T/json-s3.full.1")") of data read by a full. Medians of $runs repetition(s); times in seconds."
echo
echo "| step | nightjar → dir | nightjar → S3 | virtnbdbackup -z | + rclone copy | peer total |"
echo "|---|---|---|---|---|---|"
echo "| full | $dfull | $sfull | $pfull | $pcopy | $ptotal |"
echo "| incremental | $dinc | $sinc | $pinc | $pinc_copy | $(echo "$pinc + $pinc_copy" | bc -l) |"
echo "| restore (qcow2) | $drest | $srest | | | |"
echo
echo "| bytes sent to S3 | nightjar | peer (rclone) | ratio |"
echo "|---|---|---|---|"
echo "| full | $(hb "$ssent") | $(hb "$psent") | $(ratio "$ssent" "$psent") |"
echo "| incremental | $(hb "$sinc_sent") | $(hb "$pinc_sent") | $(ratio "$sinc_sent" "$pinc_sent") |"
echo
echo "- nightjar's full to S3: $sreq requests in all; per GiB of disk data read: $(printf '%.0f' "$(echo "$sreq / $data_gib" | bc -l)") requests and $(hb "$(echo "$ssent / $data_gib" | bc)") sent."
echo "- Ceph's daemons' CPU: $(printf '%.1f' "$(medv s3.full ceph)") s during nightjar's full to S3, $(printf '%.1f' "$(medv peer.full ceph)") s during rclone's copy of the peer's full, $(printf '%.1f' "$(medv s3.restore ceph)") s during the restore from S3."
echo "- Peak RSS: nightjar backup to S3 $(( $(rss s3.full s3.inc1) / 1024 )) MiB, to the directory $(( $(rss dir.full dir.inc1) / 1024 )) MiB; restore from S3 $(( $(rss s3.restore) / 1024 )) MiB."
echo "- Restores compared with the live disk: dir ${M[dir.verify.1]}, S3 ${M[s3.verify.1]}$([ "$verify_failed" = 1 ] && echo ' (SOME DIFFER)')."
echo
echo "| target | measured | |"
echo "|---|---|---|"
echo "| full to S3 ≤ 0.5× the peer's backup + copy time | $(ratio "$sfull" "$ptotal")× | $(pass "$sfull <= 0.5 * $ptotal") |"
echo "| full to S3 ≤ 0.85× the peer's bytes sent | $(ratio "$ssent" "$psent")× | $(pass "$ssent <= 0.85 * $psent") |"
echo "| incremental ≤ 1.0× the peer's bytes sent | $(ratio "$sinc_sent" "$pinc_sent")× | $(pass "$sinc_sent <= $pinc_sent") |"
echo "| backup through S3 ≥ 0.8× the directory's throughput | $(ratio "$dfull" "$sfull")× | $(pass "$dfull >= 0.8 * $sfull") |"
echo "| restore through S3 ≥ 0.8× the directory's throughput | $(ratio "$drest" "$srest")× | $(pass "$drest >= 0.8 * $srest") |"
} > "$T/report"
cat "$T/report"
[ -z "$out" ] || cp "$T/report" "$out"
[ "$verify_failed" = 0 ]
