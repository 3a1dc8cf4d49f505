#!/usr/bin/env bash
# The demo: builds (or reuses from cache) the debian-classic test guest — a real
# Debian 12 VM in ESXi shape: PVSCSI, VMXNET3, two disks — shows what v2k sees in it,
# then migrates it to KVM with `v2k migrate`: convert, inject, boot (TCG here, user
# networking with restrict=on: nothing leaves this machine), check, report. Ends with
# the path of the report. Needs root (apt, loop devices, libvirtd).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
echo "== building v2k" >&2
cargo build --release --locked -p v2k-cli
V2K=$PWD/target/release/v2k

echo "== building (or reusing) the debian-classic guest; the first build takes a few minutes" >&2
FIX=$(bash tests/fixtures/build.sh debian-classic)
VMX=$FIX/vmx-sparse/debian-classic.vmx
OUT=${V2K_DEMO_OUT:-$PWD/out/demo}

echo "== v2k inspect $VMX" >&2
status=0
"$V2K" inspect "$VMX" || status=$?
# 1 means "a critical pre-flight concern": shown, and migrate will refuse it.
[ "$status" -le 1 ] || exit "$status"

echo "== v2k migrate (several minutes under TCG)" >&2
status=0
"$V2K" migrate "$VMX" --out "$OUT" --backend libvirt || status=$?
echo "report: $OUT/report.html" >&2
exit "$status"
