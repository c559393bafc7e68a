#!/usr/bin/env bash
# `make test`: installs what the tests need (Debian packages, the test broker) and runs the
# whole suite: formatting, lints, and every test against real brokers and upstreams.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
STREAMGATE_TEST_BROKER=$(bash scripts/install-test-broker.sh)
export STREAMGATE_TEST_BROKER
echo "test broker: $STREAMGATE_TEST_BROKER"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
