#!/usr/bin/env bash
# Prepares the non-Rust parts: builds the demo page (examples/web, bundled with esbuild from
# proto/pubsub.proto) and installs the Node client's packages, both from their lockfiles. With
# `test`, also a Python virtualenv with the Python client's and the tests' requirements (cached under
# ~/.cache/streamgate, keyed by the requirements file) and prints that interpreter's path.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)

npm_ci() { # installs $1's lockfile unless node_modules was installed from this very lockfile
  local dir=$1 stamp=$1/node_modules/.installed-from
  local want; want=$(sha256sum "$dir/package-lock.json" | cut -c1-16)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
    echo "$want" >"$stamp"
  fi
}
npm_ci "$repo/examples/web"
(cd "$repo/examples/web" && node build.mjs >&2)
npm_ci "$repo/examples/node"

if [ "${1:-}" = test ]; then
  # The client's requirements and the tests' own (a librdkafka consumer for the group tests).
  reqs="$repo/examples/python/requirements.txt"
  test_reqs="$repo/tests/python/requirements.txt"
  venv="$HOME/.cache/streamgate/python-$(cat "$reqs" "$test_reqs" | sha256sum | cut -c1-12)"
  if [ ! -f "$venv/.complete" ]; then
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv" >&2 || { echo "setup-clients: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" -r "$test_reqs" >&2
    touch "$venv/.complete"
  fi
  echo "$venv/bin/python"
fi
