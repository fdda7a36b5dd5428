#!/usr/bin/env bash
# The full test suite, from a fresh Debian 12 machine: installs its own oracles, then lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite builds a clean clone once: incremental caches would only add gigabytes to the target directory.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash scripts/install-test-deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# cargo-nextest (on the CI machine; installed from crates.io when missing): tests from all binaries share
# the two cores, the long QEMU end-to-end tests first (.config/nextest.toml). Doc tests: none in this crate.
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
cargo nextest run --all-targets --locked --no-fail-fast "$@"
