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

# use_test_s3: the test S3 endpoint (NJ_TEST_S3_* as scripts/ceph-start.sh
# prints them) as the AWS_* settings the S3 store reads, with no
# credentials file of the machine's; exit 77 saying why without one.
use_test_s3() {
    if [ -z "${NJ_TEST_S3_ENDPOINT:-}" ] || [ -z "${NJ_TEST_S3_ACCESS_KEY:-}" ]; then
        echo "SKIP: no test S3 endpoint: run scripts/ceph-start.sh and export what it prints" >&2
        exit 77
    fi
    export AWS_ENDPOINT_URL=$NJ_TEST_S3_ENDPOINT AWS_REGION=${NJ_TEST_S3_REGION:-us-east-1}
    export AWS_ACCESS_KEY_ID=$NJ_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$NJ_TEST_S3_SECRET_KEY
    export AWS_SHARED_CREDENTIALS_FILE=$T/no-credentials-file
}

# nj_manifest_file STORE ID: the file holding backup ID's manifest in a
# directory store: backups/ID/manifest.json (version-1 layout), or the
# newest generation's backups/ID/gNNNNNNNN/manifest.json (object layout).
nj_manifest_file() {
    if [ -f "$1/backups/$2/manifest.json" ]; then
        echo "$1/backups/$2/manifest.json"
    else
        ls -d "$1/backups/$2"/g[0-9]*[0-9]/manifest.json 2>/dev/null | LC_ALL=C sort | tail -n 1
    fi
}

finish() {
    echo "$pass passed, $failures failed"
    [ "$failures" -eq 0 ]
}
