#!/bin/bash
# nightjar-agent key create|show|passwd: passphrases from a file, the
# environment or a terminal (never argv); one-line errors; an existing key
# file never overwritten; the fingerprint kept across passwd.
. "$(dirname "$0")/lib.sh"
require jq setsid
A=$NIGHTJAR_AGENT
unset NIGHTJAR_PASSPHRASE NIGHTJAR_NEW_PASSPHRASE
printf 'correct horse\n' > "$T/pw"
printf 'battery staple\n' > "$T/pw2"

# create: wrapped (passphrase file), plain; both 0600
"$A" key create --key-file "$T/k1" --passphrase-file "$T/pw" > "$T/out"
check grep -q "protected by a passphrase" "$T/out"
fpr=$("$A" key show --key-file "$T/k1" --json | jq -r .fingerprint)
check test "${#fpr}" -eq 32
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .protection)" = scrypt
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .scrypt.n)" -ge 16384
check test "$(stat -c %a "$T/k1")" = 600
NIGHTJAR_PASSPHRASE=env-pass "$A" key create --key-file "$T/k2" > /dev/null
"$A" key create --key-file "$T/k3" --no-passphrase > /dev/null
check test "$("$A" key show --key-file "$T/k3" --json | jq -r .protection)" = none
check test "$(stat -c %a "$T/k3")" = 600
# the passphrase is not in the file, nor the key in the clear
check test "$(grep -c 'correct horse' "$T/k1")" = 0
check test "$(jq -r .key "$T/k1")" = null

# refusals, one line each, nothing written
before=$(sha256sum "$T/k1")
expect_fail "never overwritten" "$A" key create --key-file "$T/k1" --no-passphrase
check test "$(sha256sum "$T/k1")" = "$before"
expect_fail "never taken from the command line" "$A" key create --key-file "$T/k4" "secret"
check test ! -e "$T/k4"
# no passphrase source and no terminal (setsid: no controlling tty)
expect_fail "no passphrase" setsid "$A" key create --key-file "$T/k4" < /dev/null
check test ! -e "$T/k4"
: > "$T/empty"
expect_fail "passphrase is empty" "$A" key create --key-file "$T/k4" --passphrase-file "$T/empty"
mkfifo "$T/fifo"
expect_fail "not a regular file" timeout 10 "$A" key create --key-file "$T/k4" --passphrase-file "$T/fifo"
expect_fail "not a regular file" timeout 10 "$A" key show --key-file "$T/fifo"
check test ! -e "$T/k4"
head -c 100 "$T/k1" > "$T/trunc"
expect_fail "not a nightjar key file" "$A" key show --key-file "$T/trunc"
expect_fail "No such file" "$A" key show --key-file "$T/nope"
expect_fail "exclude each other" "$A" key create --key-file "$T/k4" --no-passphrase --passphrase-file "$T/pw"

# passwd: wrong old passphrase refused and the file unchanged; then the
# same fingerprint under the new one, the old one retired
expect_fail "wrong passphrase" "$A" key passwd --key-file "$T/k1" --passphrase-file "$T/pw2" --new-passphrase-file "$T/pw"
check test "$(sha256sum "$T/k1")" = "$before"
"$A" key passwd --key-file "$T/k1" --passphrase-file "$T/pw" --new-passphrase-file "$T/pw2" > /dev/null
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .fingerprint)" = "$fpr"
expect_fail "wrong passphrase" "$A" key passwd --key-file "$T/k1" --passphrase-file "$T/pw" --no-passphrase
NIGHTJAR_PASSPHRASE='battery staple' "$A" key passwd --key-file "$T/k1" --no-passphrase > /dev/null
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .protection)" = none
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .fingerprint)" = "$fpr"
check test "$(stat -c %a "$T/k1")" = 600
# back under a passphrase from the environment
NIGHTJAR_NEW_PASSPHRASE=again "$A" key passwd --key-file "$T/k1" > /dev/null
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .protection)" = scrypt
NIGHTJAR_PASSPHRASE=again "$A" key passwd --key-file "$T/k1" --no-passphrase > /dev/null
check test "$("$A" key show --key-file "$T/k1" --json | jq -r .fingerprint)" = "$fpr"
finish
