#!/bin/bash
# nightjar-agent's store commands, prune, protect and gc, through the
# program, on a store made with `nightjar-agent import` of small images
# (no libvirt).  Backups are stamped with simulated times
# (NIGHTJAR_FAKE_NOW), in TZ=UTC, and a truth is saved at each one.
#
#   alpha (qcow2, incrementals):                    beta (raw, fulls):
#     A1 full Mon 2023-11-20 10:00  2023-W47          B1 2022-06-01 10:00
#     A2 inc  Mon 2024-01-01 10:00  2024-W01          B2 2023-12-15 10:00
#     A3 inc  Mon 2024-01-01 14:00                    B3 2024-01-03 10:00
#     A4 inc  Tue 2024-01-02 10:00
#     A5 full Mon 2024-01-08 09:00  2024-W02
#     A6 inc  Mon 2024-01-08 09:30  (A5's hour)
#     A7 inc  Tue 2024-01-09 10:00
#
#  1. prune --dry-run with each rule (--keep-last, -hourly, -daily,
#     -weekly, -monthly, -yearly): the JSON gives exactly the keep/remove
#     decisions and reasons nj-retention.h's rules give (worked out by
#     hand below), the text output lists the same; nothing in the store
#     changes.
#  2. protect A4, then prune alpha --keep-daily 2: A1, A2, A3 (A4's
#     ancestors) and A5 (A6's parent) are removed, A4 stays; every kept
#     point restores exactly its truth; verify passes.
#  3. prune --keep-last 1 keeps the protected A4 (and removes A6, A7's
#     parent); protect --off A4, and the next prune removes it.  Every
#     kept point still restores exactly.
#  4. gc --json: with the chunk files made two hours old, --grace 86400
#     frees nothing, --grace 3600 frees the chunks no backup uses
#     (freed > 0, kept + freed = the chunks there were, kept = the chunk
#     files left), a second run frees nothing; all kept points restore.
#  5. Bad arguments (no rule, unknown id or domain, negative numbers,
#     junk numbers, unknown options, a path for an id, not a store): one
#     error line, non-zero exit, the store unchanged, verify passes.
#  6. A domain name with a newline and an escape prints as \n/\x1b in
#     prune's table: no forged row.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd jq cmp sha256sum
export TZ=UTC

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store
TR=$T/truth
mkdir -p "$TR"
qio() { qemu-io -f qcow2 "$@" "$T/alpha.qcow2" >/dev/null; }
at() { date -u -d "$1" +%s; }
declare -A ID=() NAME=()

# imp KEY WHEN ARGS...: import at simulated time WHEN; the truth of the
# new backup is the image's content now
imp() {
    local key=$1 when=$2 src; shift 2
    src=${*: -1}
    NIGHTJAR_FAKE_NOW=$(at "$when") "$A" import -s "$S" --json "$@" >"$T/$key.json" \
        || { echo "FATAL: import $key" >&2; exit 1; }
    ID[$key]=$(jq -r .id "$T/$key.json")
    NAME[${ID[$key]}]=$key
    case $src in
        *.qcow2) qemu-img convert -f qcow2 -O raw "$src" "$TR/${ID[$key]}.raw" ;;
        *) cp "$src" "$TR/${ID[$key]}.raw" ;;
    esac
}

qemu-img create -q -f qcow2 "$T/alpha.qcow2" 8M
qio -c "write -P 0x11 0 2M" -c "write -P 0x12 5M 1M"
qemu-img bitmap --add "$T/alpha.qcow2" b1
imp A1 "2023-11-20 10:00" -d alpha --disk vda "$T/alpha.qcow2"
n=2
for spec in "A2|2024-01-01 10:00|write -P 0x21 0 1M" \
            "A3|2024-01-01 14:00|write -P 0x31 512k 1M" \
            "A4|2024-01-02 10:00|write -P 0x41 5M 256k" \
            "A5|2024-01-08 09:00|write -P 0x51 0 3M" \
            "A6|2024-01-08 09:30|write -P 0x61 1M 1M" \
            "A7|2024-01-09 10:00|write -P 0x71 0 512k"; do
    IFS='|' read -r key when w <<<"$spec"
    qio -c "$w"
    if [ "$key" = A5 ]; then
        imp "$key" "$when" -d alpha --disk vda "$T/alpha.qcow2"
    else
        imp "$key" "$when" -d alpha --disk vda -l inc --bitmap "b$((n - 1))" "$T/alpha.qcow2"
    fi
    qemu-img bitmap --add "$T/alpha.qcow2" "b$n"
    n=$((n + 1))
done
for spec in "B1|2022-06-01 10:00" "B2|2023-12-15 10:00" "B3|2024-01-03 10:00"; do
    IFS='|' read -r key when <<<"$spec"
    head -c 1048576 /dev/urandom >"$T/beta.raw"
    imp "$key" "$when" -d beta --disk sda "$T/beta.raw"
done
check test "$(jq -r .level "$T/A5.json")" = full
check test "$(jq -r .parent "$T/A6.json")" = "${ID[A5]}"
check test "$(jq -r .parent "$T/A2.json")" = "${ID[A1]}"

# ---------------------------------------------------------------------
# helpers

# The store's content (every file's type, mode and hash; not the locks,
# not mtimes, which gc's mark sets by design).
store_state() {
    (cd "$S" && find . -path ./locks -prune -o -printf '%y %m %p\n' | sort &&
        find . -path ./locks -prune -o -type f -print0 | sort -z | xargs -0 -r sha256sum)
}
# the backups in the store, as keys, sorted
have() {
    "$R" list -s "$S" --json | jq -r '.[].id' | while read -r id; do echo "${NAME[$id]:-?$id}"; done | sort | tr '\n' ' '
}
# restore_all: every backup in the store restores exactly its truth
restore_all() {
    local id uuid n=0
    while read -r id uuid; do
        rm -f "$T/out.raw"
        if "$R" restore -s "$S" -d "$uuid" -b "$id" -o "$T/out.raw" 2>"$T/restore.err" &&
            cmp -s "$T/out.raw" "$TR/$id.raw"; then ok; else
            fail "$1: ${NAME[$id]} ($id) does not restore its truth: $(cat "$T/restore.err")"
        fi
        n=$((n + 1))
    done < <("$R" list -s "$S" --json | jq -r '.[] | "\(.id) \(.uuid)"')
    rm -f "$T/out.raw"
    [ "$n" -gt 0 ] || fail "$1: nothing to restore"
}
verify_ok() {
    if "$R" verify -s "$S" >"$T/verify.out" 2>&1; then ok; else fail "$1: verify: $(cat "$T/verify.out")"; fi
}
# decisions JSON: "KEY ACTION REASON" lines, sorted by key
decisions() {
    jq -r '.[] | "\(.id)\t\(.action)\t\(.reason)"' "$1" | while IFS=$'\t' read -r id act why; do
        printf '%s %s %s\n' "${NAME[$id]:-?$id}" "$act" "$why"
    done | sort
}
# expect_plan LABEL ARGS... <<<WANT: prune --dry-run ARGS gives the
# decisions WANT ("KEY ACTION REASON" lines) in JSON and in its table
expect_plan() {
    local label=$1 want got before; shift
    want=$(sort)
    before=$(store_state)
    if ! "$A" prune -s "$S" --dry-run --json "$@" >"$T/plan.json" 2>"$T/plan.err"; then
        fail "$label: prune --dry-run $*: $(cat "$T/plan.err")"; return
    fi
    got=$(decisions "$T/plan.json")
    if [ "$got" = "$want" ]; then ok; else
        fail "$label: prune --dry-run $* decides:
$got
want:
$want"
    fi
    # the table: "ACTION ID DOMAIN LEVEL REASON", the same decisions
    "$A" prune -s "$S" --dry-run "$@" >"$T/plan.txt"
    got=$(while read -r act id _dom _lvl why; do printf '%s %s %s\n' "${NAME[$id]:-?$id}" "$act" "$why"; done <"$T/plan.txt" | sort)
    if [ "$got" = "$want" ]; then ok; else fail "$label: the table says:
$(cat "$T/plan.txt")"; fi
    check test "$(store_state)" = "$before"
}

# ---------------------------------------------------------------------
echo "1: prune --dry-run, each rule"
expect_plan keep-last --keep-last 2 <<EOF
A1 remove no rule keeps it
A2 remove no rule keeps it
A3 remove no rule keeps it
A4 remove no rule keeps it
A5 remove no rule keeps it
A6 keep keep-last
A7 keep keep-last
B1 remove no rule keeps it
B2 keep keep-last
B3 keep keep-last
EOF
expect_plan keep-hourly --keep-hourly 3 <<EOF
A1 remove no rule keeps it
A2 remove no rule keeps it
A3 remove no rule keeps it
A4 keep keep-hourly 2024-01-02 10
A5 remove older than the hourly of 2024-01-08 09
A6 keep keep-hourly 2024-01-08 09
A7 keep keep-hourly 2024-01-09 10
B1 keep keep-hourly 2022-06-01 10
B2 keep keep-hourly 2023-12-15 10
B3 keep keep-hourly 2024-01-03 10
EOF
expect_plan keep-daily --keep-daily 2 <<EOF
A1 remove no rule keeps it
A2 remove no rule keeps it
A3 remove no rule keeps it
A4 remove no rule keeps it
A5 remove older than the daily of 2024-01-08
A6 keep keep-daily 2024-01-08
A7 keep keep-daily 2024-01-09
B1 remove no rule keeps it
B2 keep keep-daily 2023-12-15
B3 keep keep-daily 2024-01-03
EOF
expect_plan keep-weekly --keep-weekly 2 <<EOF
A1 remove no rule keeps it
A2 remove older than the weekly of 2024-W01
A3 remove older than the weekly of 2024-W01
A4 keep keep-weekly 2024-W01
A5 remove older than the weekly of 2024-W02
A6 remove older than the weekly of 2024-W02
A7 keep keep-weekly 2024-W02
B1 remove no rule keeps it
B2 keep keep-weekly 2023-W50
B3 keep keep-weekly 2024-W01
EOF
expect_plan keep-monthly --keep-monthly 2 <<EOF
A1 keep keep-monthly 2023-11
A2 remove older than the monthly of 2024-01
A3 remove older than the monthly of 2024-01
A4 remove older than the monthly of 2024-01
A5 remove older than the monthly of 2024-01
A6 remove older than the monthly of 2024-01
A7 keep keep-monthly 2024-01
B1 remove no rule keeps it
B2 keep keep-monthly 2023-12
B3 keep keep-monthly 2024-01
EOF
expect_plan keep-yearly --keep-yearly 1 <<EOF
A1 remove no rule keeps it
A2 remove older than the yearly of 2024
A3 remove older than the yearly of 2024
A4 remove older than the yearly of 2024
A5 remove older than the yearly of 2024
A6 remove older than the yearly of 2024
A7 keep keep-yearly 2024
B1 remove no rule keeps it
B2 remove no rule keeps it
B3 keep keep-yearly 2024
EOF
# rules together, one domain: keep-last first, then a daily not yet covered
expect_plan combined -d beta --keep-last 1 --keep-yearly 3 <<EOF
B1 keep keep-yearly 2022
B2 keep keep-yearly 2023
B3 keep keep-last
EOF
check test "$(have)" = "A1 A2 A3 A4 A5 A6 A7 B1 B2 B3 "
restore_all "after the dry runs"

# ---------------------------------------------------------------------
echo "2: protect A4, prune alpha --keep-daily 2: A4's ancestors and A6's parent go"
check "$A" protect -s "$S" -b "${ID[A4]}"
check "$A" protect -s "$S" -b "${ID[A4]}"     # again: no change, no error
expect_plan protected -d alpha --keep-daily 2 <<EOF
A1 remove no rule keeps it
A2 remove no rule keeps it
A3 remove no rule keeps it
A4 keep protected
A5 remove older than the daily of 2024-01-08
A6 keep keep-daily 2024-01-08
A7 keep keep-daily 2024-01-09
EOF
"$A" prune -s "$S" -d alpha --keep-daily 2 --json >"$T/p2.json"
check test "$(decisions "$T/p2.json" | awk '$2 == "removed" { print $1 }' | tr '\n' ' ')" = "A1 A2 A3 A5 "
check test "$(have)" = "A4 A6 A7 B1 B2 B3 "
restore_all "after removing A4's ancestors and A6's parent"
verify_ok "after the first prune"

# ---------------------------------------------------------------------
echo "3: prune never removes the protected; protect --off, and it goes"
"$A" prune -s "$S" -d alpha --keep-last 1 >"$T/p3.txt"
check grep -Eq "^keep +${ID[A4]} +alpha +[a-z]+ +protected$" "$T/p3.txt"
check grep -Eq "^removed +${ID[A6]} +alpha " "$T/p3.txt"
check grep -Eq "^keep +${ID[A7]} +alpha +inc +keep-last$" "$T/p3.txt"
check test "$(have)" = "A4 A7 B1 B2 B3 "
restore_all "after the prune that kept the protected"
check "$A" protect -s "$S" -b "${ID[A4]}" --off
expect_plan unprotected -d alpha --keep-last 1 <<EOF
A4 remove no rule keeps it
A7 keep keep-last
EOF
"$A" prune -s "$S" -d alpha --keep-last 1 >"$T/p4.txt"
check grep -Eq "^removed +${ID[A4]} +alpha " "$T/p4.txt"
check test "$(have)" = "A7 B1 B2 B3 "
check "$A" protect -s "$S" -b "${ID[A7]}" --off   # not protected: no change
restore_all "after protect --off and prune"
verify_ok "after the prunes"

# ---------------------------------------------------------------------
echo "4: gc --json, with --grace"
mapfile -t chunks < <(find "$S/chunks" -type f)
total=${#chunks[@]}
check test "$total" -gt 0
touch -d '2 hours ago' "${chunks[@]}"
gcj() { "$A" gc -s "$S" --json "$@" >"$T/gc.json" && jq -e . "$T/gc.json" >/dev/null; }
check gcj --grace 86400
check test "$(jq .chunks_freed "$T/gc.json")" -eq 0
check test "$(jq .bytes_freed "$T/gc.json")" -eq 0
check test "$(jq .chunks_kept "$T/gc.json")" -eq "$total"
check test "$(find "$S/chunks" -type f | wc -l)" -eq "$total"
# the grace run marked the used chunks (now); the unused are still old
check gcj --grace 3600
freed=$(jq .chunks_freed "$T/gc.json") kept=$(jq .chunks_kept "$T/gc.json")
echo "gc: $total chunks, freed $freed ($(jq .bytes_freed "$T/gc.json") bytes), kept $kept"
check test "$freed" -gt 0
check test "$(jq .bytes_freed "$T/gc.json")" -gt 0
check test $((freed + kept)) -eq "$total"
check test "$(find "$S/chunks" -type f | wc -l)" -eq "$kept"
check test "$(jq .references "$T/gc.json")" -gt 0
check gcj --grace 0
check test "$(jq .chunks_freed "$T/gc.json")" -eq 0
check test "$(jq .chunks_kept "$T/gc.json")" -eq "$kept"
# the table form
"$A" gc -s "$S" >"$T/gc.txt"
check grep -Eq "^gc: freed 0 chunks \(0 B\), kept $kept chunks " "$T/gc.txt"
restore_all "after gc"
verify_ok "after gc"

# ---------------------------------------------------------------------
echo "5: bad arguments: one line, non-zero, nothing changed"
mkdir -p "$T/not-a-store" "$T/elsewhere"
before=$(store_state)
bad() { # PATTERN ARGS...
    expect_fail "$@"
}
bad "prune needs a rule" "$A" prune -s "$S"
bad "prune needs a rule" "$A" prune -s "$S" --keep-last 0 --dry-run
bad "prune needs a rule" "$A" prune -s "$S" -d alpha
bad "--keep-last: '-1' is not a number" "$A" prune -s "$S" --keep-last -1
bad "--keep-daily: '-2' is not a number" "$A" prune -s "$S" --keep-daily=-2
bad "--keep-weekly: '2x' is not a number" "$A" prune -s "$S" --keep-weekly 2x
bad "--keep-monthly: '' is not a number" "$A" prune -s "$S" --keep-monthly ''
bad "--keep-yearly: '99999999999999999999' is not a number" "$A" prune -s "$S" --keep-yearly 99999999999999999999
bad "prune: unknown option '--keep-forever'" "$A" prune -s "$S" --keep-forever 3
bad "prune: unknown option '-x'" "$A" prune -s "$S" -x --keep-last 1
bad "prune: option '--keep-last' needs a value" "$A" prune -s "$S" --keep-last
bad "unexpected argument 'alpha'" "$A" prune -s "$S" --keep-last 1 alpha
bad "a store is required" "$A" prune --keep-last 1
bad "no backup of domain 'nosuch' in store" "$A" prune -s "$S" -d nosuch --keep-last 1
bad "not a nightjar store" "$A" prune -s "$T/not-a-store" --keep-last 1
bad "--grace: '-5' is not a number" "$A" gc -s "$S" --grace -5
bad "--grace: 'soon' is not a number" "$A" gc -s "$S" --grace soon
bad "gc: unknown option '--frob'" "$A" gc -s "$S" --frob
bad "gc: option '--json=1' takes no value" "$A" gc -s "$S" --json=1
bad "a store is required" "$A" gc --grace 0
bad "not a nightjar store" "$A" gc -s "$T/not-a-store" --grace 0
bad "no backup '20240101T000000Z-deadbeef' in store" "$A" protect -s "$S" -b 20240101T000000Z-deadbeef
bad "no backup '20240101T000000Z-deadbeef' in store" "$A" protect -s "$S" -b 20240101T000000Z-deadbeef --off
bad "'../elsewhere' is not a backup id" "$A" protect -s "$S" -b ../elsewhere
bad "'../../elsewhere/x' is not a backup id" "$A" protect -s "$S" -b ../../elsewhere/x
bad "protect needs -s STORE and -b ID" "$A" protect -s "$S"
bad "protect: unknown option '--on'" "$A" protect -s "$S" -b "${ID[A7]}" --on
bad "unexpected argument 'x'" "$A" protect -s "$S" -b "${ID[A7]}" x
bad "not a nightjar store" "$A" protect -s "$T/not-a-store" -b "${ID[A7]}"
check test "$(store_state)" = "$before"
check test -z "$(find "$T/not-a-store" "$T/elsewhere" -mindepth 1)"
check test "$(have)" = "A7 B1 B2 B3 "
verify_ok "after the bad arguments"
restore_all "after the bad arguments"

# ---------------------------------------------------------------------
echo "6: a domain name cannot forge a row of prune's table"
evil=$'gamma\nremove   20990101T000000Z-00000000  alpha                full forged\e[2J'
head -c 65536 /dev/urandom >"$T/gamma.raw"
"$A" import -s "$S" -d "$evil" --disk vda "$T/gamma.raw" >/dev/null
"$A" prune -s "$S" --keep-last 1 --dry-run >"$T/p6.txt"
check test "$(wc -l <"$T/p6.txt")" -eq 5   # alpha 1, beta 3, gamma 1
check grep -qF 'gamma\nremove   20990101T000000Z-00000000' "$T/p6.txt"
check grep -qF 'forged\x1b[2J' "$T/p6.txt"
if grep -q $'\e' "$T/p6.txt"; then fail "an escape reached the table"; else ok; fi
if grep -q '^remove   20990101T000000Z' "$T/p6.txt"; then fail "a forged row"; else ok; fi

finish
