#!/bin/bash
# ceph-start.sh: a throw-away single-node Ceph on loopback for nightjar's
# S3 tests: one ceph-mon, one ceph-osd (memstore: data in RAM), radosgw
# (beast, 127.0.0.1) and an S3 user.  No systemd, no ceph-mgr.  Run as root;
# reads no stdin.
#
# Knobs (environment, all optional):
#   NJ_CEPH_DIR       state directory             (default /tmp/nightjar-ceph)
#   NJ_CEPH_PORT      radosgw port on 127.0.0.1   (default 7480)
#   NJ_CEPH_MON_PORT  monitor msgr2 port          (default NJ_CEPH_PORT - 4180,
#                     so 7480 -> 3300 and two clusters on 7480 and 7481 differ)
#   NJ_CEPH_OSD_GB    memstore size in GiB        (default 4)
#   NJ_CEPH_TLS_PORT  radosgw's HTTPS port        (default NJ_CEPH_PORT + 363),
#                     with a certificate for 127.0.0.1 signed by a CA made
#                     here ($NJ_CEPH_DIR/tls/ca.pem)
#
# On success prints shell-sourceable lines (also in $NJ_CEPH_DIR/env):
#   NJ_TEST_S3_ENDPOINT=... NJ_TEST_S3_REGION=... NJ_TEST_S3_ACCESS_KEY=...
#   NJ_TEST_S3_SECRET_KEY=... NJ_TEST_S3_TLS_ENDPOINT=https://...
#   NJ_TEST_S3_CA_FILE=...
# When the cluster in NJ_CEPH_DIR already runs and answers, prints them
# again.  On failure the tails of the daemon logs go to stderr, the
# daemons are stopped (logs kept) and the exit status is 1.
set -euo pipefail
exec </dev/null

dir=${NJ_CEPH_DIR:-/tmp/nightjar-ceph}
port=${NJ_CEPH_PORT:-7480}
mon_port=${NJ_CEPH_MON_PORT:-$((port - 4180))}
osd_gb=${NJ_CEPH_OSD_GB:-4}
tls_port=${NJ_CEPH_TLS_PORT:-$((port + 363))}
here=$(cd "$(dirname "$0")" && pwd)

say() { echo "ceph-start: $*" >&2; }
fail() {
    say "error: $*"
    local f
    for f in "$dir"/log/*; do
        [ -s "$f" ] || continue
        echo "--- tail of $f" >&2
        tail -n 8 "$f" >&2
    done
    if [ -d "$dir" ]; then
        NJ_CEPH_KEEP=1 NJ_CEPH_DIR=$dir "$here/ceph-stop.sh" >&2 || true
        say "daemons stopped; logs kept in $dir/log (scripts/ceph-stop.sh removes them)"
    fi
    exit 1
}
# retry <seconds> <command...>: every 0.2 s until it succeeds
retry() {
    local n=$(($1 * 5))
    shift
    until "$@" >/dev/null 2>&1; do
        n=$((n - 1))
        [ "$n" -gt 0 ] || return 1
        sleep 0.2
    done
}
# Something accepts connections on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
rgw_answers() { curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$port/"; }

case $port$mon_port$osd_gb$tls_port in *[!0-9]*) fail "NJ_CEPH_PORT, NJ_CEPH_MON_PORT, NJ_CEPH_TLS_PORT and NJ_CEPH_OSD_GB must be numbers" ;; esac
[ "$(id -u)" = 0 ] || fail "must run as root"
for p in ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl openssl; do
    command -v "$p" >/dev/null || fail "'$p' not found (scripts/install-deps.sh installs it)"
done

if [ -s "$dir/env" ] && alive "$dir/run/mon.a.pid" && alive "$dir/run/osd.0.pid" \
   && alive "$dir/run/client.rgw.nj.pid" && rgw_answers; then
    cat "$dir/env"
    exit 0
fi

# Leftovers of a cluster that died: stop what is left, start afresh.
NJ_CEPH_DIR=$dir "$here/ceph-stop.sh" >/dev/null 2>&1 || true
for p in "$port" "$mon_port" "$tls_port"; do
    port_busy "$p" && fail "127.0.0.1:$p is in use (another cluster? set NJ_CEPH_PORT, NJ_CEPH_MON_PORT)"
done
mkdir -p "$dir"/run "$dir"/log "$dir"/mon "$dir"/osd/0 "$dir"/tmp
chmod 700 "$dir"
conf=$dir/ceph.conf
fsid=$(cat /proc/sys/kernel/random/uuid)
# A CA of this cluster's own and a certificate for 127.0.0.1 it signs, for
# radosgw's HTTPS endpoint (clients trust it through the CA file only).
mkdir -p "$dir/tls"
(
    cd "$dir/tls"
    umask 077
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=nightjar test CA" \
        -keyout ca.key -out ca.pem >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
        -keyout rgw.key -out rgw.csr >/dev/null 2>&1
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
    openssl x509 -req -in rgw.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 30 -extfile ext.cnf -out rgw.pem >/dev/null 2>&1
    chmod 0644 ca.pem
) || fail "openssl: could not make the test certificate"
access_key=NJTEST$(head -c 7 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
secret_key=$(head -c 48 /dev/urandom | base64 | tr -d '/+=' | head -c 40)

cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
keyring = $dir/\$cluster.\$name.keyring
run dir = $dir/run
pid file = $dir/run/\$name.pid
admin socket = $dir/run/\$name.asok
log file = $dir/log/\$name.log
log to stderr = false
err to stderr = true
mon cluster log file = $dir/log/cluster.log
crash dir = $dir/tmp
# one OSD: pools of size 1, no placement across hosts
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
mon data avail warn = 2
mon data avail crit = 1
# no ceph-mgr here: do not warn about it
mon mgr mkfs grace = 31536000
# apply map changes at once rather than batched each second
paxos propose interval = 0.01
paxos min wait = 0.001
[mon]
mon data = $dir/mon/\$name
[osd]
osd data = $dir/osd/\$id
keyring = $dir/osd/\$id/keyring
osd objectstore = memstore
memstore device bytes = $((osd_gb << 30))
osd op num shards = 2
osd op num threads per shard = 2
[client.rgw.nj]
keyring = $dir/rgw.keyring
# tcp_nodelay: without it radosgw writes a response's header and body in
# two segments and Nagle holds the second for the client's delayed ACK,
# 40 ms per small GET (measured here)
rgw frontends = beast endpoint=127.0.0.1:$port ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$dir/tls/rgw.pem ssl_private_key=$dir/tls/rgw.key tcp_nodelay=1
rgw thread pool size = 64
rgw enable usage log = false
rgw enable ops log = false
rgw init timeout = 60
EOF
export CEPH_CONF=$conf CEPH_ARGS="--conf $conf"

say "monitor on 127.0.0.1:$mon_port"
ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/rgw.keyring" --gen-key -n client.rgw.nj \
    --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/ceph.client.admin.keyring" >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/rgw.keyring" >/dev/null
monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$dir/tmp/monmap" >/dev/null
ceph-mon -i a --mkfs --monmap "$dir/tmp/monmap" --keyring "$dir/mon.keyring" \
    2>>"$dir/log/mkfs.log" || fail "ceph-mon --mkfs"
ceph-mon -i a 2>>"$dir/log/mon.a.stderr" || fail "ceph-mon did not start"
retry 60 ceph --connect-timeout 5 mon stat || fail "monitor not answering"

say "osd.0 (memstore, $osd_gb GiB)"
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_key=$(ceph-authtool --gen-print-key)
ceph-authtool --create-keyring "$dir/osd/0/keyring" -n osd.0 --add-key "$osd_key" >/dev/null
osd_id=$(printf '{"cephx_secret": "%s"}' "$osd_key" | ceph osd new "$osd_uuid" -i -) \
    || fail "ceph osd new"
[ "$osd_id" = 0 ] || fail "expected osd id 0, got '$osd_id'"
ceph-osd -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>>"$dir/log/mkfs.log" || fail "ceph-osd --mkfs"
ceph-osd -i 0 2>>"$dir/log/osd.0.stderr" || fail "ceph-osd did not start"
retry 120 sh -c "ceph osd dump 2>/dev/null | grep -q '^osd.0 up'" || fail "osd.0 did not come up"

say "radosgw on 127.0.0.1:$port"
radosgw -n client.rgw.nj 2>>"$dir/log/rgw.stderr" || fail "radosgw did not start"
retry 180 rgw_answers || fail "radosgw not answering on 127.0.0.1:$port"
radosgw-admin user create --uid=nightjar-test --display-name=nightjar-test \
    --access-key="$access_key" --secret-key="$secret_key" \
    >"$dir/tmp/user.json" 2>>"$dir/log/radosgw-admin.log" || fail "radosgw-admin user create"

umask 077
cat >"$dir/env.tmp" <<EOF
NJ_TEST_S3_ENDPOINT=http://127.0.0.1:$port
NJ_TEST_S3_REGION=us-east-1
NJ_TEST_S3_ACCESS_KEY=$access_key
NJ_TEST_S3_SECRET_KEY=$secret_key
NJ_TEST_S3_TLS_ENDPOINT=https://127.0.0.1:$tls_port
NJ_TEST_S3_CA_FILE=$dir/tls/ca.pem
EOF
mv "$dir/env.tmp" "$dir/env"
cat "$dir/env"
say "ready"
