#!/usr/bin/env bash
# Benchmarks the wave runner: a wave of N VMs (the fixture guests, alternating,
# without validation) run with 1 and then 2 VMs at a time. Prints each wall time, the
# speed-up, and the runner's own overhead (journal, scheduling, checks, reports, from
# wave-report.json) against the time spent inside v2k-migrate (goal: < 1 %).
#
#   scripts/bench-waves.sh [N]        (default N=4; V2K=path/to/v2k to pick a binary)
set -euo pipefail
N=${1:-4}
V2K=${V2K:-${CARGO_TARGET_DIR:-target}/release/v2k}
[ -x "$V2K" ] || { echo "bench-waves: build first: cargo build --release -p v2k-cli (or set V2K)" >&2; exit 2; }
command -v jq >/dev/null || { echo "bench-waves: jq is required" >&2; exit 2; }
CACHE=${V2K_FIXTURE_CACHE:-/var/cache/v2k/fixtures}
CLASSIC=$(ls -d "$CACHE"/debian-classic-*/vmx-sparse/debian-classic.vmx | head -1)
DRACUT=$(ls -d "$CACHE"/debian-dracut-lvm-*/vmx-sparse/debian-dracut-lvm.vmx | head -1)
[ -f "$CLASSIC" ] && [ -f "$DRACUT" ] || { echo "bench-waves: build the fixtures first (cargo test -p v2k-fixtures)" >&2; exit 2; }
WORK=$(mktemp -d /var/tmp/v2k-bench-waves.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

plan() { # $1 = concurrency
  echo "version: 1"
  echo "run-dir: run-$1"
  echo "defaults: { validate: false }"
  echo "limits: { vms: $1 }"
  echo "waves:"
  echo "  - name: bench"
  echo "    vms:"
  for i in $(seq 1 "$N"); do
    if (( i % 2 )); then src=$CLASSIC; else src=$DRACUT; fi
    echo "      - { source: $src, name: vm$i }"
  done
}

declare -A WALL
for c in 1 2; do
  plan "$c" > "$WORK/plan-$c.yaml"
  t0=$(date +%s.%N)
  "$V2K" wave run --json "$WORK/plan-$c.yaml" > "$WORK/events-$c.jsonl" || true
  t1=$(date +%s.%N)
  WALL[$c]=$(echo "$t1 - $t0" | bc -l)
  R="$WORK/run-$c/bench/wave-report.json"
  jq -e '.summary.migrated == .summary.total' "$R" >/dev/null || { echo "bench-waves: not every VM migrated (concurrency $c)" >&2; jq . "$R" >&2; exit 1; }
  mig=$(jq '[.vms[]."migrate-seconds"] | add' "$R")
  oh=$(jq '."overhead-seconds"' "$R")
  printf 'concurrency %s: wall %.1f s, migrate total %.1f s, runner overhead %.3f s (%.3f s/VM, %.4f %% of migration)\n' \
    "$c" "${WALL[$c]}" "$mig" "$oh" "$(echo "$oh / $N" | bc -l)" "$(echo "100 * $oh / $mig" | bc -l)"
  rm -rf "$WORK/run-$c/vms"   # the disks: keep the disk space for the next round
done
printf 'speed-up (1 -> 2 VMs at once, %s VMs): %.2fx\n' "$N" "$(echo "${WALL[1]} / ${WALL[2]}" | bc -l)"
