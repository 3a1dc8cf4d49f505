#!/usr/bin/env bash
# The demo: builds (or reuses from cache) the debian-classic test guest — a real
# Debian 12 VM in ESXi shape: PVSCSI, VMXNET3, two disks — then shows what v2k sees
# in it (`v2k inspect`, `v2k info`) and converts its disks to verified QCOW2.
# Until the injector and validator land (issues 5 and 6), conversion is where the
# demo ends. Needs root (apt, loop devices to build the guest).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== building v2k" >&2
cargo build --release --locked -p v2k-cli
V2K=$PWD/target/release/v2k

echo "== building (or reusing) the debian-classic guest; the first build takes a few minutes" >&2
FIX=$(bash tests/fixtures/build.sh debian-classic)
SRC=$FIX/vmx-sparse
OUT=${V2K_DEMO_OUT:-$PWD/out/demo}
mkdir -p "$OUT"

echo "== v2k inspect $SRC" >&2
status=0
"$V2K" inspect "$SRC" || status=$?
# 1 means "a critical pre-flight concern": shown, but not a failure of the demo.
[ "$status" -le 1 ] || exit "$status"

echo "== v2k info" >&2
"$V2K" info "$SRC"/*.vmdk

echo "== v2k convert" >&2
"$V2K" convert "$SRC"/*.vmdk -o "$OUT" --force

echo "== checking the outputs with qemu-img" >&2
for q in "$OUT"/*.qcow2; do
    qemu-img check -q "$q"
done
echo "demo done: converted disks and their manifests are in $OUT" >&2
ls -l "$OUT"
