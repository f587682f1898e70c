#!/bin/bash
# Twenty writers on simulated hosts (NIGHTJAR_HOST_ID) back up into one
# bucket at once while gc loops with no grace in another process.  Each
# writer takes a full A and a full B (restored and compared at once),
# prunes A away (its chunk becomes garbage), takes a full C with A's
# content (C dedups against exactly the chunk gc is trying to delete), and
# prunes B away.  Afterwards every C restores byte for byte, verify finds
# nothing missing, and gc has freed every B.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp head
use_test_s3
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
U="s3://nj-test/hosts-$$-$(date +%s)"
N=20

# The store exists before the crowd arrives (one creator, not twenty).
head -c 65536 /dev/urandom > "$T/seed.raw"
"$A" import -s "$U" -d seed --disk vda --format raw "$T/seed.raw" > /dev/null

writer() {
    local i=$1 d="$T/w$1"
    mkdir -p "$d"
    head -c $((1536 * 1024)) /dev/urandom > "$d/A.raw"
    head -c $((1536 * 1024)) /dev/urandom > "$d/B.raw"
    cp "$d/A.raw" "$d/C.raw"
    export NIGHTJAR_HOST_ID="host-$i"
    "$A" import -s "$U" -d "vm$i" --disk vda --format raw --json "$d/A.raw" > "$d/a.json" &&
    "$A" import -s "$U" -d "vm$i" --disk vda --format raw --json "$d/B.raw" > "$d/b.json" &&
    "$R" restore -s "$U" -d "vm$i" --disk vda -o "$d/b.back" &&
    cmp "$d/b.back" "$d/B.raw" &&
    "$A" prune -s "$U" -d "vm$i" --keep-last 1 > "$d/prune.out" &&
    "$A" import -s "$U" -d "vm$i" --disk vda --format raw --json "$d/C.raw" > "$d/c.json" &&
    "$A" prune -s "$U" -d "vm$i" --keep-last 1 > "$d/prune2.out"
    echo $? > "$d/rc"
}

# gc loops until every writer is done
touch "$T/writing"
(
    export NIGHTJAR_HOST_ID=gc-host
    runs=0
    while [ -e "$T/writing" ]; do
        "$A" gc -s "$U" --grace 0 --json >> "$T/gc.json" 2>> "$T/gc.err" || echo "gc failed" >> "$T/gc.err"
        runs=$((runs + 1))
    done
    echo "$runs" > "$T/gc.runs"
) &
gcpid=$!
pids=()
for i in $(seq 1 $N); do writer "$i" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || true; done
rm -f "$T/writing"
wait $gcpid

for i in $(seq 1 $N); do
    d="$T/w$i"
    check test "$(cat "$d/rc")" -eq 0
    [ "$(cat "$d/rc")" -eq 0 ] || { cat "$d"/*.out >&2 2>/dev/null; continue; }
    c=$(jq -r .id "$d/c.json")
    "$R" restore -s "$U" -d "vm$i" -b "$c" --disk vda -o "$d/c.back"
    check cmp "$d/c.back" "$d/C.raw"
    # C's chunks were A's: deduplicated, not uploaded again (or uploaded
    # again because gc had removed them first; both are sound)
    check test "$(jq -r '.disks[0].bytes_new + .disks[0].bytes_dedup' "$d/c.json")" -eq $((1536 * 1024))
done
check test "$("$R" list -s "$U" --json | jq 'length')" -eq $((N + 1))
check "$R" verify -s "$U"
# gc ran meanwhile and never failed (a backup merged or removed under its
# mark makes it mark again); a last run with nobody writing frees what is
# left: in all, at least every B's chunk
check test "$(cat "$T/gc.runs")" -ge 1
check test -z "$(grep -v 'backups are running\|waiting for' "$T/gc.err")"
"$A" gc -s "$U" --grace 0 --json > "$T/gc-final.json"
"$R" verify -s "$U" > /dev/null
check test "$(jq -s 'map(.chunks_freed) | add' "$T/gc.json" "$T/gc-final.json")" -ge $N
echo "gc runs during the writers: $(cat "$T/gc.runs"); freed in all: $(jq -s 'map(.chunks_freed) | add' "$T/gc.json" "$T/gc-final.json") chunks"
finish
