#!/bin/bash
# `nightjar-agent run --config FILE`, the scheduler, against a real libvirtd
# and real QEMU domains (lib-libvirt.sh, guest writes tracked by shadows).
#
# Domains: A and B match the configuration's pattern ("PREFIX-*"; B's name
# holds a quote and a backslash, which the status file must escape), C
# does not match it and D matches but is excluded ("*-skip").  C has three
# backups of its own in the same store (made by hand, one day): the
# scheduler's prune, whose rules would remove two of them, must not touch
# another configuration's domains.  C and D are never backed up.
#
# Everything runs in TZ=Europe/Berlin with "daily 02:30", concurrency 2,
# level auto with max-chain 4 (max-age is off: the agent judges it on the
# real clock, so every simulated backup would be a full).
#
#  1. Ten simulated nights (--simulate-from/--simulate-runs: the runs happen
#     at the calendar's times of a virtual clock, the backups are stamped
#     with those times), from Thu 28 March 2024: the night of the
#     spring-forward Sunday 31 March has no 02:30, so it has no run.  To
#     write to the guests between nights, `run` is called once per night
#     (--simulate-runs 1) with --simulate-from one hour after the night
#     before: the state file's last_served (that night) is then the
#     calendar's previous time, so the call makes no catch-up run and runs
#     exactly the next night.  The nights are computed here independently
#     (GNU date, which refuses the missing 02:30).  B's disk image
#     disappears for nights 5 and 6 (the domain shut off, its image moved
#     away: the agent cannot start it): B fails, A does not; then the image
#     comes back and B recovers.  After each night: one log line per job,
#     "ok" or "FAILED"; the store holds exactly the backups that
#     keep-daily 3, keep-weekly 2, keep-monthly 2 keep, applied after each
#     night to the nights each domain was backed up (computed here from the
#     dates, as nj-retention.h describes the rules); the status file is
#     valid Prometheus text (every line checked against the exposition
#     format, families typed once, series unique) with both domains'
#     values; the state file has last_served and each domain's last
#     success.
#  2. A missed window: three nights later, last_served is older than the
#     calendar's previous time: one catch-up run at start-up ("missed the
#     run"), then the next night; no more.
#  3. `run --once` on the real clock: one pass, then exit.
#  4. SIGTERM while backups run: a real (not simulated) service with a
#     calendar that fires at the coming minute; once the backups' jobs have
#     begun they are stopped (SIGSTOP) so that they are certainly still
#     running, the service gets SIGTERM and says "stopping", the backups go
#     on (SIGCONT), get the service's SIGTERM and roll back: no new backup,
#     no checkpoint, no job, no job directory or staging left; the service
#     exits 0 without waiting for the backups to end by themselves, and
#     the interrupted run counts as not served.
#  5. Restarted, the service makes that run at start-up (a missed window on
#     the real clock), then sleeps; SIGTERM while it sleeps (seen in
#     clock_nanosleep) ends it, long before the next scheduled time.
#  Every wait is for an observed event (a log line, a file, a process
#  state), bounded by a generous failsafe; no bound on elapsed time.
#  6. The store verifies and EVERY kept point of every disk restores
#     byte for byte equal to the shadow saved when it was taken.
#
#   NJ_TEST_SEED=N   replay the random writes of an earlier run
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/lib-libvirt.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require jq cmp date awk pgrep
[ -e /usr/share/zoneinfo/Europe/Berlin ] || { echo "SKIP: no tzdata (Europe/Berlin)" >&2; exit 77; }
nj_require_libvirt
export TZ=Europe/Berlin

A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
S=$T/store
CONF=$T/nightjar.conf
STATUS=$T/nightjar.prom
STATE=$T/scheduler-state.json
L=$T/logs                        # the service's stderr, one file per call
P=$T/points                      # shadows saved at each run, per domain
mkdir -p "$L" "$P"
# The scratch directory: QEMU must traverse it and the NBD socket path in
# it must fit a UNIX socket address, so a short one, not under $T.
SCR=$(mktemp -d /var/tmp/nj-sch.XXXXXX)
chmod 0711 "$SCR"
cleanup_hooks+=("rm -rf $(printf '%q' "$SCR")")
# Services started in the background: killed (by pid) if the test dies.
bg_pids=()
kill_bg() {
    local p
    for p in "${bg_pids[@]}"; do
        pkill -CONT -P "$p" 2>/dev/null || true
        kill -9 "$p" 2>/dev/null || true
    done
    return 0
}
cleanup_hooks=("kill_bg" "${cleanup_hooks[@]}")

seed=${NJ_TEST_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}
RANDOM=$seed
echo "test-scheduler: seed $seed (NJ_TEST_SEED=$seed replays it), virt type $NJ_VIRT_TYPE"
t0=$SECONDS
step() { echo "[$((SECONDS - t0))s] $*"; }
die() { echo "FATAL: $*" >&2; exit 1; }
# wait_until SECONDS CMD...: poll until CMD succeeds; false after SECONDS.
# Every wait in this test is for an event it observes; the bound is a
# failsafe against a hang, never a measure of speed.
wait_until() {
    local limit=$((SECONDS + $1)); shift
    until "$@"; do
        [ "$SECONDS" -lt "$limit" ] || return 1
        sleep 0.05
    done
}
# wait_exit PID: its exit status; a service still running after the
# failsafe bound is a failure (killed, status 255)
wait_exit() {
    local rc=0
    if ! wait_until 600 eval "! kill -0 $1 2>/dev/null"; then
        fail "process $1 did not exit within the failsafe bound"
        kill -9 "$1" 2>/dev/null || true
    fi
    wait "$1" || rc=$?
    return "$rc"
}

pfx=$(nj_unique_name sched)
declare -A DOM=() UUID=() DISKS=()
DOM[a]="$pfx-a"
DOM[b]="$pfx-b \"q\" \\ z"
DOM[c]="${pfx}x-c"
DOM[d]="$pfx-d-skip"
DISKS[a]="vda vdb"
DISKS[b]="vda"
DISKS[c]="vda"
nj_domain_create "${DOM[a]}" vda:qcow2:32M vdb:raw:4M
nj_domain_create "${DOM[b]}" vda:qcow2:16M
NJ_DOMAIN_START=no nj_domain_create "${DOM[c]}" vda:qcow2:8M
NJ_DOMAIN_START=no nj_domain_create "${DOM[d]}" vda:qcow2:4M
for k in a b c d; do UUID[$k]=$(nj_virsh domuuid "${DOM[$k]}"); done

cat >"$CONF" <<EOF
# test-scheduler

store = $S
connect = $NJ_LIBVIRT_URI
domains = $pfx-*    # A, B and D; not C
exclude = *-skip    # not D
schedule = daily 02:30

level = auto
zstd-level = 2..4
max-chain = 4
# (off: the agent judges max-age on the real clock, not the simulated one)
max-age = 0
concurrency = 2
keep-daily = 3
keep-weekly = 2
keep-monthly = 2
gc = yes
gc-grace = 0
scratch-dir = $SCR
status-file = $STATUS
state-file = $STATE
EOF
KEEP_RULES="daily:3 weekly:2 monthly:2"

# ---------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------

# epoch LOCAL-TIME: Unix seconds of a local time ("2024-03-28 02:30")
epoch() { date -d "$1" +%s; }
show() { date -d "@$1" '+%a %F %T %Z'; }

# next_night T: the first 02:30 after T that exists in local time
next_night() {
    local t=$1 day i n
    day=$(date -d "@$t" +%F)
    for ((i = 0; i < 4; i++)); do
        n=$(date -d "$(date -d "$day + $i day" +%F) 02:30" +%s 2>/dev/null) || continue
        [ "$n" -le "$t" ] || { echo "$n"; return; }
    done
    die "no 02:30 after $(show "$t")"
}

# gw KEY TARGET: a few random guest writes (random patterns, lengths
# from 1 byte to 192 KiB, any alignment)
gw() {
    local key=$1 t=$2 size i len off pat
    size=$(qemu-img info -U --output=json "$(nj_image_path "${DOM[$key]}" "$t")" | jq '."virtual-size"')
    for ((i = 0; i < 1 + RANDOM % 3; i++)); do
        len=$((1 + (RANDOM << 15 | RANDOM) % 196608))
        off=$(((RANDOM << 15 | RANDOM) % (size - len + 1)))
        pat=$((1 + RANDOM % 255))
        nj_guest_write "${DOM[$key]}" "$t" "$pat" "$off" "$len"
    done
}

# snap KEY LABEL: save the shadows of KEY's disks as point LABEL
snap() {
    local t
    for t in ${DISKS[$1]}; do
        cp --sparse=always "$(nj_shadow_path "${DOM[$1]}" "$t")" "$P/$1-$2-$t.raw"
    done
}

# Log lines.  logline_ok LOG KEY: the backup id of KEY's "ok" line.
count_lines() { # LOG FIXED-PREFIX
    F=$2 awk 'index($0, ENVIRON["F"]) == 1 { n++ } END { print n + 0 }' "$1"
}
# (with a third argument "level": its level)
logline_ok() {
    F="nightjar: backup '${DOM[$2]}': ok, " W=$([ "${3:-}" = level ] && echo 1 || echo 2) awk '
        index($0, ENVIRON["F"]) == 1 {
            split(substr($0, length(ENVIRON["F"]) + 1), w, /[ ,]+/); printf "%s\n", w[ENVIRON["W"]] }' "$1"
}
# check_jobs LOG WANT...: one "backup" line per job: WANT is KEY=ok or
# KEY=FAILED for each domain the run must back up, and no other line
# names a backup
check_jobs() {
    local log=$1 w key st n; shift
    n=$(count_lines "$log" "nightjar: backup '")
    [ "$n" -eq $# ] || fail "${log##*/}: $n backup lines, want $#: $(grep "backup '" "$log")"
    for w in "$@"; do
        key=${w%=*} st=${w#*=}
        n=$(count_lines "$log" "nightjar: backup '${DOM[$key]}': $st")
        [ "$n" -eq 1 ] || fail "${log##*/}: $n '$st' lines for $key, want 1: $(grep -F "${DOM[$key]}" "$log")"
    done
    for key in c d; do
        if grep -qF "${DOM[$key]}" "$log"; then fail "${log##*/} names $key: $(grep -F "${DOM[$key]}" "$log")"; fi
    done
    ok
}

# The store, as "KEY ID TIME" lines for the domains of this test.
store_list() {
    local k
    "$R" list -s "$S" --json >"$T/list.json"
    for k in a b c d; do
        jq -r --arg u "${UUID[$k]}" --arg k "$k" '.[] | select(.uuid == $u) | "\($k) \(.id) \(.time)"' "$T/list.json"
    done
}

# The retention model.  HAVE[KEY]: the run times (epochs) of the backups
# of KEY the store should hold; RUN_OF[ID]: the run time of backup ID.
declare -A HAVE=() RUN_OF=() OK_AT=()
# retain TIMES...: the times the rules keep, as nj-retention.h describes
# them: rules in order (daily, weekly, monthly); each keeps the newest
# backup of each of its N newest periods (local time, ISO weeks) that
# have a backup and are not already covered by a backup an earlier rule
# kept; all else goes.
retain() {
    local -a ts
    local -A kept=() decided=() covered=() taken=()
    local rule fmt n t k ntaken
    mapfile -t ts < <(printf '%s\n' "$@" | sed '/^$/d' | sort -rn)
    for rule in $KEEP_RULES; do
        case ${rule%:*} in
            daily) fmt=%F ;; weekly) fmt=%G-W%V ;; monthly) fmt=%Y-%m ;;
            *) die "rule $rule" ;;
        esac
        n=${rule#*:} ntaken=0 covered=() taken=()
        for t in "${ts[@]}"; do
            [ -z "${kept[$t]:-}" ] || covered[$(date -d "@$t" +"$fmt")]=1
        done
        for t in "${ts[@]}"; do
            [ -z "${decided[$t]:-}" ] || continue
            k=$(date -d "@$t" +"$fmt")
            [ -z "${covered[$k]:-}" ] || continue
            if [ -n "${taken[$k]:-}" ]; then decided[$t]=1; continue; fi
            [ "$ntaken" -lt "$n" ] || break
            taken[$k]=1 decided[$t]=1 kept[$t]=1
            ntaken=$((ntaken + 1))
        done
    done
    for t in "${ts[@]}"; do [ -z "${kept[$t]:-}" ] || echo "$t"; done | sort -n | tr '\n' ' '
}

# after_run LOG RUN-TIME|real KEY...: KEYs' "ok" backups of the run are
# added to the model (with the run time; "real": with the backup's own
# time), their shadows saved, and the rules applied, as the service did
after_run() {
    local log=$1 when=$2 key id t; shift 2
    store_list >"$T/store.txt"
    for key in "$@"; do
        id=$(logline_ok "$log" "$key")
        [ -n "$id" ] || continue
        t=$(awk -v id="$id" '$2 == id { print $3 }' "$T/store.txt")
        if [ "$when" = real ]; then
            [ -n "$t" ] || { fail "backup $id of $key (${log##*/}) is not in the store"; continue; }
            RUN_OF[$id]=$t
        else
            RUN_OF[$id]=$when
        fi
        snap "$key" "${RUN_OF[$id]}"
        OK_AT[$key]=$id
        HAVE[$key]=$(retain ${HAVE[$key]:-} "${RUN_OF[$id]}")
    done
}

# check_store LABEL: the store holds exactly the model's backups of A and
# B, each stamped in its run (within ten minutes of the run time), and C's
# three; none of D
check_store() {
    local key id t want got
    store_list >"$T/store.txt"
    for key in a b; do
        want=$(printf '%s\n' ${HAVE[$key]:-} | sed '/^$/d' | sort -n | tr '\n' ' ')
        got=''
        while read -r _ id t; do
            if [ -z "${RUN_OF[$id]:-}" ]; then fail "$1: unknown backup $id of $key at $(show "$t")"; continue; fi
            if [ "$t" -lt "${RUN_OF[$id]}" ] || [ "$t" -ge $((RUN_OF[$id] + 600)) ]; then
                fail "$1: backup $id of $key stamped $(show "$t"), its run was at $(show "${RUN_OF[$id]}")"
            fi
            got+="${RUN_OF[$id]}"$'\n'
        done < <(awk -v k="$key" '$1 == k' "$T/store.txt")
        got=$(printf '%s' "$got" | sed '/^$/d' | sort -n | tr '\n' ' ')
        if [ "$got" = "$want" ]; then ok; else
            fail "$1: $key's backups are of $(for t in $got; do printf '[%s] ' "$(show "$t")"; done)- the rules keep $(for t in $want; do printf '[%s] ' "$(show "$t")"; done)"
        fi
    done
    check test "$(awk '$1 == "c"' "$T/store.txt" | cut -d' ' -f2 | sort | tr '\n' ' ')" = "$C_IDS"
    check test -z "$(awk '$1 == "d"' "$T/store.txt")"
}

# Prometheus text exposition format: every line is a HELP, TYPE or
# comment line or a sample; label values escape \, " and newline.
PROM_NAME='[a-zA-Z_:][a-zA-Z0-9_:]*'
PROM_LNAME='[a-zA-Z_][a-zA-Z0-9_]*'
PROM_LVAL='"([^"\\]|\\[\\"n])*"'
PROM_VALUE='[-+]?(([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?|NaN|Inf)'
PROM_SAMPLE="$PROM_NAME(\\{$PROM_LNAME=$PROM_LVAL(,$PROM_LNAME=$PROM_LVAL)*,?\\})? $PROM_VALUE( -?[0-9]+)?"
PROM_HELP="# HELP $PROM_NAME( .*)?"
PROM_TYPE="# TYPE $PROM_NAME (counter|gauge|histogram|summary|untyped)"
prom_valid() {
    local f=$1 bad
    [ -s "$f" ] || { fail "status file $f is missing or empty"; return; }
    [ "$(tail -c 1 "$f" | od -An -c | tr -d ' ')" = '\n' ] || fail "${f##*/} does not end with a newline"
    bad=$(grep -Evx -e "$PROM_HELP" -e "$PROM_TYPE" -e "$PROM_SAMPLE" -e '#( .*)?' "$f" || true)
    [ -z "$bad" ] || { fail "${f##*/}: lines not in the text format: $bad"; return; }
    # families: HELP and TYPE once each and before the samples, the
    # samples of a family together and each series once
    bad=$(awk '
        /^# (HELP|TYPE) / {
            n = $3
            if (seen[$2 " " n]++) print "second " $2 " of " n
            if (n in sampled) print $2 " after samples of " n
            if ($2 == "TYPE") typed[n] = 1
            cur = n; next }
        /^#/ { next }
        {
            series = $0; sub(/ [^ ]*$/, "", series)
            n = series; sub(/\{.*/, "", n)
            if (!(n in typed)) print "no TYPE for " n
            if (n != cur) print "sample of " n " outside its family"
            if (dup[series]++) print "series twice: " series
            sampled[n] = 1 }' "$f")
    if [ -z "$bad" ]; then ok; else fail "${f##*/}: $bad"; fi
    if command -v promtool >/dev/null 2>&1; then
        if promtool check metrics <"$f" >"$T/promtool.out" 2>&1; then ok; else fail "promtool: $(cat "$T/promtool.out")"; fi
    fi
}
# A label value: \ " and newline escaped.
prom_escape() {
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '%s' "${s//$'\n'/\\n}"
}
# prom_get METRIC KEY: the value of KEY's series of METRIC
prom_get() {
    F="$1{domain=\"$(prom_escape "${DOM[$2]}")\",uuid=\"${UUID[$2]}\"} " awk '
        index($0, ENVIRON["F"]) == 1 { print substr($0, length(ENVIRON["F"]) + 1) }' "$STATUS"
}
# check_status RUN-TIME A-SUCCESS B-SUCCESS
check_status() {
    local key want st
    prom_valid "$STATUS"
    check test "$(awk '$1 == "nightjar_scheduler_last_run_timestamp_seconds" { print $2 }' "$STATUS")" = "$1"
    check test "$(awk '$1 == "nightjar_gc_bytes_freed_total" { print $2 }' "$STATUS" | grep -Ec '^[0-9]+$')" = 1
    for key in a b; do
        want=$2; [ "$key" = a ] || want=$3
        st=$(prom_get nightjar_backup_success "$key")
        [ "$st" = "$want" ] || fail "status: nightjar_backup_success of $key is '$st', want $want"
        # the last success is the time of the domain's last ok backup
        st=$(prom_get nightjar_backup_last_success_timestamp_seconds "$key")
        [ "$st" = "$(last_success "$key")" ] \
            || fail "status: last success of $key is '$st', want $(last_success "$key")"
        for m in nightjar_backup_duration_seconds nightjar_backup_bytes_read nightjar_backup_bytes_stored; do
            [ -n "$(prom_get "$m" "$key")" ] || fail "status: no $m for $key"
        done
    done
    # only the configuration's domains, each series once per metric
    check test "$(grep -c '^nightjar_backup_success{' "$STATUS")" -eq 2
    for key in c d; do
        if grep -qF "${UUID[$key]}" "$STATUS"; then fail "status names $key"; fi
    done
    ok
}
# last_success KEY: the time stamped on KEY's last ok backup (the JSON
# of the backup, from the catalog: list --json)
declare -A LAST_T=()
last_success() { echo "${LAST_T[$1]:-0}"; }
note_success() { # KEY ID: remember the time of KEY's backup ID
    LAST_T[$1]=$(jq -r --arg id "$2" '.[] | select(.id == $id) | .time' "$T/list.json")
}

# check_state LAST-SERVED
check_state() {
    local key
    check jq -e . "$STATE" >/dev/null
    check test "$(jq -r .last_served "$STATE")" = "$1"
    check test "$(jq -r '.domains | length' "$STATE")" -eq 2
    for key in a b; do
        check test "$(jq -r --arg u "${UUID[$key]}" '.domains[] | select(.uuid == $u) | .name' "$STATE")" = "${DOM[$key]}"
        check test "$(jq -r --arg u "${UUID[$key]}" '.domains[] | select(.uuid == $u) | .last_success' "$STATE")" = "$(last_success "$key")"
    done
}

# run_sim LOG FROM RUNS: the simulated service, which must exit 0
run_sim() {
    local rc=0
    "$A" run --config "$CONF" --simulate-from "$2" --simulate-runs "$3" 2>"$L/$1.log" || rc=$?
    [ "$rc" -eq 0 ] || { cat "$L/$1.log" >&2; fail "run ($1) exited $rc"; }
}

# cps KEY: KEY's checkpoints, sorted
cps() { nj_virsh checkpoint-list --name "${DOM[$1]}" | sed '/^$/d' | sort; }
no_job() {
    local j
    j=$(nj_virsh domjobinfo "${DOM[$1]}" 2>&1 | grep -v -e 'Job type: *None' -e '^ *$' || true)
    [ -z "$j" ] || { fail "$2: a job is left on $1: $j"; return; }
    ok
}

# ---------------------------------------------------------------------
step "0: usage; C's own backups"
expect_fail "needs --config" "$A" run
expect_fail "go together" "$A" run --config "$CONF" --simulate-from 1
printf 'store = /x\n\nschedule = daily 2:30\nkeep-daily = many\n' >"$T/bad.conf"
expect_fail "bad.conf:4: keep-daily: 'many' is not a number" "$A" run --config "$T/bad.conf"
check test ! -e "$STATE"

for i in 1 2 3; do
    "$A" backup -s "$S" -d "${DOM[c]}" --scratch-dir "$SCR" --json >"$T/c$i.json" 2>"$T/c$i.err" \
        || { cat "$T/c$i.err" >&2; die "backup of C failed"; }
done
C_IDS=$(for i in 1 2 3; do jq -r .id "$T/c$i.json"; done | sort | tr '\n' ' ')
C_CPS=$(cps c)
check test "$(printf '%s\n' "$C_CPS" | wc -l)" -eq 3

# ---------------------------------------------------------------------
step "1: ten simulated nights from Thu 28 March 2024"
from=$(epoch "2024-03-27 12:00")
NIGHTS=()
imgB=$(nj_image_path "${DOM[b]}" vda)
for night_no in $(seq 1 10); do
    night=$(next_night "$from")
    NIGHTS+=("$night")
    # B's storage goes away for nights 5 and 6
    if [ "$night_no" -eq 5 ]; then
        nj_virsh destroy "${DOM[b]}" >/dev/null
        mv "$imgB" "$imgB.away"
    elif [ "$night_no" -eq 7 ]; then
        mv "$imgB.away" "$imgB"
        nj_virsh start --paused "${DOM[b]}" >/dev/null
    fi
    b_ok=ok
    [ "$night_no" -ne 5 ] && [ "$night_no" -ne 6 ] || b_ok=FAILED
    gw a vda; gw a vdb
    [ "$b_ok" = FAILED ] || gw b vda
    log=night$night_no
    run_sim "$log" "$from" 1
    check_jobs "$L/$log.log" a=ok b=$b_ok
    check grep -qx "nightjar: run: 2 domain(s), at most 2 at once" "$L/$log.log"
    if grep -q "missed the run" "$L/$log.log"; then fail "$log: a catch-up run: $(grep missed "$L/$log.log")"; fi
    check grep -q "^nightjar: prune: removed [0-9]* of [0-9]* backup(s)$" "$L/$log.log"
    check grep -q "^nightjar: gc: freed " "$L/$log.log"
    after_run "$L/$log.log" "$night" a b
    note_success a "${OK_AT[a]}"
    [ "$b_ok" = FAILED ] || note_success b "${OK_AT[b]}"
    check_store "$log ($(show "$night"))"
    check_status "$night" 1 "$([ "$b_ok" = ok ] && echo 1 || echo 0)"
    check_state "$night"
    from=$((night + 3600))
done
# the nights: 31 March (no 02:30) is skipped
want_nights="2024-03-28 2024-03-29 2024-03-30 2024-04-01 2024-04-02 2024-04-03 2024-04-04 2024-04-05 2024-04-06 2024-04-07"
check test "$(for n in "${NIGHTS[@]}"; do date -d "@$n" '+%F'; done | tr '\n' ' ')" = "$want_nights "
check test "$(for n in "${NIGHTS[@]}"; do date -d "@$n" '+%H:%M'; done | sort -u)" = "02:30"
# B's failures say why (the child's last line); the first backup was a
# full, the second an incremental
grep -F "backup '${DOM[b]}': FAILED" "$L/night5.log" || true
check grep -qF "backup '${DOM[b]}': FAILED (exit status): " "$L/night5.log"
check grep -qF "backup '${DOM[a]}': ok, full " "$L/night1.log"
check grep -qF "backup '${DOM[a]}': ok, inc " "$L/night2.log"
for key in a b; do
    echo "levels of $key: $(for n in $(seq 1 10); do printf '%s ' "$(logline_ok "$L/night$n.log" "$key" level)"; done)"
done

# ---------------------------------------------------------------------
step "2: a missed window"
# three nights later: last_served (7 April) is older than 10 April 02:30
gw a vda; gw b vda
from=$(epoch "2024-04-10 12:00")
run_sim missed "$from" 1
check test "$(grep -c "missed the run" "$L/missed.log")" -eq 1
check grep -qx "nightjar: missed the run of $(epoch "2024-04-10 02:30"): running now" "$L/missed.log"
check test "$(grep -c '^nightjar: run: ' "$L/missed.log")" -eq 2
check test "$(count_lines "$L/missed.log" "nightjar: backup '${DOM[a]}': ok")" -eq 2
check test "$(count_lines "$L/missed.log" "nightjar: backup '${DOM[b]}': ok")" -eq 2
check test "$(count_lines "$L/missed.log" "nightjar: backup '")" -eq 4
# the catch-up run is stamped with the start-up time, the next at 11 April 02:30
for key in a b; do
    mapfile -t ids < <(F="nightjar: backup '${DOM[$key]}': ok, " awk '
        index($0, ENVIRON["F"]) == 1 { split(substr($0, length(ENVIRON["F"]) + 1), w, /[ ,]+/); print w[2] }' "$L/missed.log")
    for i in 0 1; do
        t=$from; [ "$i" -eq 0 ] || t=$(epoch "2024-04-11 02:30")
        RUN_OF[${ids[$i]}]=$t
        snap "$key" "$t"
        HAVE[$key]=$(retain ${HAVE[$key]} "$t")
    done
    store_list >/dev/null
    note_success "$key" "${ids[1]}"
done
sed 's/^/  | /' "$L/missed.log"
check_store missed
check_status "$(epoch "2024-04-11 02:30")" 1 1
check_state "$(epoch "2024-04-11 02:30")"

# ---------------------------------------------------------------------
step "3: run --once (real clock)"
gw a vda; gw a vdb; gw b vda
before=$(date +%s)
rc=0
"$A" run --config "$CONF" --once 2>"$L/once.log" || rc=$?
after=$(date +%s)
check test "$rc" -eq 0
check_jobs "$L/once.log" a=ok b=ok
check test "$(grep -c '^nightjar: run: ' "$L/once.log")" -eq 1
check grep -q "^nightjar: prune: removed " "$L/once.log"
check grep -qx "nightjar: service stopped" "$L/once.log"
if grep -q "missed the run" "$L/once.log"; then fail "--once made a catch-up run"; fi
after_run "$L/once.log" real a b
for key in a b; do
    t=${RUN_OF[${OK_AT[$key]}]}
    if [ "$t" -ge "$before" ] && [ "$t" -le "$after" ]; then ok; else fail "--once backup of $key stamped $(show "$t")"; fi
    note_success "$key" "${OK_AT[$key]}"
done
check_store once
prom_valid "$STATUS"
check test "$(prom_get nightjar_backup_success a)" = 1
check test "$(prom_get nightjar_backup_success b)" = 1
# --once serves no calendar time
check_state "$(epoch "2024-04-11 02:30")"

# ---------------------------------------------------------------------
step "4: SIGTERM while the backups of a real scheduled run go on"
# fresh random data, so that the jobs have something to read
for key in a b; do
    head -c $((8 * 1048576)) /dev/urandom >"$T/rnd.bin"
    chmod 0644 "$T/rnd.bin"
    out=$(nj_virsh qemu-monitor-command "${DOM[$key]}" --hmp \
        "qemu-io -d /machine/peripheral/ua-nj-vda/virtio-backend \"write -s $T/rnd.bin 4194304 8388608\"" 2>&1 \
        | tr -d '\r' | sed '/^[[:space:]]*$/d')
    [ -z "$out" ] || die "random write to $key: $out"
    nj_virsh qemu-monitor-command "${DOM[$key]}" --hmp \
        "qemu-io -d /machine/peripheral/ua-nj-vda/virtio-backend \"flush\"" >/dev/null
    dd if="$T/rnd.bin" of="$(nj_shadow_path "${DOM[$key]}" vda)" bs=1M seek=4 conv=notrunc status=none
    check nj_guest_check "${DOM[$key]}" vda
done
rm -f "$T/rnd.bin"
gw a vdb
# the calendar fires at the coming minute (or the one after, when the
# coming one is too close); the state says that everything before now
# was served
now=$(date +%s)
fire=$((now - now % 60 + 60))
[ $((fire - now)) -ge 5 ] || fire=$((fire + 60))
sed "s/^schedule = .*/schedule = *-*-* $(date -d "@$fire" +%H:%M)/" "$CONF" >"$T/real.conf"
jq --argjson t "$now" '.last_served = $t' "$STATE" >"$STATE.new" && mv "$STATE.new" "$STATE"
list_before=$(store_list | sort)
cps_before_a=$(cps a) cps_before_b=$(cps b)
echo "the service's run is due at $(show "$fire"), in $((fire - now)) s"
# each backup holds inside its begun pull job (the agent's test hook
# NIGHTJAR_TEST_HOLD_JOB: DIR/<uuid> appears once the job has begun, and
# the backup waits there until the file goes or it is interrupted), so
# both jobs certainly run when SIGTERM comes, whatever the machine's speed
HOLD=$T/hold
mkdir -p "$HOLD"
NIGHTJAR_TEST_HOLD_JOB=$HOLD "$A" run --config "$T/real.conf" 2>"$L/sigterm.log" &
svc=$!
bg_pids+=("$svc")
declare -A kid=()
held() {
    local key pid
    for key in a b; do
        [ -z "${kid[$key]:-}" ] || continue
        [ -e "$HOLD/${UUID[$key]}" ] || continue
        pid=$(pgrep -P "$svc" -f "backup .*-d ${UUID[$key]}" || true)
        [ -n "$pid" ] && kid[$key]=$pid
    done
    [ "${#kid[@]}" -eq 2 ] || ! kill -0 "$svc" 2>/dev/null
}
wait_until 600 held || true
kids=("${kid[@]}")
[ "$(date +%s)" -ge "$fire" ] || fail "the run began before its time"
echo "the run began $(($(date +%s) - fire)) s after its time; backups held in their jobs: ${!kid[*]}"
if [ "${#kid[@]}" -eq 2 ]; then ok; else
    fail "want two running backups with begun jobs; got ${!kid[*]}: $(cat "$L/sigterm.log")"
fi
for key in a b; do
    if [ -n "$(nj_virsh domjobinfo "${DOM[$key]}" | grep -v -e 'Job type: *None' -e '^ *$' || true)" ]; then ok; else
        fail "no job on $key while its backup is held (the test proves nothing)"
    fi
done
t_term=$(date +%s.%N)
kill -TERM "$svc"
wait_until 600 grep -q "^nightjar: stopping: " "$L/sigterm.log" || true
check grep -qx "nightjar: stopping: ending 2 running backup(s)" "$L/sigterm.log"
# the service ends its backups instead of waiting for them: they end
# FAILED (check_jobs below), not by finishing their work
rc=0
wait_exit "$svc" || rc=$?
secs=$(awk -v a="$t_term" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "after SIGTERM the service exited $rc in $secs s:"
sed 's/^/  | /' "$L/sigterm.log"
check test "$rc" -eq 0
check_jobs "$L/sigterm.log" a=FAILED b=FAILED
check grep -qx "nightjar: service stopped" "$L/sigterm.log"
if grep -qE "^nightjar: (prune|gc):" "$L/sigterm.log"; then fail "prune or gc after SIGTERM: $(cat "$L/sigterm.log")"; fi
# nothing committed, nothing left
check test "$(store_list | sort)" = "$list_before"
check test "$(cps a)" = "$cps_before_a"
check test "$(cps b)" = "$cps_before_b"
no_job a "after SIGTERM"
no_job b "after SIGTERM"
check test -z "$(ls -A "$SCR")"
check test -z "$(ls -A "$HOLD")"
check test -z "$(ls -A "$S/staging" 2>/dev/null || true)"
for k in "${kids[@]}"; do check test ! -e "/proc/$k"; done
# the interrupted run was not served
check test "$(jq -r .last_served "$STATE")" = "$now"
prom_valid "$STATUS"
check test "$(prom_get nightjar_backup_success a)" = 0
check test "$(prom_get nightjar_backup_success b)" = 0

# ---------------------------------------------------------------------
step "5: restarted, the interrupted run is made at start-up; SIGTERM while it sleeps"
"$A" run --config "$T/real.conf" 2>"$L/restart.log" &
svc=$!
bg_pids+=("$svc")
gc_or_exit() { grep -q "^nightjar: gc: " "$L/restart.log" || ! kill -0 "$svc" 2>/dev/null; }
wait_until 800 gc_or_exit || true
check grep -qx "nightjar: missed the run of $fire: running now" "$L/restart.log"
check_jobs "$L/restart.log" a=ok b=ok
# the state is saved after the run; then it sleeps until tomorrow: wait
# until it is in that sleep (its main thread in clock_nanosleep or
# nanosleep, /proc/PID/syscall), then SIGTERM
served() { [ "$(jq -r .last_served "$STATE" 2>/dev/null)" = "$fire" ]; }
wait_until 600 served || true
check test "$(jq -r .last_served "$STATE")" = "$fire"
in_sleep() {
    local nr
    nr=$(cut -d' ' -f1 "/proc/$svc/syscall" 2>/dev/null) || return 1
    [ "$nr" = 230 ] || [ "$nr" = 35 ]   # x86_64 clock_nanosleep, nanosleep
}
if [ "$(uname -m)" = x86_64 ]; then
    if wait_until 600 in_sleep; then ok; else fail "the service never went to sleep: $(cat "/proc/$svc/syscall" 2>&1)"; fi
else
    wait_until 600 grep -q . "/proc/$svc/wchan" || true
fi
t_term=$(date +%s.%N)
kill -TERM "$svc"
# (a service that slept on would sleep until tomorrow: the failsafe
# bound of wait_exit catches it, with no assumption about speed)
rc=0
wait_exit "$svc" || rc=$?
secs=$(awk -v a="$t_term" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "sleeping, the service exited $rc $secs s after SIGTERM"
check test "$rc" -eq 0
check test "$(tail -n 1 "$L/restart.log")" = "nightjar: service stopped"
if grep -q "stopping" "$L/restart.log"; then fail "nothing ran, yet: $(grep stopping "$L/restart.log")"; fi
after_run "$L/restart.log" real a b
for key in a b; do note_success "$key" "${OK_AT[$key]}"; done
check_store restart
check_status "$(awk '$1 == "nightjar_scheduler_last_run_timestamp_seconds" { print $2 }' "$STATUS")" 1 1
check_state "$fire"

# ---------------------------------------------------------------------
step "6: C and D untouched; verify; every kept point restores exactly"
check test "$(cps c)" = "$C_CPS"
check test -z "$(cps d)"
store_list >"$T/store.txt"
check "$R" verify -s "$S"
n=0
while read -r key id _; do
    [ "$key" = a ] || [ "$key" = b ] || continue
    for t in ${DISKS[$key]}; do
        rm -f "$T/restored.raw"
        if "$R" restore -s "$S" -d "${UUID[$key]}" -b "$id" --disk "$t" -o "$T/restored.raw" 2>"$T/restore.err"; then
            if cmp -s "$T/restored.raw" "$P/$key-${RUN_OF[$id]}-$t.raw"; then ok; else
                fail "$key $t at $(show "${RUN_OF[$id]}") ($id) differs from its shadow: $(cmp "$T/restored.raw" "$P/$key-${RUN_OF[$id]}-$t.raw" 2>&1 | head -n 1)"
            fi
        else
            fail "restore of $key $t at $id: $(cat "$T/restore.err")"
        fi
        n=$((n + 1))
    done
done <"$T/store.txt"
rm -f "$T/restored.raw"
echo "restored $n points"
check test "$n" -ge 8

# every backup the scheduler ran (all but C's, made by hand above)
# compressed with the configured zstd-level
nm=0
for id in $(ls "$S/backups"); do
    m=$(nj_manifest_file "$S" "$id")
    case " $C_IDS " in *" $id "*) continue ;; esac
    jq -e '[.disks[].compression | .policy == "auto" and .level_min == 2 and .level_max == 4] | all' "$m" > /dev/null \
        || fail "$m: not compressed with zstd-level 2..4: $(jq -c '[.disks[].compression]' "$m")"
    nm=$((nm + 1))
done
check test "$nm" -ge 4

step "done"
finish
