#!/usr/bin/env bash
# `make test`: installs what the tests need (Debian packages, the test broker, the clients'
# packages, the demo page) and runs the whole suite: formatting, lints, every test against real
# brokers, upstreams and a real browser, then the README's quick start.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh test
STREAMGATE_TEST_BROKER=$(bash scripts/install-test-broker.sh)
STREAMGATE_PYTHON=$(bash scripts/setup-clients.sh test | tail -n 1)
export STREAMGATE_TEST_BROKER STREAMGATE_PYTHON
echo "test broker: $STREAMGATE_TEST_BROKER"
echo "python client interpreter: $STREAMGATE_PYTHON"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --no-fail-fast
bash scripts/quickstart-test.sh
