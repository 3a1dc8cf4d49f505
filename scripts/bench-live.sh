#!/usr/bin/env bash
# Live import's read path (issue 19, phase 1): the same disk on the vCenter simulator's
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

SIZE=1024 RUNS=3
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "bench-live: unknown argument $1" >&2; exit 2 ;;
    esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
command -v qemu-img >/dev/null || { echo "bench-live: missing qemu-img (scripts/setup.sh)" >&2; exit 3; }
command -v nbdkit >/dev/null || echo "bench-live: nbdkit is not installed: only v2k and the cold download are measured" >&2
cd "$HERE"
CARGO_INCREMENTAL=0 cargo build --release --locked -p v2k-live --example bench_live >&2
TARGET=${CARGO_TARGET_DIR:-$HERE/target}
exec "$TARGET/release/examples/bench_live" "$SIZE" "$RUNS"
