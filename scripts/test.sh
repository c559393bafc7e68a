#!/usr/bin/env bash
# `make test`: installs what the tests need (Debian packages, the test broker, the clients'
# packages, the demo page) and runs the whole suite: formatting, lints, every test against real
# brokers, upstreams and a real browser, then the README's quick start.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh test
# The scale tests open 11,000 sockets in one process; many machines start with a soft limit of
# 1,024 open files. Raise it to the hard limit (never lower it).
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt 12000 ]; then
  echo "test: the open-files limit is $(ulimit -Sn) (hard $(ulimit -Hn)); the scale tests need 12,000: raise it (ulimit -Hn, or LimitNOFILE)" >&2
fi
STREAMGATE_TEST_BROKER=$(bash scripts/install-test-broker.sh)
STREAMGATE_PYTHON=$(bash scripts/setup-clients.sh test | tail -n 1)
export STREAMGATE_TEST_BROKER STREAMGATE_PYTHON
echo "test broker: $STREAMGATE_TEST_BROKER"
echo "python client interpreter: $STREAMGATE_PYTHON"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The suite in tests/ runs the programs; build them first so that no test pays for it.
cargo build --workspace --bins --quiet
cargo test --workspace --no-fail-fast
bash scripts/quickstart-test.sh
