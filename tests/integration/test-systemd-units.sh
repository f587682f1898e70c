#!/bin/bash
# `meson install` (into a DESTDIR) installs the systemd units of the
# scheduler and the example configuration: nightjar.service (the
# long-running `nightjar-agent run --config`), nightjar-backup.service (one
# pass, `run --once`) and nightjar-backup.timer, with ExecStart naming the
# installed nightjar-agent (prefix/bindir of this build) and no
# placeholder left; the installed agent runs; both services set
# UMask=0077; `systemd-analyze verify` passes on the installed units,
# silently.
#
#   NJ_BUILD_ROOT   the meson build directory (set by meson)
. "$(dirname "$0")/lib.sh"
: "${NJ_BUILD_ROOT:?set by meson}"
require meson jq

D=$T/dest
# --no-rebuild: meson test has built everything; never run ninja from a test
if ! DESTDIR=$D meson install -C "$NJ_BUILD_ROOT" --quiet --no-rebuild >"$T/install.log" 2>&1; then
    cat "$T/install.log" >&2
    echo "FATAL: meson install failed" >&2
    exit 1
fi
opt() { meson introspect "$NJ_BUILD_ROOT" --buildoptions | jq -r --arg n "$1" '.[] | select(.name == $n) | .value'; }
prefix=$(opt prefix)
bindir=$(opt bindir)
datadir=$(opt datadir)
case $bindir in /*) ;; *) bindir=$prefix/$bindir ;; esac
case $datadir in /*) ;; *) datadir=$prefix/$datadir ;; esac
units=$D$prefix/lib/systemd/system
agent=$bindir/nightjar-agent

for u in nightjar.service nightjar-backup.service nightjar-backup.timer; do
    check test -f "$units/$u"
    if grep -q '@' "$units/$u"; then fail "$u keeps a placeholder: $(grep '@' "$units/$u")"; else ok; fi
done
check test -f "$D$datadir/doc/nightjar/nightjar.conf.example"
check cmp "$D$datadir/doc/nightjar/nightjar.conf.example" "$(dirname "$0")/../../systemd/nightjar.conf.example"

# execstart UNIT: its one ExecStart= line, without the key
execstart() {
    local n
    n=$(grep -c '^ExecStart=' "$units/$1") || true
    [ "$n" -eq 1 ] || { fail "$1 has $n ExecStart lines"; return 0; }
    sed -n 's/^ExecStart=//p' "$units/$1"
}
check test "$(execstart nightjar.service)" = "$agent run --config /etc/nightjar/nightjar.conf"
check test "$(execstart nightjar-backup.service)" = "$agent run --config /etc/nightjar/nightjar.conf --once"
check grep -qx 'Type=simple' "$units/nightjar.service"
check grep -qx 'Type=oneshot' "$units/nightjar-backup.service"
check grep -qx 'KillSignal=SIGTERM' "$units/nightjar.service"
check grep -qx 'WantedBy=multi-user.target' "$units/nightjar.service"
check grep -qx 'Persistent=true' "$units/nightjar-backup.timer"
check grep -qx 'WantedBy=timers.target' "$units/nightjar-backup.timer"
# the timer's calendar is the example configuration's schedule
check grep -qx 'OnCalendar=\*-\*-\* 02:00:00' "$units/nightjar-backup.timer"
check grep -qx 'schedule = daily 02:00' "$D$datadir/doc/nightjar/nightjar.conf.example"

# files the services create are private whatever the system's umask
for u in nightjar.service nightjar-backup.service; do
    check test "$(sed -n '/^\[Service\]/,/^\[/s/^UMask=//p' "$units/$u")" = 0077
done

# systemd-analyze verify on the installed units, in the installed tree
# (--root=DESTDIR: ExecStart's program is looked up there), with the
# host's own units copied in for the targets they name.  A failure, and
# any message at all (verify exits 0 on an unknown key or a value it
# cannot parse, and only warns), fails the test.
if command -v systemd-analyze >/dev/null 2>&1; then
    sysunits=
    for d in /usr/lib/systemd/system /lib/systemd/system; do
        [ -e "$d/sysinit.target" ] && { sysunits=$d; break; }
    done
    if [ -z "$sysunits" ]; then
        fail "no systemd unit directory with sysinit.target on this host"
    else
        mkdir -p "$D/usr/lib/systemd/system"
        cp -a "$sysunits/." "$D/usr/lib/systemd/system/"
        verify() {
            local rc=0 out
            out=$(systemd-analyze verify --root="$D" "$@" 2>&1) || rc=$?
            if [ "$rc" -eq 0 ] && [ -z "$out" ]; then ok; else
                fail "systemd-analyze verify ${*##*/} (exit $rc): $out"
            fi
        }
        verify "$units/nightjar.service" "$units/nightjar-backup.service" "$units/nightjar-backup.timer"
        # the check can fail: a missing ExecStart program, a bad value
        mv "$D$agent" "$D$agent.away"
        if systemd-analyze verify --root="$D" "$units/nightjar.service" >/dev/null 2>&1; then
            fail "verify passes with no ExecStart program"
        else ok; fi
        mv "$D$agent.away" "$D$agent"
        mkdir -p "$D/etc/systemd/system"
        sed 's/^UMask=.*/UMask=junk/' "$units/nightjar.service" >"$D/etc/systemd/system/nj-bad.service"
        out=$(systemd-analyze verify --root="$D" "$D/etc/systemd/system/nj-bad.service" 2>&1) || true
        case $out in *"mode value"*junk*) ok ;; *) fail "verify says nothing of UMask=junk: $out" ;; esac
        rm -f "$D/etc/systemd/system/nj-bad.service"
    fi
elif [ "${CI:-}" = true ]; then
    fail "systemd-analyze is not installed (CI=true: no skipping)"
else
    echo "SKIP (verify): systemd-analyze not installed" >&2
fi

# the ExecStart program is the installed agent, and it runs
check test -x "$D$agent"
check test -x "$D$bindir/nightjar-restore"
if out=$("$D$agent" --version 2>&1) && [[ $out == "nightjar-agent "* ]]; then ok; else
    fail "installed agent: $out"
fi
# its `run` knows the options the units pass
if out=$("$D$agent" run --config "$T/none.conf" --once 2>&1); then fail "run with a missing config succeeded"; else
    case $out in *none.conf*) ok ;; *) fail "run with a missing config: $out" ;; esac
fi

finish
