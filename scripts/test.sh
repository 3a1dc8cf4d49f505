#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): installs what the tests need on a
# fresh Debian 12 machine (scripts/setup.sh), then formatting, lints, unused
# dependencies, the fuzz targets' build, and every test binary of the workspace. Needs
# root (apt, libvirtd, loop devices for the guest fixtures).
#
# Every test binary runs to its end (`--no-fail-fast`): one failing binary does not
# hide the others' results. The run ends with a table of each phase's wall time and
# each test binary's (docs/architecture.md, "Testing"), printed even when a phase
# fails, then the failed binaries; the exit code is non-zero when anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Rows of the timing table: "seconds<TAB>status<TAB>name".
ROWS=()
FAILED=()
SUITE_START=$EPOCHREALTIME

# Seconds between two $EPOCHREALTIME values, to a tenth.
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

table() {
    local rc=$? row secs status name
    trap - EXIT
    printf '\n== timings (wall clock, seconds)\n' >&2
    printf '%9s  %-7s %s\n' seconds status phase >&2
    for row in "${ROWS[@]}"; do
        IFS=$'\t' read -r secs status name <<<"$row"
        printf '%9s  %-7s %s\n' "$secs" "$status" "$name" >&2
    done
    printf '%9s  %-7s %s\n' "$(elapsed "$SUITE_START" "$EPOCHREALTIME")" total "whole run" >&2
    if [ "${#FAILED[@]}" -gt 0 ]; then
        printf '\n== failed\n' >&2
        printf '  %s\n' "${FAILED[@]}" >&2
        [ "$rc" -ne 0 ] || rc=1
    fi
    exit "$rc"
}
trap table EXIT

# Runs one phase, timed; a failing phase ends the run (the table still prints).
phase() {
    local name=$1 start rc=0
    shift
    echo "== $name" >&2
    start=$EPOCHREALTIME
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        ROWS+=("$(elapsed "$start" "$EPOCHREALTIME")"$'\t'ok$'\t'"$name")
    else
        ROWS+=("$(elapsed "$start" "$EPOCHREALTIME")"$'\t'FAILED$'\t'"$name")
        FAILED+=("$name (exit $rc)")
        exit "$rc"
    fi
}

phase setup bash scripts/setup.sh

# libguestfs must not try the host's half-working nested KVM (FIELD-NOTES §1).
export LIBGUESTFS_BACKEND=direct
export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# End-to-end tests treat a missing prerequisite as a failure, never a skip.
export V2K_REQUIRE_E2E=1

phase "cargo fmt --check" cargo fmt --all --check
phase "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo machete (unused dependencies)" cargo machete
if [ -f fuzz/Cargo.toml ]; then
    phase "fuzz targets build" cargo build --manifest-path fuzz/Cargo.toml --locked
fi
# The test executables, as cargo builds them (one JSON line per artifact).
TEST_LIST=$(mktemp)
phase "test build" bash -c 'set -o pipefail; cargo test --workspace --locked --no-run --message-format=json \
    | jq -r "select(.reason == \"compiler-artifact\" and .profile.test and .executable != null)
             | [.executable, .manifest_path, .target.src_path] | @tsv" >"$1"' _ "$TEST_LIST"

# Test binaries run V2K_TEST_JOBS at a time (default 2), each as cargo would run it (in its
# package's directory, CARGO_MANIFEST_DIR set), not through `cargo test`: cargo holds the
# artifact directory's lock while its tests run, so two cargo processes cannot overlap. The
# heavy binaries boot guests under TCG and spend much of their time waiting (firmware
# timeouts, the agent, libguestfs appliances), which is why two at a time pays on two
# cores (docs/architecture.md, "Testing"). Longest first (their usual order in the timing
# table), so the short ones fill the gaps at the end; a binary not named here runs after
# the named ones. Each binary's output is printed whole when it ends, so two binaries'
# lines never interleave.
HEAVY_FIRST=(cli/tests/migrate.rs cli/tests/scale.rs drivers-injector/tests/e2e.rs
    cli/tests/live_migrate.rs cli/tests/migrate_sb.rs drivers-injector/tests/windows.rs
    tests/fixtures/tests/debian_dracut_lvm.rs tests/fixtures/tests/rhel_shaped_efi.rs
    cli/tests/vsphere_migrate.rs cli/tests/live_faults.rs cli/tests/wave.rs validator/tests/negative.rs
    cli/tests/inject.rs)
JOBS=${V2K_TEST_JOBS:-2}
LOGS=$(mktemp -d)
declare -A EXE_OF=() DIR_OF=() NAME_OF=() START_OF=() LOG_OF=() PID_KEY=()
ORDER=()
while IFS=$'\t' read -r exe manifest src; do
    key=${src#"$PWD/"} # cli/tests/migrate.rs, waves/src/lib.rs (a crate's unit tests)
    EXE_OF[$key]=$exe
    DIR_OF[$key]=$(dirname "$manifest")
    NAME_OF[$key]="$key [$(basename "$exe" | sed -E 's/-[0-9a-f]+$//')]"
done <"$TEST_LIST"
for key in "${HEAVY_FIRST[@]}"; do
    [ -n "${EXE_OF[$key]:-}" ] && ORDER+=("$key")
done
for key in $(printf '%s\n' "${!EXE_OF[@]}" | sort); do
    [[ " ${HEAVY_FIRST[*]} " == *" $key "* ]] || ORDER+=("$key")
done
# Doc tests need cargo (rustdoc builds them); no other cargo runs while they do.
ORDER+=("doc-tests")
NAME_OF[doc-tests]="doc tests (cargo test --doc)"

launch() {
    local key=$1 log="$LOGS/${#START_OF[@]}.log"
    LOG_OF[$key]=$log
    START_OF[$key]=$EPOCHREALTIME
    echo "== start: ${NAME_OF[$key]}" >&2
    if [ "$key" = doc-tests ]; then
        cargo test --workspace --locked --doc >"$log" 2>&1 &
    else
        (cd "${DIR_OF[$key]}" && CARGO_MANIFEST_DIR=${DIR_OF[$key]} exec "${EXE_OF[$key]}") \
            >"$log" 2>&1 &
    fi
    PID_KEY[$!]=$key
}

finish() {
    local pid=$1 rc=$2 status=ok secs
    local key=${PID_KEY[$pid]}
    unset "PID_KEY[$pid]"
    [ "$rc" -eq 0 ] || status=FAILED
    secs=$(elapsed "${START_OF[$key]}" "$EPOCHREALTIME")
    echo "== end: ${NAME_OF[$key]} ($status, exit $rc, $secs s)"
    cat "${LOG_OF[$key]}"
    ROWS+=("$secs"$'\t'"$status"$'\t'"${NAME_OF[$key]}")
    [ "$status" = ok ] || FAILED+=("${NAME_OF[$key]} (exit $rc)")
}

echo "== tests: ${#ORDER[@]} binaries, $JOBS at a time (every one runs to its end)" >&2
TESTS_START=$EPOCHREALTIME
next=0
while [ "$next" -lt "${#ORDER[@]}" ] || [ "${#PID_KEY[@]}" -gt 0 ]; do
    while [ "$next" -lt "${#ORDER[@]}" ] && [ "${#PID_KEY[@]}" -lt "$JOBS" ]; do
        launch "${ORDER[$next]}"
        next=$((next + 1))
    done
    rc=0
    wait -n -p done_pid "${!PID_KEY[@]}" || rc=$?
    finish "$done_pid" "$rc"
done
ROWS+=("$(elapsed "$TESTS_START" "$EPOCHREALTIME")"$'\t'"$JOBS jobs"$'\t'"all test binaries")
rm -rf "$LOGS" "$TEST_LIST"
if [ "${#FAILED[@]}" -gt 0 ]; then
    exit 1
fi
