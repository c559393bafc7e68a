#!/usr/bin/env bash
# `make bench`: installs nginx and wrk (Debian) and the test broker if missing, builds the gateway
# and the harness in release mode, and runs every scenario (see BENCHMARKS.md). Extra arguments go
# to the harness, e.g. `make bench ARGS="--only 2,4 --reps 5"`.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash scripts/install-deps.sh
missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: installing ${missing[*]} with apt-get" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi
STREAMGATE_TEST_BROKER=$(bash scripts/install-test-broker.sh)
export STREAMGATE_TEST_BROKER
cargo build --release --bin streamgate --bin streamgate-bench
# 10,000 sessions need 10,000 descriptors in this process (the gateway is another process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "bench: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1)" >&2
exec target/release/streamgate-bench --gateway target/release/streamgate "$@"
