#!/usr/bin/env bash
# Installs the test/demo Kafka broker (tools/test-broker: tansu 0.6.0 + SASL/PLAIN) into a cache under
# $HOME, keyed by a hash of its build inputs, and prints the binary's path on the last line.
# A no-op when that build is already cached. A cold build takes 9-15 minutes on 2 cores.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
src="$repo/tools/test-broker"
cache="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"
key=$(cat "$src/Cargo.toml" "$src/Cargo.lock" "$src/src/main.rs" | sha256sum | cut -c1-16)
root="$cache/test-broker-$key"
bin="$root/bin/tansu"
if [ -x "$bin" ]; then
  echo "$bin"
  exit 0
fi
echo "test broker: building tansu 0.6.0 with SASL/PLAIN into $root (once per machine; 9-15 min cold)" >&2
mkdir -p "$cache"
target="$cache/test-broker-target"
CARGO_TARGET_DIR="$target" cargo install --locked --path "$src" --root "$root.partial" >&2
rm -rf "$root" && mv "$root.partial" "$root"
rm -rf "$target" "$root/.crates.toml" "$root/.crates2.json"
echo "test broker: installed $bin" >&2
echo "$bin"
