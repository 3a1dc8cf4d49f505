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
phase "test build" cargo test --workspace --locked --no-run

# Runs the tests through cargo (its working directory, environment and doc tests),
# echoing its output and timing each test binary from its "Running"/"Doc-tests" line
# to the next one (the build is done, so nothing else happens in between).
run_tests() {
    local line name="" start="" status=""
    flush() {
        if [ -n "$name" ]; then
            [ -n "$status" ] || status=FAILED # no result line: the binary crashed
            ROWS+=("$(elapsed "$start" "$EPOCHREALTIME")"$'\t'"$status"$'\t'"$name")
            [ "$status" = ok ] || FAILED+=("$name")
        fi
        name=""
    }
    while IFS= read -r line; do
        printf '%s\n' "$line"
        case "$line" in
        *"     Running "* | *"   Doc-tests "*)
            flush
            # "Running tests/migrate.rs (target/debug/deps/migrate-0123abcd)" gives
            # "tests/migrate.rs [migrate]"; "Doc-tests v2k_waves" stays as it is.
            name=$(sed -E 's/^ *Running //; s/^ *//; s|\(.*/([^/]*)-[0-9a-f]+\)$|[\1]|' <<<"$line")
            start=$EPOCHREALTIME
            status=""
            ;;
        "test result: ok."*) [ "$status" = FAILED ] || status=ok ;;
        "test result: FAILED."*) status=FAILED ;;
        esac
    done
    flush
}
echo "== cargo test (every binary, --no-fail-fast)" >&2
# The loop must run in this shell to fill ROWS and FAILED.
shopt -s lastpipe
TESTS_RC=0
cargo test --workspace --locked --no-fail-fast 2>&1 | run_tests || TESTS_RC=$?
# A failure cargo reports without a failed binary (it could not start one, say).
if [ "$TESTS_RC" -ne 0 ] && [ "${#FAILED[@]}" -eq 0 ]; then
    FAILED+=("cargo test (exit $TESTS_RC)")
fi
if [ "${#FAILED[@]}" -gt 0 ]; then
    exit 1
fi
