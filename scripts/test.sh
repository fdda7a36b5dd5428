#!/usr/bin/env bash
# The full test suite, from a fresh Debian 12 machine: installs its own oracles, then lint + tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked --no-fail-fast
