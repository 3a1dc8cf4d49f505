#!/usr/bin/env bash
# Live import against the cold path (issue 19), two measurements:
#
#   scripts/bench-live.sh --downtime [classic] [data8g]
#
# Downtime, live vs cold, for the same VM (cli/examples/bench_downtime.rs): the
# debian-classic fixture made a running VM of the vCenter simulator twice per shape;
# one copy migrated cold (`v2k migrate --cutover --to qemu:///system --pool P --start`),
# one live (`v2k migrate --live`); each report's `downtime` (the source found off to the
# agent's report on the target, one definition for both) and the cold copy's and the
# live stream's rates (virtual size over the convert stage, over the pulls), with the
# ratios. `classic`: the fixture as it is (two disks, 2304 MiB virtual); `data8g`: plus
# an 8 GiB data disk holding 1 GiB (16 runs of 64 MiB, one every 512 MiB). Default: both.
# It boots guests (two per cold run, one per live run) in this machine's libvirt; every
# VM, domain and pool carries the process id and is removed at the end. PROFILE=dev
# measures the dev profile's build (the workspace's opt-level 1, dependencies 2) instead
# of release.
#
# The read path (phase 1): the same disk on the vCenter simulator's
# datastore read (1) through v2k's NBD server by `qemu-img convert`, (2) through
# nbdkit's curl plugin by `qemu-img convert` (when nbdkit is installed; the script
# says when it is not), and (3) by v2k's cold-path download (one streamed GET).
# Prints each run, the medians and the ratios. A measurement, not a test: exits 0
# when it ran, non-zero on any error (including v2k's server serving wrong bytes).
#
#   scripts/bench-live.sh [--size MiB] [--runs N]
#
#   --size MiB   disk size (default 1024); pseudo-random data, every fourth MiB zeros
#   --runs N     timed runs per reader (default 3); each run reads with all three in turn
#
# Method (docs/live-import.md records the figures): vcsim serves HTTPS on loopback with
# the test PKI; v2k verifies the certificate against the test CA and nbdkit is given the
# same CA (cainfo=). qemu-img convert reads with 8 requests in flight (-m 8 -W) into
# QEMU's null driver, so no target disk is timed. Each v2k run starts a new session and
# server (cold cluster cache). The machine's other load counts against all readers alike.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "${1:-}" = --downtime ]; then
    shift
    PROFILE=${PROFILE:-release}
    case "$PROFILE" in release) DIR=release ;; dev) DIR=debug ;; *) echo "bench-live: PROFILE is release or dev" >&2; exit 2 ;; esac
    pgrep -x libvirtd >/dev/null || { echo "bench-live: libvirtd is not running (virtlogd -d; libvirtd -d)" >&2; exit 3; }
    cd "$HERE"
    CARGO_INCREMENTAL=0 cargo build --profile "$PROFILE" --locked -p v2k-cli --bin v2k --example bench_downtime >&2
    TARGET=${CARGO_TARGET_DIR:-$HERE/target}
    echo "bench-live: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), profile $PROFILE" >&2
    V2K="$TARGET/$DIR/v2k" exec "$TARGET/$DIR/examples/bench_downtime" "$@"
fi

SIZE=1024 RUNS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '2,37p' "$0"; exit 0 ;;
        *) echo "bench-live: unknown argument $1" >&2; exit 2 ;;
    esac
done

command -v qemu-img >/dev/null || { echo "bench-live: missing qemu-img (scripts/setup.sh)" >&2; exit 3; }
command -v nbdkit >/dev/null || echo "bench-live: nbdkit is not installed: only v2k and the cold download are measured" >&2
cd "$HERE"
CARGO_INCREMENTAL=0 cargo build --release --locked -p v2k-live --example bench_live >&2
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
exec "$TARGET/release/examples/bench_live" "$SIZE" "$RUNS"
