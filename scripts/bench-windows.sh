#!/usr/bin/env bash
# Side-by-side benchmark of a Windows conversion (issue 9, "Performance"): `v2k inject`
# against `virt-v2v -i disk IMG -o local -of qcow2` on the same synthetic Windows disk
# (tests/fixtures/src/windows.rs), with the same fake virtio-win tree, under the same
# load. A measurement, not a test: exits 0 when it ran (goal met or not), non-zero on
# any error.
#
#   scripts/bench-windows.sh [--version win2019|win7] [--runs N] [--workdir DIR] [--keep]
#
# Environment: V2K = the v2k binary (default $CARGO_TARGET_DIR/release/v2k or
# target/release/v2k, built with `cargo build --release -p v2k-cli` if absent).
#
# Method:
# - The image is built (or taken from the recipe-keyed cache) by the fixtures crate's
#   `builds_and_caches_the_windows_images` test; each run works on fresh copies.
# - v2k edits its copy in place (it runs after `v2k convert`, which is not part of this
#   comparison); virt-v2v reads its copy and writes a new QCOW2 (for a 256 MiB disk
#   with a few MiB used the copy costs well under a second).
# - Same libguestfs settings for both: LIBGUESTFS_BACKEND=direct and, without a usable
#   KVM, LIBGUESTFS_BACKEND_SETTINGS=force_tcg. virt-v2v gets PE stubs for
#   rhsrvany.exe/pnp_wait.exe (VIRT_TOOLS_DATA_DIR), which Debian does not ship.
# - Runs alternate between the tools. Wall time and peak RSS from GNU time.
#   Goal: v2k <= 0.6 x virt-v2v.
set -euo pipefail

VERSION=win2019 RUNS=1 WORKDIR=/var/tmp/v2k-bench-windows KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --version) VERSION=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --workdir) WORKDIR=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "bench-windows: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$VERSION" in
    win2019) OS=2k19 ;;
    win7) OS=w7 ;;
    *) echo "bench-windows: --version win2019 or win7" >&2; exit 2 ;;
esac

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
for c in virt-v2v qemu-img jq /usr/bin/time cargo; do
    command -v "$c" >/dev/null || { echo "bench-windows: missing $c (scripts/setup.sh)" >&2; exit 3; }
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

IMG=$(cd "$HERE" && cargo test -q -p v2k-fixtures --test windows builds_and_caches_the_windows_images \
        -- --nocapture 2>/dev/null | awk -v v="$VERSION" '$1 == "V2K-WINDOWS-IMAGE" && $2 == v { print $3 }')
[ -f "$IMG" ] || { echo "bench-windows: could not build the $VERSION image" >&2; exit 1; }

mkdir -p "$WORKDIR"
TREE=$WORKDIR/virtio-win
rm -rf "$TREE"
for drv in viostor vioscsi NetKVM Balloon vioserial viorng; do
    for os in w7 2k8R2 w10 2k16 2k19 2k22; do
        for arch in amd64 x86; do
            d=$TREE/$drv/$os/$arch; mkdir -p "$d"
            for ext in sys inf cat; do
                f=$(echo "$drv" | tr 'A-Z' 'a-z').$ext
                echo "fake $drv for $os/$arch ($f)" >"$d/$f"
            done
        done
    done
done
mkdir -p "$TREE/guest-agent"; echo "fake qemu-ga for amd64" >"$TREE/guest-agent/qemu-ga-x86_64.msi"
TOOLS=$WORKDIR/virt-tools; mkdir -p "$TOOLS"
# A PE header is all virt-v2v checks of these (it copies them into the guest).
printf 'MZ' >"$TOOLS/rhsrvany.exe"; head -c 1022 /dev/zero >>"$TOOLS/rhsrvany.exe"
cp "$TOOLS/rhsrvany.exe" "$TOOLS/pnp_wait.exe"
cat >"$WORKDIR/vm.json" <<JSON
{"schema-version": 1, "name": "bench-$VERSION",
 "source": {"kind": "vmx", "path": "/nonexistent/bench.vmx"},
 "guest-os": {"family": "windows"}, "firmware": {"kind": "bios"},
 "cpu": {"count": 2, "cores-per-socket": 1}, "memory-mib": 2048,
 "nics": [{"index": 0, "model": "vmxnet3", "mac": "00:50:56:3a:c1:09", "address-type": "static"}]}
JSON

RESULTS=$WORKDIR/results-$(date -u +%Y%m%dT%H%M%SZ).tsv
printf 'run\ttool\twall_s\tmax_rss_kb\n' >"$RESULTS"
timed() { # timed RUN TOOL CMD... : runs CMD under GNU time, appends a row
    local run=$1 tool=$2; shift 2
    local tf; tf=$(mktemp)
    if ! /usr/bin/time -o "$tf" -f '%e %M' "$@" >"$WORKDIR/$tool.out" 2>&1; then
        echo "bench-windows: $tool failed; output in $WORKDIR/$tool.out" >&2
        tail -20 "$WORKDIR/$tool.out" >&2
        exit 1
    fi
    read -r wall rss <"$tf"; rm -f "$tf"
    printf '%s\t%s\t%s\t%s\n' "$run" "$tool" "$wall" "$rss" >>"$RESULTS"
    echo "  $tool: ${wall}s, ${rss} KiB peak" >&2
}

run_v2k() {
    local out=$WORKDIR/v2k; rm -rf "$out"; mkdir -p "$out"
    cp "$IMG" "$out/disk.qcow2"; sync
    timed "$1" v2k "$V2K" inject --accel "$ACCEL" --vm "$WORKDIR/vm.json" \
        --virtio-win "$TREE" "$out/disk.qcow2" --out "$out"
    jq -e '.status == "converted"' "$out/conversion-log.json" >/dev/null
}

run_v2v() {
    local out=$WORKDIR/virt-v2v; rm -rf "$out"; mkdir -p "$out/o"
    cp "$IMG" "$out/disk.qcow2"; sync
    timed "$1" virt-v2v env VIRTIO_WIN="$TREE" VIRT_TOOLS_DATA_DIR="$TOOLS" \
        virt-v2v -i disk "$out/disk.qcow2" -o local -os "$out/o" -of qcow2
}

for r in $(seq 1 "$RUNS"); do
    echo "run $r/$RUNS ($VERSION, $ACCEL)" >&2
    if [ $((r % 2)) -eq 1 ]; then run_v2k "$r"; run_v2v "$r"; else run_v2v "$r"; run_v2k "$r"; fi
done

median() { awk -F'\t' -v tool="$1" 'NR > 1 && $2 == tool { print $3 }' "$RESULTS" | sort -n \
    | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
V2K_T=$(median v2k); V2V_T=$(median virt-v2v)
load=$(cut -d' ' -f1-3 /proc/loadavg)
printf '\n%-34s %10s\n' "$VERSION synthetic ($ACCEL, load $load)" "wall s"
printf '%-34s %10s\n' "v2k inject --virtio-win" "$V2K_T"
printf '%-34s %10s\n' "virt-v2v -i disk -o local -of qcow2" "$V2V_T"
ratio=$(awk -v a="$V2K_T" -v b="$V2V_T" 'BEGIN { printf "%.2f", a / b }')
goal=$(awk -v r="$ratio" 'BEGIN { print (r <= 0.6) ? "met" : "NOT met" }')
printf '%-34s %10s   (goal <= 0.60: %s)\n' "ratio v2k / virt-v2v" "$ratio" "$goal"
echo "rows: $RESULTS" >&2
[ "$KEEP" = 1 ] || rm -rf "$WORKDIR/v2k" "$WORKDIR/virt-v2v"
