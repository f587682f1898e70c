# shellcheck shell=bash
# Shared by the benchmark scripts (bench-datapath.sh, bench-vs-peer.sh):
# the release build, the generated benchmark image, the hardware bounds
# and small statistics.  Source it; it defines functions and a few
# variables only.
#
#   . "$(dirname "$0")/lib-bench.sh"
#   nj_bench_build build-bench          # unless NIGHTJAR_AGENT is set
#   nj_bench_image "$dir" $vsize $bin $rnd $rnd_at
#   nj_bench_bounds "$img" "$raw" 3     # sets nj_bound_copy, nj_bound_cpu, ...

nj_bench_src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
nj_bench_qpid=                  # a qemu-nbd of nj_bench_bounds; kill it in a trap

# nj_bench_build BUILDDIR: unless NIGHTJAR_AGENT is set already (the test
# suite sets it), configure BUILDDIR (relative to the source tree) as a
# release build if it does not exist, build it, and set NIGHTJAR_AGENT,
# NIGHTJAR_RESTORE and NJ_BENCH_COMPUTE to its programs.
nj_bench_build() {
    local b=$nj_bench_src/$1
    [ -z "${NIGHTJAR_AGENT:-}" ] || return 0
    if [ ! -d "$b" ]; then
        meson setup "$b" -Dbuildtype=release >/dev/null
    fi
    ninja -C "$b" >/dev/null
    NIGHTJAR_AGENT=$b/agent/nightjar-agent
    NIGHTJAR_RESTORE=$b/restore/nightjar-restore
    NJ_BENCH_COMPUTE=$b/benchmarks/nj-bench-compute
}

# nj_bench_image DIR VSIZE BIN RND RND_AT: make sure DIR/image.raw and
# DIR/image.qcow2 hold the benchmark disk: VSIZE bytes virtual, the first
# BIN bytes real binaries from /usr (in a stable order), RND bytes of random
# data at RND_AT, zeros elsewhere.  Generated, never committed; kept in DIR
# and reused while DIR/stamp matches the sizes.
nj_bench_image() {
    local dir=$1 vsize=$2 bin=$3 rnd=$4 rnd_at=$5
    local raw=$dir/image.raw img=$dir/image.qcow2 stamp="$2 $3 $4 $5"
    if [ -f "$img" ] && [ "$(cat "$dir/stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    echo "generating the image in $dir ..." >&2
    rm -f "$raw" "$img" "$dir/stamp"
    truncate -s "$vsize" "$raw"
    # real binaries, in a stable order (head ends the pipe early: no pipefail)
    set +o pipefail
    find /usr/lib /usr/bin /usr/libexec /usr/sbin -xdev -type f -size +16k 2>/dev/null \
        | LC_ALL=C sort | xargs -d '\n' cat 2>/dev/null | head -c "$bin" \
        | dd of="$raw" conv=notrunc bs=1M iflag=fullblock status=none
    set -o pipefail
    head -c "$rnd" /dev/urandom | dd of="$raw" conv=notrunc bs=1M seek=$((rnd_at >> 20)) \
        iflag=fullblock status=none
    qemu-img convert -q -f raw -O qcow2 "$raw" "$img"
    echo "$stamp" > "$dir/stamp"
}

# nj_bench_median / nj_bench_max: of the numbers on stdin, one a line.
nj_bench_median() { LC_ALL=C sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
nj_bench_max() { LC_ALL=C sort -g | tail -n 1; }

# nj_bench_bounds IMAGE.qcow2 IMAGE.raw RUNS [ZSTD-LEVEL]: the hardware
# bounds of a backup of these bytes, each the median of RUNS runs:
#   nj_bound_copy  seconds of nbdcopy from a qemu-nbd export of IMAGE.qcow2
#                  to null: (reading every byte through NBD)
#   nj_bound_cpu   seconds of nj-bench-compute on IMAGE.raw (SHA-256 + zstd
#                  of every non-zero cell on all cores, no I/O)
#   nj_bound_data  the non-zero bytes nj-bench-compute processed
#   nj_bound_json  the JSON of its last run
nj_bench_bounds() {
    local img=$1 raw=$2 runs=$3 sock d s i t=() c=()
    d=$(mktemp -d "${TMPDIR:-/tmp}/nj-bench-bounds.XXXXXX")
    sock=$d/nbd.sock
    qemu-nbd --read-only --persistent --shared=16 --cache=none --aio=native \
        --format=qcow2 --socket="$sock" "$img" 2>/dev/null &
    nj_bench_qpid=$!
    for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
    for ((i = 0; i < runs; i++)); do
        s=$(date +%s.%N)
        nbdcopy "nbd+unix:///?socket=$sock" null:
        t+=("$(echo "$(date +%s.%N) - $s" | bc)")
    done
    kill "$nj_bench_qpid"; wait "$nj_bench_qpid" 2>/dev/null || true; nj_bench_qpid=
    rm -rf "$d"
    nj_bound_copy=$(printf '%s\n' "${t[@]}" | nj_bench_median)
    for ((i = 0; i < runs; i++)); do
        nj_bound_json=$("$NJ_BENCH_COMPUTE" --json ${4:+--level "$4"} "$raw")
        c+=("$(echo "$nj_bound_json" | jq .seconds)")
    done
    nj_bound_cpu=$(printf '%s\n' "${c[@]}" | nj_bench_median)
    nj_bound_data=$(echo "$nj_bound_json" | jq .bytes)
}

# nj_bench_rates RAW [LEVELS]: what one core of this CPU does on a sample
# of RAW's non-zero data (512 MiB; nj-bench-compute --threads 1): sets
# nj_rate_sha (SHA-256, MB/s), nj_rate_zstd[L] (zstd at level L, MB/s,
# incompressible cells stored raw as in a backup) and nj_ratio_zstd[L]
# (stored / plaintext bytes) for each of LEVELS (default "-3 1 3").
declare -A nj_rate_zstd=() nj_ratio_zstd=()
nj_rate_sha=
nj_bench_rates() {
    local raw=$1 levels=${2:--3 1 3} l j
    nj_rate_sha=$("$NJ_BENCH_COMPUTE" --json --threads 1 --only sha256 --limit $((512 << 20)) "$raw" | jq .mb_per_s)
    for l in $levels; do
        j=$("$NJ_BENCH_COMPUTE" --json --threads 1 --only zstd --level "$l" --limit $((512 << 20)) "$raw")
        nj_rate_zstd[$l]=$(echo "$j" | jq .mb_per_s)
        nj_ratio_zstd[$l]=$(echo "$j" | jq '.stored / .bytes')
    done
}

# nj_bench_machine: "N cores, CPU model" of this machine.
nj_bench_machine() {
    local model
    model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
    echo "$(nproc) cores, ${model:-unknown CPU} ($(uname -m))"
}

# nj_bench_load: the 1-minute load average.
nj_bench_load() { cut -d' ' -f1 /proc/loadavg; }
