#!/bin/bash
# The S3 store end to end on a real radosgw (scripts/ceph-start.sh; its
# NJ_TEST_S3_* lines in the environment): imports of real qcow2 images with
# persistent bitmaps into s3://, restores from a machine state that holds
# nothing but the URL and the credentials, verify, prune with a merge, gc,
# protect; then every bad input gives one line and stores nothing.
. "$(dirname "$0")/lib.sh"
: "${NIGHTJAR_AGENT:?set by meson}"
require qemu-img qemu-io qemu-nbd jq cmp
use_test_s3
A=$NIGHTJAR_AGENT
R=$NIGHTJAR_RESTORE
U="s3://nj-test/it-$$-$(date +%s)/store"
qio() { qemu-io -f qcow2 "$@" >/dev/null; }
snap() { qemu-img convert -O raw "$1" "$2"; }
nbackups() { "$R" list -s "$U" --json | jq 'length'; }

# --- a chain: full, two incrementals; odd size; zeroed and discarded ranges
img=$T/disk.qcow2
size=$((40 * 1048576 + 7 * 512))
qemu-img create -q -f qcow2 "$img" $size
qio -c "write -P 0x61 0 5M" -c "write -P 0x62 20M 3M" -c "write -P 0x63 $((size - 4096)) 4096" "$img"
qemu-img bitmap --add "$img" nj1
dom="vm \"s3\" & <co>"
"$A" import -s "$U" -d "$dom" --disk vda --json "$img" > "$T/b1.json"
snap "$img" "$T/t1.raw"
check test "$(jq -r .level "$T/b1.json")" = full
qio -c "write -P 0x71 1M 64k" -c "write -z 20M 1M" -c "write -P 0x73 $((size - 1)) 1" "$img"
"$A" import -s "$U" -d "$dom" --disk vda -l inc --bitmap nj1 --json "$img" > "$T/b2.json"
qemu-img bitmap --add "$img" nj2
snap "$img" "$T/t2.raw"
check test "$(jq -r .parent "$T/b2.json")" = "$(jq -r .id "$T/b1.json")"
check test "$(jq -r '.disks[0].bytes_read' "$T/b2.json")" -le $((2 * 1048576))
qio -c "discard 0 2M" -c "write -P 0x81 4M 512k" "$img"
"$A" import -s "$U" -d "$dom" --disk vda -l inc --bitmap nj2 --json "$img" > "$T/b3.json"
snap "$img" "$T/t3.raw"
check test "$(nbackups)" -eq 3

# --- restore on a "disaster-recovery machine": empty HOME and TMPDIR, no
# state but the URL and the credentials
dr=$T/dr; mkdir -p "$dr/home" "$dr/tmp"
n=1
for id in $(jq -r .id "$T/b1.json" "$T/b2.json" "$T/b3.json"); do
    HOME=$dr/home TMPDIR=$dr/tmp "$R" restore -s "$U" -d "$dom" -b "$id" --disk vda -o "$dr/r$n.raw"
    check cmp "$dr/r$n.raw" "$T/t$n.raw"
    n=$((n + 1))
done
check test -z "$(find "$dr/home" "$dr/tmp" -mindepth 1)"
HOME=$dr/home TMPDIR=$dr/tmp "$R" restore -s "$U" -d "$dom" --disk vda -f qcow2 -o "$dr/latest.qcow2"
check qemu-img compare -q "$dr/latest.qcow2" "$T/t3.raw"
check "$R" verify -s "$U"
ok

# --- a clone dedups completely against the store (create-only PUTs: 412)
"$A" import -s "$U" -d clone-a --disk vda "$img" > /dev/null
cp "$img" "$T/copy.qcow2"
"$A" import -s "$U" -d clone --disk vdb --json "$T/copy.qcow2" > "$T/clone.json"
check test "$(jq -r '.disks[0].bytes_new' "$T/clone.json")" -eq 0
check test "$(jq -r '.disks[0].bytes_dedup' "$T/clone.json")" -gt 0

# --- protect, prune with a merge, gc: the chain still restores exactly
id1=$(jq -r .id "$T/b1.json"); id2=$(jq -r .id "$T/b2.json"); id3=$(jq -r .id "$T/b3.json")
"$A" protect -s "$U" -b "$id3" > /dev/null
check test "$("$R" list -s "$U" --json | jq -r --arg i "$id3" '.[] | select(.id == $i) | .protected')" = true
# keep-last 1 keeps id2 (a protected backup does not count): id1 is
# removed and merged into id2, which becomes a full; id3 keeps its flag
"$A" prune -s "$U" -d "$dom" --keep-last 1 > "$T/prune.out"
"$R" list -s "$U" -d "$dom" --json > "$T/after-prune.json"
check test "$(jq 'length' "$T/after-prune.json")" -eq 2
check test "$(jq -r '.[0].id' "$T/after-prune.json")" = "$id2"
check test "$(jq -r '.[0].level' "$T/after-prune.json")" = full
check test "$(jq -r '.[1].protected' "$T/after-prune.json")" = true
"$R" restore -s "$U" -d "$dom" -b "$id2" --disk vda -o "$T/merged.raw"
check cmp "$T/merged.raw" "$T/t2.raw"
"$A" gc -s "$U" --grace 0 --json > "$T/gc.json"
"$R" restore -s "$U" -d "$dom" --disk vda -o "$T/after-gc.raw"
check cmp "$T/after-gc.raw" "$T/t3.raw"
"$R" restore -s "$U" -d clone --disk vdb -o "$T/clone.raw"
check cmp "$T/clone.raw" "$T/t3.raw"
check "$R" verify -s "$U"
# gc freed the chunks only the removed points held, and kept the rest
check test "$(jq -r .chunks_freed "$T/gc.json")" -gt 0
check test "$(jq -r .chunks_kept "$T/gc.json")" -gt 0

# --- bad input: one line, non-zero, nothing stored
before=$(nbackups)
expect_fail "403\|denied\|SignatureDoesNotMatch" env AWS_SECRET_ACCESS_KEY=wrong "$A" import -s "$U" -d bad --disk vda "$img"
expect_fail "no credentials" env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$R" list -s "$U"
expect_fail "not a nightjar store" "$R" list -s "s3://nj-test/it-$$-nothing-here"
expect_fail "not a valid S3 bucket name" "$R" list -s "s3://Bad_Bucket/x"
expect_fail "not a store name" "$R" list -s "s3://nj-test/a/../b"
expect_fail "unknown store URL" "$R" list -s "ftp://host/x"
expect_fail "file:// URL needs an absolute path" "$R" list -s "file://relative/x"
expect_fail "127.0.0.1:1\|connect\|Couldn't" env AWS_ENDPOINT_URL=http://127.0.0.1:1 "$A" import -s "$U" -d bad --disk vda "$img"
check test "$(nbackups)" -eq "$before"

# --- HTTPS with a private CA: trusted through AWS_CA_BUNDLE (or a
# credentials profile's ca_bundle) only; otherwise refused, nothing written
if [ -n "${NJ_TEST_S3_TLS_ENDPOINT:-}" ]; then
    UT="s3://nj-test/tls-$$-$(date +%s)"
    AWS_ENDPOINT_URL=$NJ_TEST_S3_TLS_ENDPOINT AWS_CA_BUNDLE=$NJ_TEST_S3_CA_FILE \
        "$A" import -s "$UT" -d tls --disk vda --json "$img" > "$T/tls.json"
    check test "$(jq -r .transfer.requests "$T/tls.json")" -gt 0
    AWS_ENDPOINT_URL=$NJ_TEST_S3_TLS_ENDPOINT AWS_CA_BUNDLE=$NJ_TEST_S3_CA_FILE \
        "$R" restore -s "$UT" -d tls --disk vda -o "$T/tls.raw"
    snap "$img" "$T/tls-truth.raw"
    check cmp "$T/tls.raw" "$T/tls-truth.raw"
    # the same store over plain HTTP is the same bucket
    check test "$("$R" list -s "$UT" --json | jq length)" -eq 1
    # the system's CA store does not know the private CA
    expect_fail "certificate\|SSL" env AWS_ENDPOINT_URL=$NJ_TEST_S3_TLS_ENDPOINT \
        AWS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
        "$A" import -s "s3://nj-test/tls-$$-refused" -d tls --disk vda "$img"
    expect_fail "not a nightjar store" "$R" list -s "s3://nj-test/tls-$$-refused"
    # a profile's ca_bundle is read too
    printf '[tls]\naws_access_key_id = %s\naws_secret_access_key = %s\nca_bundle = %s\n' \
        "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$NJ_TEST_S3_CA_FILE" > "$T/creds"
    chmod 600 "$T/creds"
    check env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_CA_BUNDLE \
        AWS_SHARED_CREDENTIALS_FILE="$T/creds" AWS_PROFILE=tls \
        AWS_ENDPOINT_URL=$NJ_TEST_S3_TLS_ENDPOINT "$R" verify -s "$UT"
else
    fail "no NJ_TEST_S3_TLS_ENDPOINT: scripts/ceph-start.sh prints it"
fi

# --- file:// names the same directory store a path does
"$A" import -s "file://$T/dirstore" -d d --disk vda "$img" > /dev/null
check test "$("$R" list -s "$T/dirstore" --json | jq 'length')" -eq 1
finish
