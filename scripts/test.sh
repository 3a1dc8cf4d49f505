#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): installs what the tests need on a
# fresh Debian 12 machine (scripts/setup.sh), then formatting, lints, the fuzz
# targets' build, and every test of the workspace. Needs root (apt, libvirtd,
# loop devices for the guest fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# libguestfs must not try the host's half-working nested KVM (FIELD-NOTES §1).
export LIBGUESTFS_BACKEND=direct
export LIBGUESTFS_BACKEND_SETTINGS=force_tcg
# End-to-end tests treat a missing prerequisite as a failure, never a skip.
export V2K_REQUIRE_E2E=1

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
if [ -f fuzz/Cargo.toml ]; then
    echo "== fuzz targets build" >&2
    cargo build --manifest-path fuzz/Cargo.toml --locked
fi
echo "== cargo test" >&2
cargo test --workspace --locked
