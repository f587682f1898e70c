# Shared helpers for nightjar's shell tests.  Source it; it sets -eu.
set -eu
set -o pipefail

: "${NIGHTJAR_RESTORE:?set by meson}"

T=$(mktemp -d "${TMPDIR:-/tmp}/nightjar-${0##*/}.XXXXXX")
cleanup_hooks=()
cleanup() {
    local rc=$?
    for h in "${cleanup_hooks[@]}"; do eval "$h" || true; done
    rm -rf "$T"
    exit $rc
}
trap cleanup EXIT

failures=0
pass=0
ok() { pass=$((pass + 1)); }
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
check() { if "$@"; then ok; else fail "$*"; fi; }

# expect_fail PATTERN CMD...: CMD must exit non-zero with exactly one
# stderr line matching PATTERN.
expect_fail() {
    local pat=$1; shift
    local err rc=0
    err=$("$@" 2>&1 >/dev/null) || rc=$?
    if [ "$rc" -eq 0 ]; then fail "expected failure: $*"; return; fi
    if [ "$(printf '%s\n' "$err" | wc -l)" -ne 1 ]; then
        fail "expected one error line from: $* -- got: $err"; return
    fi
    if ! printf '%s' "$err" | grep -q -- "$pat"; then
        fail "error of '$*' does not match '$pat': $err"; return
    fi
    ok
}

require() {
    for t in "$@"; do
        command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t not installed" >&2; exit 77; }
    done
}

finish() {
    echo "$pass passed, $failures failed"
    [ "$failures" -eq 0 ]
}
