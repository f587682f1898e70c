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

# ---- domains, guest writes and timing (bench-vs-peer.sh, bench-s3.sh) ----
# These use the caller's T (scratch), W (write sets), G (bitmap
# granularity), nscat, seqlen and dirty (one write set), QDEV (the disk's
# QEMU device), clk (clock ticks a second), the associative array M for
# results, and die().

# nj_bench_write_sets N RAW BIN: N write sets in $W/1..N (W=$T/w): files
# s0000... of 4 KiB (nscat of them) and seq (seqlen bytes), half random
# and half binary data taken from RAW's first BIN bytes at offsets that are
# not 4 KiB-aligned, so no written 4 MiB cell equals an existing one;
# readable by QEMU.
nj_bench_write_sets() {
    local n=$1 raw=$2 bin=$3 k half src
    W=$T/w
    mkdir -p "$W"
    chmod 0711 "$W"
    for ((k = 1; k <= n; k++)); do
        mkdir "$W/$k"
        half=$((nscat * 4096 / 2))
        src=$(((k * (97 << 20) + 12345) % (bin - 2 * seqlen - nscat * 4096)))
        { head -c $half /dev/urandom
          dd if="$raw" iflag=skip_bytes,count_bytes skip=$src count=$((nscat * 4096 - half)) status=none
        } | split -b 4096 -a 4 -d - "$W/$k/s"
        { head -c $((seqlen / 2)) /dev/urandom
          dd if="$raw" iflag=skip_bytes,count_bytes skip=$((src + nscat * 4096)) \
              count=$((seqlen - seqlen / 2)) status=none
        } > "$W/$k/seq"
        chmod 0711 "$W/$k"
        chmod 0644 "$W/$k"/*
    done
}

# plan K SIZE: the writes of set K on a disk of SIZE bytes ("OFFSET LENGTH
# FILE" lines): the sequential write at a random 1 MiB-aligned offset, then
# the scattered writes in distinct 64 KiB blocks outside it, each at a
# random 4 KiB slot of its block.  Deterministic for given K and SIZE.
plan() {
    local f=$T/plan-$1-$2
    [ -f "$f" ] || awk -v seed="$1" -v size="$2" -v n="$nscat" -v seqlen="$seqlen" \
        -v dir="$W/$1" -v B=$G 'BEGIN {
        srand(seed * 7919 + 17); M = 1048576; nb = size / B
        so = int(rand() * ((size - seqlen) / M)) * M
        s0 = int(so / B); s1 = int((so + seqlen - 1) / B)
        printf "%.0f %.0f %s/seq\n", so, seqlen, dir
        for (i = 0; i < n; ) {
            b = int(rand() * nb)
            if ((b >= s0 && b <= s1) || (b in used)) continue
            used[b] = 1
            printf "%.0f 4096 %s/s%04d\n", b * B + int(rand() * 16) * 4096, dir, i
            i++
        }
    }' > "$f"
    echo "$f"
}

# guest_writes K DOMAIN SIZE [DOMAIN SIZE]...: apply write set K to each
# domain (one virsh session for all of them), flush, and check that the
# domain's newest checkpoint counts exactly the dirty bytes of the set.
guest_writes() {
    local k=$1 d p off len f out; shift
    : > "$T/cmds"
    local args=("$@")
    while [ $# -gt 0 ]; do
        d=$1 p=$(plan "$k" "$2"); shift 2
        while read -r off len f; do
            printf "qemu-monitor-command %s --hmp 'qemu-io -d %s \"write -q -s %s %s %s\"'\n" \
                "$d" "$QDEV" "$f" "$off" "$len"
        done < "$p" >> "$T/cmds"
        printf "qemu-monitor-command %s --hmp 'qemu-io -d %s \"flush\"'\n" "$d" "$QDEV" >> "$T/cmds"
    done
    # the monitor answers only on errors; virsh echoes its prompt
    out=$(nj_virsh < "$T/cmds" 2>&1 | tr -d '\r' | grep -v '^virsh # ' | sed '/^[[:space:]]*$/d') || true
    [ -z "$out" ] || die "guest writes of set $k failed: $(printf '%s' "$out" | head -n 3)"
    set -- "${args[@]}"
    while [ $# -gt 0 ]; do
        [ "$(checkpoint_dirty "$1")" = "$dirty" ] \
            || die "write set $k on $1: the checkpoint counts $(checkpoint_dirty "$1") dirty bytes, expected $dirty"
        shift 2
    done
}

# checkpoint_dirty DOMAIN: bytes of vda dirty since the newest checkpoint.
checkpoint_dirty() {
    local c
    c=$(nj_virsh checkpoint-list "$1" --leaves --name | head -n 1)
    nj_virsh checkpoint-dumpxml --size --no-domain "$1" "$c" \
        | sed -n "s/.*name='vda'.* size='\([0-9]*\)'.*/\1/p"
}

# domain NAME SIZE SOURCE [nostart]: a domain with one qcow2 disk vda, a
# cp of SOURCE grown to SIZE bytes; started paused unless "nostart".
domain() {
    local name=$1 size=$2 src=$3 im
    NJ_DOMAIN_START=no nj_domain_create "$name" "vda:qcow2:$size"
    im=$(nj_image_path "$name" vda)
    cp --sparse=always "$src" "$im"
    if [ "$(qemu-img info --output=json "$im" | jq '."virtual-size"')" != "$size" ]; then
        qemu-img resize -q "$im" "$size"
    fi
    [ "${4:-}" = nostart ] || nj_virsh start --paused "$name" >/dev/null
}

# timed KEY CMD...: sync, then run CMD under /usr/bin/time with stdout in
# $T/out and stderr in $T/err; record "seconds rss_kib user_s sys_s" as
# M[KEY].
declare -A M=()
timed() {
    local key=$1 rc=0 s r; shift
    sync
    /usr/bin/time -f '%e %M %U %S' -o "$T/time" "$@" > "$T/out" 2> "$T/err" || rc=$?
    if [ $rc -ne 0 ]; then
        tail -n 5 "$T/err" >&2
        die "$key failed (exit $rc): $*"
    fi
    read -r s r < <(tail -n 1 "$T/time")
    M[$key]="$s $r"
}
du_b() { du -sb "$1" | cut -f1; }
hb() {  # BYTES in KiB/MiB/GiB, 3 significant digits
    awk -v b="$1" 'BEGIN { split("B KiB MiB GiB TiB", u); i = 1
        while (b >= 1024 && i < 5) { b /= 1024; i++ }
        if (i == 1 || b >= 100) printf "%.0f %s\n", b, u[i]; else if (b >= 10) printf "%.1f %s\n", b, u[i]
        else printf "%.2f %s\n", b, u[i] }'
}

# qemu_ticks DOMAIN: CPU time (clock ticks, user + system, every thread)
# of the domain's QEMU so far.
qemu_ticks() {
    local pid
    pid=$(pgrep -f -- "-name guest=$1,") || die "no QEMU process for $1"
    awk '{ print $14 + $15 }' "/proc/$pid/stat"
}
# cpu_timed KEY DOMAIN CMD...: timed, and M[KEY.cpu] = the CPU seconds of
# CMD (user + system) plus those of the domain's QEMU during it.
cpu_timed() {
    local key=$1 dom=$2 q0 u s; shift 2
    q0=$(qemu_ticks "$dom")
    "$@"
    read -r _ _ u s <<<"${M[$key]}"
    M[$key.cpu]="$(echo "$u + $s" | bc) $(echo "($(qemu_ticks "$dom") - $q0) / $clk" | bc -l)"
}

