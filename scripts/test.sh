#!/bin/bash
# The whole test suite, from a fresh Debian 12 machine: install what is
# needed, build warning-free (-Werror), run every test, then run the unit
# suite again under ASan+UBSan, then run each fuzzer briefly.
#
#   bash scripts/test.sh            everything
#   NJ_SKIP_SANITIZE=1 / NJ_SKIP_FUZZ=1  to leave a stage out (local use)
#
# With CI=true (as CI runs it) a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/start-libvirt.sh
# A throw-away Ceph (radosgw on 127.0.0.1) for the S3 store's tests; its
# NJ_TEST_S3_* settings reach every test through the environment, and it
# is stopped however the run ends.
ceph_env=$(bash scripts/ceph-start.sh)
while IFS= read -r line; do export "$line"; done <<< "$ceph_env"
trap 'bash scripts/ceph-stop.sh >/dev/null 2>&1 || true' EXIT

results=()
run_suite() { # builddir label meson-test-args...
    local dir=$1 label=$2; shift 2
    local rc=0
    meson test -C "$dir" --print-errorlogs "$@" || rc=$?
    local log="$dir/meson-logs/testlog.json"
    local p f s
    p=$(jq -s '[.[] | select(.result == "OK" or .result == "EXPECTEDFAIL")] | length' "$log")
    f=$(jq -s '[.[] | select(.result == "FAIL" or .result == "TIMEOUT" or .result == "ERROR" or .result == "UNEXPECTEDPASS")] | length' "$log")
    s=$(jq -s '[.[] | select(.result == "SKIP")] | length' "$log")
    results+=("$label: $p passed, $f failed, $s skipped")
    if [ "$s" -gt 0 ]; then
        skipped+=($(jq -rs --arg l "$label" '.[] | select(.result == "SKIP") | "\($l)/\(.name)"' "$log"))
    fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + s))
    return $rc
}
total_pass=0 total_fail=0 total_skip=0
skipped=()
status=0

# 1. Strict build and every suite.
if [ ! -d build-ci ]; then
    meson setup build-ci -Dwerror=true -Dbuildtype=debugoptimized
fi
ninja -C build-ci
run_suite build-ci "all suites" || status=1

# 2. Sanitizers on the unit suite.
if [ -z "${NJ_SKIP_SANITIZE:-}" ]; then
    if [ ! -d build-asan ]; then
        CC=clang meson setup build-asan -Dwerror=true -Db_sanitize=address,undefined \
            -Db_lundef=false -Dbuildtype=debug
    fi
    ninja -C build-asan
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        run_suite build-asan "asan+ubsan unit" --suite unit || status=1
fi

# 3. Fuzzers, briefly.
if [ -z "${NJ_SKIP_FUZZ:-}" ] && [ -x scripts/fuzz.sh ]; then
    if FUZZ_SECONDS=${FUZZ_SECONDS:-20} bash scripts/fuzz.sh; then
        results+=("fuzz: 1 passed, 0 failed"); total_pass=$((total_pass + 1))
    else
        results+=("fuzz: 0 passed, 1 failed"); total_fail=$((total_fail + 1)); status=1
    fi
fi

# In CI a skip is a failure: CI installs every tool a test needs, so a
# test that still cannot run is a broken install step, not an option.
if [ "${#skipped[@]}" -gt 0 ]; then
    echo "skipped: ${skipped[*]} (see the test logs for why)"
    if [ "${CI:-}" = true ]; then
        echo "CI=true: skipped tests count as failures"
        total_fail=$((total_fail + total_skip)); total_skip=0; status=1
    fi
fi
printf '%s\n' "${results[@]}"
echo "tests: $total_pass passed, $total_fail failed, $total_skip skipped"
exit $status
