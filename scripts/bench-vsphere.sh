#!/usr/bin/env bash
# Download-and-convert of a multi-GiB disk from VMware's vCenter simulator (vcsim)
# against a plain `curl` download of the same extent, side by side, and the ratio
# (the goal, issue 8: v2k <= 1.1 x curl, i.e. the conversion hides behind the transfer).
#
#   bash scripts/bench-vsphere.sh [SIZE_GIB]      (default 2; half random data, half zeros)
#
# Needs golang-go, golang-github-vmware-govmomi-dev, openssl, curl, qemu-img (setup.sh).
# Everything runs on 127.0.0.1; the simulator is stopped by PID at exit.
set -euo pipefail

SIZE_GIB=${1:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /var/tmp/v2k-bench-vsphere.XXXXXX)
CACHE=/var/cache/v2k/vcsim
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for c in go openssl curl qemu-img; do
    command -v "$c" >/dev/null || { echo "missing prerequisite: $c (run scripts/setup.sh)" >&2; exit 2; }
done
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] ||
    { echo "missing prerequisite: golang-github-vmware-govmomi-dev" >&2; exit 2; }

# The launcher, cached by the hash of its source (the tests use the same cache).
HASH=$(sha256sum "$ROOT/tests/vcsim/main.go" | cut -d' ' -f1)
BIN=$CACHE/$HASH/vcsim
if [ ! -x "$BIN" ]; then
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"; flock 9
    if [ ! -x "$BIN" ]; then
        TMP=$CACHE/.build-$$-$HASH; rm -rf "$TMP"; mkdir -p "$TMP/gopath"
        GO111MODULE=off GOPATH="$TMP/gopath:/usr/share/gocode" GOCACHE="$CACHE/gocache" \
            go build -o "$TMP/vcsim" "$ROOT/tests/vcsim/main.go"
        rm -rf "$TMP/gopath"; mv "$TMP" "$CACHE/$HASH"
    fi
    exec 9>&-
fi

(cd "$ROOT" && cargo build -q --release -p v2k-vsphere --example vsphere-bench)
BENCH=$TARGET/release/examples/vsphere-bench

# Test PKI: a CA and an RSA-2048 server certificate for 127.0.0.1.
cd "$WORK"
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj "/CN=bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout key.pem -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext.cnf
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile ext.cnf 2>/dev/null

export V2K_VSPHERE_PASSWORD=bench-password
mkdir -p "$WORK/tmp"
mkfifo "$WORK/stdin"
# The launcher exits when its stdin closes: this shell holds the FIFO's write end
# (fd 7) until it exits, so the simulator cannot outlive the script.
exec 7<>"$WORK/stdin"
TMPDIR=$WORK/tmp VCSIM_USER=bench VCSIM_PASSWORD=$V2K_VSPHERE_PASSWORD \
    "$BIN" -cert cert.pem -key key.pem < "$WORK/stdin" 7<&- > url.txt 2> vcsim.log &
PID=$!
for _ in $(seq 100); do [ -s url.txt ] && break; sleep 0.1; done
URL=$(head -1 url.txt); PORT=${URL#https://127.0.0.1:}; PORT=${PORT%%/*}
DS=$(ls -d "$WORK"/tmp/govcsim-DC0-LocalDS_0-* | head -1)

# The disk, written straight into the simulated datastore: half random, half zeros,
# in alternating 256 MiB stretches (so zero detection and data both matter).
mkdir -p "$DS/bench"
FLAT=$DS/bench/bench-flat.vmdk
: > "$FLAT"
for i in $(seq 0 $((SIZE_GIB * 4 - 1))); do
    if [ $((i % 2)) -eq 0 ]; then
        head -c $((256 << 20)) /dev/urandom >> "$FLAT"
    else
        truncate -s $(( (i + 1) * (256 << 20) )) "$FLAT"
    fi
done
BYTES=$(stat -c %s "$FLAT")
cat > "$DS/bench/bench.vmdk" <<EOF
# Disk DescriptorFile
version=1
CID=fffffffe
parentCID=ffffffff
createType="vmfs"
RW $((BYTES / 512)) VMFS "bench-flat.vmdk"
EOF

run_curl() {
    local t0 t1
    t0=$(date +%s.%N)
    curl -sS --fail --cacert ca.pem -o "$WORK/curl.raw" \
        "https://127.0.0.1:$PORT/folder/bench/bench-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"
    sync -f "$WORK/curl.raw"
    t1=$(date +%s.%N)
    rm -f "$WORK/curl.raw"
    echo "$t1 - $t0" | bc -l
}
run_v2k() {
    local t0 t1 line copy
    t0=$(date +%s.%N)
    line=$("$BENCH" 127.0.0.1 "$PORT" bench ca.pem "[LocalDS_0] bench/bench.vmdk" DC0 "$WORK/out.qcow2")
    t1=$(date +%s.%N)
    echo "  v2k: $line" >&2
    copy=$(echo "$line" | tr ' ' '\n' | sed -n 's/^copy_seconds=//p')
    echo "$(echo "$t1 - $t0" | bc -l) $copy"
}

echo "disk: $BYTES bytes ($SIZE_GIB GiB, half zeros); vcsim on 127.0.0.1:$PORT" >&2
# Two rounds, alternating, the best of each counted (the page cache is warm for both).
C1=$(run_curl); V1=$(run_v2k); C2=$(run_curl); V2=$(run_v2k)
C=$(printf '%s\n%s\n' "$C1" "$C2" | sort -g | head -1)
BEST=$(printf '%s\n%s\n' "$V1" "$V2" | sort -g | head -1)
V=${BEST% *}; COPY=${BEST#* }
qemu-img compare -q -f raw -F qcow2 "$FLAT" "$WORK/out.qcow2" && echo "qemu-img compare: identical" >&2
printf 'curl download:          %7.2f s  (%.0f MiB/s)\n' "$C" "$(echo "$BYTES / 1048576 / $C" | bc -l)"
printf 'v2k download+convert:   %7.2f s  (%.0f MiB/s, verified)\n' "$V" "$(echo "$BYTES / 1048576 / $V" | bc -l)"
printf '  of which streaming copy: %5.2f s; the rest is login, read-back verification, fsync\n' "$COPY"
printf 'ratio v2k / curl:       %7.2f  (goal <= 1.10)\n' "$(echo "$V / $C" | bc -l)"
printf 'ratio copy / curl:      %7.2f  (the conversion hidden behind the transfer)\n' "$(echo "$COPY / $C" | bc -l)"
