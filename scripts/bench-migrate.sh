#!/usr/bin/env bash
# Side by side on the same source, alternating: `v2k migrate --no-validate` (inspect,
# convert, inject, target) against `virt-v2v -i vmx … -o local -of qcow2`, N runs each,
# medians and the ratio (goal ≤ 0.6). Then one validated `v2k migrate`, reporting the
# validation stage separately (goal: start of validation to a passed report ≤ 60 s
# under TCG for debian-classic).
#
#   usage: scripts/bench-migrate.sh [--runs N]       (as root; uses the cached fixture)
#   V2K=/path/to/v2k selects the binary (default: built from this checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=3
[ "${1:-}" = "--runs" ] && RUNS=$2
export LIBGUESTFS_BACKEND=direct LIBGUESTFS_BACKEND_SETTINGS=force_tcg
if [ -z "${V2K:-}" ]; then
    cargo build --release --locked -p v2k-cli >&2
    V2K=${CARGO_TARGET_DIR:-$PWD/target}/release/v2k
fi
FIX=$(bash tests/fixtures/build.sh debian-classic)
VMX=$FIX/vmx-sparse/debian-classic.vmx
WORK=${V2K_BENCH_DIR:-/var/tmp/v2k-bench-migrate}
mkdir -p "$WORK"

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
v2k_times=(); peer_times=()
for i in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/v2k" "$WORK/peer"; mkdir -p "$WORK/peer"
    s=$(date +%s.%N); "$V2K" migrate "$VMX" --out "$WORK/v2k" --no-validate >/dev/null 2>&1; e=$(date +%s.%N)
    v2k_times+=("$(echo "$e - $s" | bc)")
    s=$(date +%s.%N); virt-v2v -q -i vmx "$VMX" -o local -os "$WORK/peer" -of qcow2 >/dev/null 2>&1; e=$(date +%s.%N)
    peer_times+=("$(echo "$e - $s" | bc)")
    echo "run $i: v2k ${v2k_times[-1]} s, virt-v2v ${peer_times[-1]} s" >&2
done
v=$(printf '%s\n' "${v2k_times[@]}" | median)
p=$(printf '%s\n' "${peer_times[@]}" | median)
printf '%-34s %10s %10s %8s %6s\n' case v2k virt-v2v ratio goal
printf '%-34s %10.1f %10.1f %8.2f %6s\n' "migrate --no-validate (median s)" "$v" "$p" "$(echo "$v / $p" | bc -l)" "<=0.6"

rm -rf "$WORK/val"
"$V2K" migrate "$VMX" --out "$WORK/val" --backend qemu >/dev/null 2>&1 || true
python3 - "$WORK/val/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
v = r.get("validation") or {}
st = {s["name"]: s for s in r["stages"]}
print(f"{'validation stage (s)':34} {st['validate']['seconds']:10.1f}")
print(f"{'  of which: power-on to agent report':34} {(v.get('evidence') or {}).get('boot-seconds', 0):10.1f}   goal <= 60 (report passed: {v.get('passed')})")
PY
