#!/bin/bash
# Datapath benchmark: nightjar-agent import of a realistic image against
# the hardware bounds measured on the same bytes in the same run.
#
#   bash benchmarks/bench-datapath.sh [--tiny] [--runs N] [--sweep] [--out FILE]
#
# The image (generated, never committed; cached in $NJ_BENCH_DIR) is 8 GiB
# virtual: about 2.8 GiB of real binaries from /usr, 1 GiB of random
# data, the rest zero, as qcow2.  --tiny makes a 64 MiB one (the test
# suite runs that, so the script cannot rot).
#
# Bounds: nbdcopy from the same qemu-nbd export to null: (NBD reads), and
# nj-bench-compute (SHA-256 + zstd at the chosen level on all cores, the
# datapath's per-byte work without I/O).  A backup cannot beat the slower
# of the two; the target is import time <= bound time / 0.85.
set -euo pipefail

tiny=0 runs=3 sweep=0 out=
while [ $# -gt 0 ]; do
    case $1 in
    --tiny) tiny=1 ;;
    --runs) runs=$2; shift ;;
    --sweep) sweep=1 ;;
    --out) out=$2; shift ;;
    *) echo "usage: $0 [--tiny] [--runs N] [--sweep] [--out FILE]" >&2; exit 2 ;;
    esac
    shift
done

. "$(dirname "$0")/lib-bench.sh"
nj_bench_build build-bench
: "${NJ_BENCH_COMPUTE:?}"
for t in qemu-img qemu-nbd nbdcopy jq; do
    command -v $t >/dev/null || { echo "SKIP: $t not installed" >&2; exit 77; }
done
[ -x /usr/bin/time ] || { echo "SKIP: GNU time (/usr/bin/time) not installed" >&2; exit 77; }

if [ $tiny = 1 ]; then
    vsize=$((64 << 20)) bin=$((20 << 20)) rnd=$((8 << 20)) rnd_at=$((40 << 20))
    dir=$(mktemp -d "${TMPDIR:-/tmp}/nj-bench-tiny.XXXXXX")
    trap 'rm -rf "$dir"' EXIT
else
    vsize=$((8 << 30)) bin=$((2867 << 20)) rnd=$((1 << 30)) rnd_at=$((5 << 30))
    dir=${NJ_BENCH_DIR:-/var/tmp/nightjar-bench}
    mkdir -p "$dir"
fi
raw=$dir/image.raw img=$dir/image.qcow2
nj_bench_image "$dir" $vsize $bin $rnd $rnd_at

work=$(mktemp -d "${TMPDIR:-/tmp}/nj-bench-work.XXXXXX")
cleanup() { [ -z "$nj_bench_qpid" ] || kill "$nj_bench_qpid" 2>/dev/null; rm -rf "$work"; }
trap 'cleanup; [ $tiny = 1 ] && rm -rf "$dir"' EXIT

median() { nj_bench_median; }

# --- the bounds: nbdcopy from the same kind of qemu-nbd export, and
# compute on the same bytes ---
nj_bench_bounds "$img" "$raw" "$runs"
copy=$nj_bound_copy cpu=$nj_bound_cpu

# --- nightjar-agent import ---
t_imp=() rss=()
for i in $(seq $runs); do
    rm -rf "$work/store"
    /usr/bin/time -f "%e %M" -o "$work/time" \
        "$NIGHTJAR_AGENT" import -s "$work/store" -d bench --disk vda --json "$img" > "$work/imp.json"
    read -r t m < "$work/time"
    t_imp+=("$t"); rss+=("$m")
done
imp=$(printf '%s\n' "${t_imp[@]}" | median)
rss_max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
stored=$(jq '.disks[0].bytes_stored' "$work/imp.json")
store_du=$(du -sb "$work/store" | cut -f1)
data=$nj_bound_data

bound=$(echo "if ($copy > $cpu) $copy else $cpu" | bc -l)
ratio=$(echo "$bound / $imp" | bc -l)
mbs() { echo "$vsize / $1 / 1000000" | bc -l | xargs printf '%.0f'; }

{
    echo "### Datapath benchmark, $(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)"
    echo
    echo "Image: $(numfmt --to=iec $vsize) virtual, $(numfmt --to=iec $data) non-zero (binaries from /usr + random), qcow2. Median of $runs runs."
    echo
    echo "| measure | seconds | MB/s of virtual disk |"
    echo "|---|---|---|"
    printf '| nbdcopy to null: (NBD read bound) | %.2f | %s |\n' "$copy" "$(mbs $copy)"
    printf '| SHA-256 + zstd on all cores (compute bound) | %.2f | %s |\n' "$cpu" "$(mbs $cpu)"
    printf '| **nightjar-agent import** | **%.2f** | **%s** |\n' "$imp" "$(mbs $imp)"
    echo
    printf -- '- import / lower bound: **%.0f%%** of the bound (target >= 85%%)\n' "$(echo "$ratio * 100" | bc -l)"
    printf -- '- peak RSS of the import: **%s MiB** (target <= 64 MiB)\n' "$((rss_max / 1024))"
    printf -- '- store after the full: %s (chunk frames %s)\n' "$(numfmt --to=iec $store_du)" "$(numfmt --to=iec $stored)"
} | tee "$work/table.md"

if [ $sweep = 1 ]; then
    echo
    echo "| grid | zstd level | compute MB/s (data) | stored | chunks |"
    echo "|---|---|---|---|---|"
    for g in $((1 << 20)) $((4 << 20)) $((8 << 20)); do
        for l in 1 3 6; do
            j=$("$NJ_BENCH_COMPUTE" --json --grid $g --level $l "$raw")
            rm -rf "$work/sw"
            "$NIGHTJAR_AGENT" import -s "$work/sw" -d sweep --disk vda --grid $g --zstd-level $l --json "$img" > "$work/sw.json"
            printf '| %s | %s | %.0f | %s | %s |\n' "$(numfmt --to=iec $g)" $l \
                "$(echo "$j" | jq .mb_per_s)" \
                "$(numfmt --to=iec "$(jq '.disks[0].bytes_stored' "$work/sw.json")")" \
                "$(jq '.disks[0].chunks_new' "$work/sw.json")"
        done
    done | tee -a "$work/table.md"
fi
[ -n "$out" ] && cp "$work/table.md" "$out"
# Sanity for the tiny run in the test suite: the import stored something
# and restores are covered elsewhere; a ratio is only reported.
test "$stored" -gt 0
