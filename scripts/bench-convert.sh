#!/usr/bin/env bash
# Side-by-side performance benchmark: `v2k convert` against `qemu-img convert`
# (issue 2, "Performance"). A measurement, not a test: it exits 0 when it ran,
# whether or not the goals are met, and non-zero on any error (including a v2k
# output that is not identical to its source: a benchmark of a wrong result is
# worthless).
#
#   scripts/bench-convert.sh [--size GiB] [--runs N] [--keep] [--threads N]
#                            [--seed S] [--workdir DIR] [--cases LIST]
#
#   --size GiB     whole GiB of virtual size (default 2; the disk is 1 MiB + 38400 B
#                  larger, so its last cluster is partial)
#   --runs N       timed runs per tool and case (default 3)
#   --keep         keep the outputs of the last runs (inputs are always cached)
#   --threads N    pass --threads N to v2k (default: v2k's own, one per CPU); the RSS
#                  goal is 64 MiB + 8 MiB per worker, workers = N or nproc
#   --seed S       generator seed (default 1)
#   --workdir DIR  cache and scratch directory (default /var/tmp/v2k-bench)
#   --cases LIST   comma-separated subset of sparse,stream,compress (default all)
#
# Environment: V2K=path to the v2k binary (default: $CARGO_TARGET_DIR/release/v2k
# or target/release/v2k, built with `cargo build --release -p v2k-cli` if absent).
#
# Method (docs/benchmarks.md explains it):
# - Input: scripts/bench_gen.py writes a deterministic raw disk (ELF binaries from
#   /usr/lib ~2.5:1, random data, written zeros, holes, partial last cluster; about
#   0.45 of the virtual size non-zero); qemu-img turns it into a monolithicSparse
#   VMDK (then qemu-io writes the zero regions into it, so they are allocated zero
#   grains) and a streamOptimized VMDK (zero regions are not stored: qemu-img's
#   stream writer cannot keep zero grains without also filling the holes). Inputs
#   are cached under WORKDIR/<key>, key = size, seed, generator version and a
#   fingerprint of the ELF files available.
# - Warm cache, same for both tools: before every timed run the source is read
#   once (cat > /dev/null, untimed) and `sync` flushes dirty pages left by earlier
#   runs, so no run pays for another's write-back.
# - Runs alternate between the tools (the starting tool rotates each round); every
#   run is printed and kept in WORKDIR/results-*.tsv; the table shows medians.
# - Wall time and peak RSS come from GNU time (`/usr/bin/time -f '%e %M %U %S'`).
# - v2k fsyncs its output (and directory) before it exits. qemu-img convert does not:
#   its target cache mode defaults to `unsafe` (strace shows fdatasync only while
#   creating the empty image). After every run the script times `sync OUTPUT` (an
#   fsync of the output file) separately: the "flush" column. The goals are judged
#   against qemu-img as users run it (without that flush, the strict comparison);
#   the ratio against qemu-img + flush is printed beside it.
set -euo pipefail

die() { printf 'bench-convert: error: %s\n' "$*" >&2; exit 1; }
log() { printf 'bench-convert: %s\n' "$*" >&2; }

SIZE=2
RUNS=3
KEEP=0
THREADS=
SEED=1
WORKDIR=/var/tmp/v2k-bench
CASES=sparse,stream,compress
while [ $# -gt 0 ]; do
    case "$1" in
        --size) SIZE=${2:?}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --threads) THREADS=${2:?}; shift 2 ;;
        --seed) SEED=${2:?}; shift 2 ;;
        --workdir) WORKDIR=${2:?}; shift 2 ;;
        --cases) CASES=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ $SIZE =~ ^[1-9][0-9]*$ ]] || die "--size must be a whole number of GiB >= 1"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be >= 1"
[[ $SEED =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer"
[ -z "$THREADS" ] || [[ $THREADS =~ ^[1-9][0-9]*$ ]] || die "--threads must be >= 1"
for c in ${CASES//,/ }; do
    case "$c" in sparse|stream|compress) ;; *) die "unknown case: $c" ;; esac
done

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
GEN="$HERE/bench_gen.py"

for tool in qemu-img qemu-io python3 jq; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/setup.sh)"
done
[ -x /usr/bin/time ] && /usr/bin/time -f '%e' true 2>/dev/null \
    || die "GNU time (/usr/bin/time) not found (package 'time'; run scripts/setup.sh)"

if [ -z "${V2K:-}" ]; then
    V2K="${CARGO_TARGET_DIR:-$ROOT/target}/release/v2k"
    if [ ! -x "$V2K" ]; then
        log "building v2k (release)"
        (cd "$ROOT" && cargo build --release -q -p v2k-cli) || die "cargo build failed"
    fi
fi
[ -x "$V2K" ] || die "v2k binary not found at $V2K"

NPROC=$(nproc)
WORKERS=${THREADS:-$NPROC}
RSS_GOAL_MIB=$((64 + 8 * WORKERS))
V2K_EXTRA=()
[ -z "$THREADS" ] || V2K_EXTRA=(--threads "$THREADS")

mkdir -p "$WORKDIR"

# ---------------------------------------------------------------- inputs (cached)
KEY=$(python3 "$GEN" key --size-gib "$SIZE" --seed "$SEED")
IN="$WORKDIR/$KEY"
if [ ! -f "$IN/.complete" ]; then
    log "generating inputs in $IN (once per key; takes a couple of minutes)"
    rm -rf "$IN"
    mkdir -p "$IN"
    python3 "$GEN" gen --size-gib "$SIZE" --seed "$SEED" --out "$IN" >/dev/null
    qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$IN/disk.raw" "$IN/sparse.vmdk.tmp"
    # qemu-img convert skips zero data; write the explicit zero regions as data.
    zero_cmds=()
    while read -r off len; do zero_cmds+=(-c "write -q -P 0 $off $len"); done <"$IN/zeros.txt"
    [ "${#zero_cmds[@]}" -eq 0 ] || qemu-io -f vmdk "${zero_cmds[@]}" "$IN/sparse.vmdk.tmp" >/dev/null
    mv "$IN/sparse.vmdk.tmp" "$IN/sparse.vmdk"
    qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$IN/disk.raw" "$IN/stream.vmdk.tmp"
    mv "$IN/stream.vmdk.tmp" "$IN/stream.vmdk"
    for v in sparse stream; do
        qemu-img check -q "$IN/$v.vmdk" || die "qemu-img check failed on the generated $v.vmdk"
        qemu-img compare -q "$IN/disk.raw" "$IN/$v.vmdk" || die "generated $v.vmdk differs from disk.raw"
    done
    sync
    touch "$IN/.complete"
else
    log "using cached inputs in $IN"
fi

# ---------------------------------------------------------------- the runs
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RESULTS="$WORKDIR/results-$STAMP.tsv"
OUTDIR="$WORKDIR/out-$STAMP"
mkdir -p "$OUTDIR"
cleanup() { [ "$KEEP" = 1 ] || rm -rf "$OUTDIR"; }
trap cleanup EXIT

printf 'case\ttool\trun\twall_s\trss_kib\tuser_s\tsys_s\tflush_s\tv2k_copy_s\tv2k_verify_s\n' >"$RESULTS"

# case -> source, qemu-img flags, v2k flags, goal
case_src() { case "$1" in sparse) echo "$IN/sparse.vmdk" ;; *) echo "$IN/stream.vmdk" ;; esac; }
case_goal() { case "$1" in sparse) echo 0.8 ;; *) echo 0.6 ;; esac; }
TOOLS=(qemu-img v2k v2k-noverify)

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

# run_one CASE TOOL RUN: one timed run, appended to $RESULTS.
run_one() {
    local case=$1 tool=$2 run=$3 src out tf lg cmd=()
    src=$(case_src "$case")
    out="$OUTDIR/$case-$tool.qcow2"
    tf="$OUTDIR/.time"; lg="$OUTDIR/.log"
    case "$tool" in
        qemu-img)
            cmd=(qemu-img convert -O qcow2)
            [ "$case" != compress ] || cmd+=(-c)
            cmd+=("$src" "$out") ;;
        v2k|v2k-noverify)
            cmd=("$V2K" convert "$src" -o "$out" --force "${V2K_EXTRA[@]}")
            [ "$case" != compress ] || cmd+=(--compress)
            [ "$tool" != v2k-noverify ] || cmd+=(--no-verify) ;;
    esac
    rm -f "$out" "$out.manifest.json"
    cat "$src" >/dev/null        # warm cache: the source is in the page cache
    sync                          # no dirty pages from earlier runs
    if ! /usr/bin/time -f '%e %M %U %S' -o "$tf" "${cmd[@]}" >"$lg" 2>&1; then
        cat "$lg" >&2
        die "run failed: ${cmd[*]}"
    fi
    local t0 t1 flush wall rss usr sys copy=- verify=-
    t0=$(now); sync "$out"; t1=$(now)
    flush=$(elapsed "$t0" "$t1")
    read -r wall rss usr sys < <(tail -n 1 "$tf")
    if [ "$tool" != qemu-img ]; then
        copy=$(jq -r '.timing["copy-seconds"]' "$out.manifest.json")
        verify=$(jq -r '.timing["verify-seconds"]' "$out.manifest.json")
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$case" "$tool" "$run" "$wall" "$rss" "$usr" "$sys" "$flush" "$copy" "$verify" >>"$RESULTS"
    printf '  %-8s %-13s run %d: wall %6.2f s  cpu %6.2f s  rss %6.1f MiB  flush %5.2f s%s\n' \
        "$case" "$tool" "$run" "$wall" "$(awk -v u="$usr" -v s="$sys" 'BEGIN{print u+s}')" \
        "$(awk -v r="$rss" 'BEGIN{print r/1024}')" "$flush" \
        "$([ "$copy" = - ] || printf '  (v2k copy %.2f s, verify %.2f s)' "$copy" "$verify")" >&2
    if [ "$run" = 1 ] && [ "$tool" != qemu-img ]; then
        # A benchmark of a wrong result is worthless: check every v2k variant once.
        qemu-img check -q "$out" || die "qemu-img check failed on v2k's output $out"
        qemu-img compare -q "$src" "$out" || die "v2k's output $out differs from its source $src"
        log "$case/$tool: qemu-img check and compare against the source: identical"
    fi
}

load() { cut -d' ' -f1-3 /proc/loadavg; }
LOAD_BEFORE=$(load)
log "v2k: $V2K ($("$V2K" --version 2>/dev/null || echo '?'))"
log "load average before: $LOAD_BEFORE (nproc $NPROC)"
for case in ${CASES//,/ }; do
    log "case $case: $RUNS runs per tool, alternating"
    for run in $(seq 1 "$RUNS"); do
        n=${#TOOLS[@]}
        for i in $(seq 0 $((n - 1))); do
            run_one "$case" "${TOOLS[$(((i + run - 1) % n))]}" "$run"
        done
    done
done
LOAD_AFTER=$(load)

# ---------------------------------------------------------------- the table
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')
git_dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo '+dirty' || true)
cat <<EOF

v2k convert vs qemu-img convert -- $(date -u '+%Y-%m-%d %H:%M UTC')
machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $NPROC CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)
tools:   $("$V2K" --version 2>/dev/null || echo v2k) (binary built $(date -u -r "$V2K" '+%Y-%m-%d %H:%M UTC'); checkout HEAD $git_rev$git_dirty), $(qemu-img --version | head -n1)
input:   $IN ($(jq -r '"\(.["virtual-size"]) B virtual, \(.["non-zero-bytes"]) B non-zero (\(.bytes.compressible) compressible ~\(.["compressible-ratio-sample"]):1, \(.bytes.random) random), \(.bytes.zeros) B written zeros, \(.bytes.hole) B holes"' "$IN/layout.json"))
method:  warm page cache (source read before each run), sync before each run, $RUNS runs per tool alternating, medians; workers $WORKERS
load:    before $LOAD_BEFORE, after $LOAD_AFTER
runs:    $RESULTS
EOF
python3 - "$RESULTS" "$RSS_GOAL_MIB" "$NPROC" "$LOAD_BEFORE" "$LOAD_AFTER" <<'PY'
import csv, statistics, sys
path, rss_goal, nproc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
loads = [float(sys.argv[4].split()[0]), float(sys.argv[5].split()[0])]
rows = list(csv.DictReader(open(path), delimiter="\t"))
med = lambda xs: statistics.median(xs)
names = {"sparse": "monolithicSparse -> qcow2", "stream": "streamOptimized -> qcow2",
         "compress": "streamOptimized -> qcow2 -c"}
goals = {"sparse": 0.8, "stream": 0.6, "compress": 0.6}
labels = {"qemu-img": "qemu-img (peer)", "v2k": "v2k (verifies)", "v2k-noverify": "v2k --no-verify"}
hdr = ["case", "tool", "wall s", "cpu s", "RSS MiB", "flush s", "wall ratio",
       "ratio vs peer+flush", "cpu ratio", "RSS ratio", "goal", "wall", f"RSS<={rss_goal:.0f}"]
out = []
for case in ["sparse", "stream", "compress"]:
    rs = [r for r in rows if r["case"] == case]
    if not rs:
        continue
    stats = {}
    for tool in ["qemu-img", "v2k", "v2k-noverify"]:
        t = [r for r in rs if r["tool"] == tool]
        stats[tool] = dict(
            wall=med([float(r["wall_s"]) for r in t]),
            cpu=med([float(r["user_s"]) + float(r["sys_s"]) for r in t]),
            rss=med([float(r["rss_kib"]) / 1024 for r in t]),
            flush=med([float(r["flush_s"]) for r in t]),
        )
    q = stats["qemu-img"]
    for tool in ["qemu-img", "v2k", "v2k-noverify"]:
        s = stats[tool]
        row = [names[case], labels[tool], f"{s['wall']:.2f}", f"{s['cpu']:.2f}", f"{s['rss']:.1f}",
               f"{s['flush']:.2f}"]
        if tool == "qemu-img":
            row += ["", "", "", "", "", "", ""]
        else:
            wr = s["wall"] / q["wall"]
            row += [f"{wr:.2f}", f"{s['wall'] / (q['wall'] + q['flush']):.2f}", f"{s['cpu'] / q['cpu']:.2f}",
                    f"{s['rss'] / q['rss']:.2f}",
                    f"<= {goals[case]}", "PASS" if wr <= goals[case] else "MISS",
                    "PASS" if s["rss"] <= rss_goal else "MISS"]
        out.append(row)
w = [max(len(h), *(len(r[i]) for r in out)) for i, h in enumerate(hdr)]
line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"
print()
print(line(hdr))
print("|" + "|".join("-" * (x + 2) for x in w) + "|")
for r in out:
    print(line(r))
print()
print("wall ratio = median v2k wall / median qemu-img wall (goal column); ratio vs peer+flush adds")
print("qemu-img's unflushed output's fsync time (v2k fsyncs inside its own run). cpu = user+sys")
print("seconds; cpu ratio = v2k cpu / qemu-img cpu (total work, less sensitive to other load).")
print(f"RSS goal: 64 MiB + 8 MiB x workers. Medians of {len(rows) // max(1, len(out))} runs per row.")
if max(loads) > 0.5 * nproc:
    print(f"WARNING: load average {max(loads):.1f} on {nproc} CPUs: other work was running; "
          "wall times are not reliable (cpu s is less affected).")
PY
log "done; every run is in $RESULTS"
