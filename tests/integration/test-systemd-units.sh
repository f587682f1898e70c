#!/bin/bash
# `meson install` (into a DESTDIR) installs the systemd units of the
# scheduler and the example configuration: nightjar.service (the
# long-running `nightjar-agent run --config`), nightjar-backup.service (one
# pass, `run --once`) and nightjar-backup.timer, with ExecStart naming the
# installed nightjar-agent (prefix/bindir of this build) and no
# placeholder left; the installed agent runs.
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
