#!/usr/bin/env bash
# Side-by-side benchmark of a whole guest conversion (issue 5, "Performance"):
# `v2k convert` + `v2k inject` against `virt-v2v -i vmx FIXTURE.vmx -o local -of qcow2`
# on the same fixture guest, under the same load. A measurement, not a test: exits 0
# when it ran (goal met or not), non-zero on any error.
#
#   scripts/bench-inject.sh [--variant debian-classic|debian-dracut-lvm] [--runs N]
#                           [--workdir DIR] [--keep]
#
# Environment: V2K = the v2k binary (default $CARGO_TARGET_DIR/release/v2k or
# target/release/v2k, built with `cargo build --release -p v2k-cli` if absent).
#
# Method:
# - The fixture is built (or taken from the cache) by tests/fixtures/build.sh; both
#   tools read its Workstation-style VMX + monolithicSparse VMDKs.
# - Both tools run with the same libguestfs settings: LIBGUESTFS_BACKEND=direct and,
#   when KVM is not usable (no vmx/svm flag), LIBGUESTFS_BACKEND_SETTINGS=force_tcg.
# - Runs alternate between the tools; each run starts from nothing (outputs removed,
#   `sync`, source read once untimed so both see a warm page cache).
# - Wall time and peak RSS from GNU time. Goal: v2k total <= 0.6 x virt-v2v.
set -euo pipefail

VARIANT=debian-classic RUNS=1 WORKDIR=/var/tmp/v2k-bench-inject KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --variant) VARIANT=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "bench-inject: unknown argument $1" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for c in virt-v2v qemu-img jq /usr/bin/time; do
    command -v "$c" >/dev/null || { echo "bench-inject: missing $c (scripts/setup.sh)" >&2; exit 3; }
done
if [ -z "${V2K:-}" ]; then
    V2K=${CARGO_TARGET_DIR:-$HERE/target}/release/v2k
    [ -x "$V2K" ] || (cd "$HERE" && cargo build --release -p v2k-cli >&2)
fi

export LIBGUESTFS_BACKEND=direct
if [ -r /dev/kvm ] && [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    ACCEL=kvm
else
    ACCEL=tcg
    export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
fi

FIX=$(bash "$HERE/tests/fixtures/build.sh" "$VARIANT")
VMX=$FIX/vmx-sparse/$VARIANT.vmx
mkdir -p "$WORKDIR"
RESULTS=$WORKDIR/results-$(date -u +%Y%m%dT%H%M%SZ).tsv
printf 'run\ttool\tphase\twall_s\tmax_rss_kb\n' >"$RESULTS"

timed() { # timed RUN TOOL PHASE CMD... : runs CMD under GNU time, appends a row
    local run=$1 tool=$2 phase=$3; shift 3
    local tf; tf=$(mktemp)
    if ! /usr/bin/time -o "$tf" -f '%e %M' "$@" >"$WORKDIR/$tool-$phase.out" 2>&1; then
        echo "bench-inject: $tool $phase failed; output in $WORKDIR/$tool-$phase.out" >&2
        tail -20 "$WORKDIR/$tool-$phase.out" >&2
        exit 1
    fi
    read -r wall rss <"$tf"; rm -f "$tf"
    printf '%s\t%s\t%s\t%s\t%s\n' "$run" "$tool" "$phase" "$wall" "$rss" >>"$RESULTS"
    echo "  $tool $phase: ${wall}s, ${rss} KiB peak" >&2
}

warm() { cat "$FIX"/vmx-sparse/*.vmdk >/dev/null; sync; }

run_v2k() {
    local out=$WORKDIR/v2k; rm -rf "$out"; mkdir -p "$out"; warm
    timed "$1" v2k convert "$V2K" convert "$FIX/vmx-sparse/$VARIANT.vmdk" \
        "$FIX/vmx-sparse/${VARIANT}_1.vmdk" -o "$out"
    timed "$1" v2k inject "$V2K" inject --accel "$ACCEL" --vm "$VMX" \
        "$out/$VARIANT.qcow2" "$out/${VARIANT}_1.qcow2" --out "$out"
    jq -e '.status == "converted"' "$out/conversion-log.json" >/dev/null
}

run_v2v() {
    local out=$WORKDIR/virt-v2v; rm -rf "$out"; mkdir -p "$out"; warm
    timed "$1" virt-v2v all virt-v2v -i vmx "$VMX" -o local -os "$out" -of qcow2
}

for r in $(seq 1 "$RUNS"); do
    echo "run $r/$RUNS ($VARIANT, $ACCEL)" >&2
    if [ $((r % 2)) -eq 1 ]; then run_v2k "$r"; run_v2v "$r"; else run_v2v "$r"; run_v2k "$r"; fi
done

# Medians per tool of the per-run totals.
awk -F'\t' 'NR > 1 { t[$1 FS $2] += $4 } END { for (k in t) print k FS t[k] }' "$RESULTS" \
    | sort >"$RESULTS.totals"
median() { awk -F'\t' -v tool="$1" '$2 == tool { print $3 }' "$RESULTS.totals" | sort -n \
    | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
V2K_T=$(median v2k); V2V_T=$(median virt-v2v)
load=$(cut -d' ' -f1-3 /proc/loadavg)
printf '\n%-28s %10s\n' "$VARIANT ($ACCEL, load $load)" "wall s"
printf '%-28s %10s\n' "v2k convert + inject" "$V2K_T"
printf '%-28s %10s\n' "virt-v2v -o local -of qcow2" "$V2V_T"
ratio=$(awk -v a="$V2K_T" -v b="$V2V_T" 'BEGIN { printf "%.2f", a / b }')
goal=$(awk -v r="$ratio" 'BEGIN { print (r <= 0.6) ? "met" : "NOT met" }')
printf '%-28s %10s   (goal <= 0.60: %s)\n' "ratio v2k / virt-v2v" "$ratio" "$goal"
echo "per-phase rows: $RESULTS" >&2
[ "$KEEP" = 1 ] || rm -rf "$WORKDIR/v2k" "$WORKDIR/virt-v2v"
