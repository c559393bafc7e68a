#!/usr/bin/env bash
# Runs the README's quick start exactly as written and checks what it prints, so the README
# cannot drift from what works:
#  1. the first command of the README's first ```sh block (`make run`), in the background;
#  2. every `$ command` of the ```console block between <!-- quickstart-begin --> and
#     <!-- quickstart-end -->, comparing its output (stdout and stderr) with the lines the README
#     shows under it: the same lines, where any run of digits stands for any number;
#  3. Ctrl-C to the demo, then checks that every process it started is gone.
# Run by `make test` after the unit and integration tests. Uses ports 9080, 9091, 9092 and 8080.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
readme=README.md
log=$(mktemp -t streamgate-quickstart.XXXXXX)
fail() { echo "quickstart-test: FAILED: $*" >&2; echo "--- make run output:" >&2; cat "$log" >&2; exit 1; }

run_cmd=$(awk '/^```sh$/ {inblock=1; next} inblock {print; exit}' "$readme" | sed 's/#.*//; s/[[:space:]]*$//')
[ "$run_cmd" = "make run" ] || fail "the README's first command is '$run_cmd', expected 'make run'"

# 1. The demo as a job of its own (job control on: its own process group, SIGINT not ignored as
# it would be for a plain background command), so that Ctrl-C reaches all of it as a terminal's.
# The demo broker as a newcomer gets it (prebuilt), not the test broker this machine has cached.
set -m
STREAMGATE_DEMO_BROKER=prebuilt bash -c "$run_cmd" >"$log" 2>&1 </dev/null &
demo=$!
set +m
stop_demo() { kill -INT -- "-$demo" 2>/dev/null || true; }
trap stop_demo EXIT
for _ in $(seq 1800); do
  grep -q "Streamgate demo is running" "$log" && break
  kill -0 "$demo" 2>/dev/null || fail "make run exited before the demo was up"
  sleep 0.5
done
grep -q "Streamgate demo is running" "$log" || fail "the demo did not come up within 15 minutes"
# Each set-up step says what it does, so a first run never looks hung.
for n in 1 2 3 4; do
  grep -q "^demo: \[$n/4 at [0-9]* s\] " "$log" || fail "make run did not announce step $n/4"
done
echo "quickstart-test: make run is up"

# 2. The tour: each command and the output the README promises.
python3 - "$readme" <<'PY' || fail "the tour's output differs from the README (above)"
import re, subprocess, sys
text = open(sys.argv[1]).read()
block = text.split("<!-- quickstart-begin -->", 1)[1].split("<!-- quickstart-end -->", 1)[0]
lines = block.split("```console", 1)[1].split("```", 1)[0].strip("\n").splitlines()
steps = []
for line in lines:
    if line.startswith("$ "):
        steps.append((line[2:], []))
    elif steps:
        steps[-1][1].append(line)
assert steps, "no $ commands in the quick-start block"

def pattern(expected):
    parts = re.split(r"(\d+|\s+)", expected.strip())
    regex = "".join(r"\d+" if p.isdigit() else r"\s+" if p.isspace() else re.escape(p) for p in parts if p)
    return re.compile(regex + r"\Z")

failed = False
for command, expected in steps:
    try:
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
        actual = (out.stdout + out.stderr).strip("\n").splitlines()
    except subprocess.TimeoutExpired:
        actual = ["(timed out after 300 s)"]
    ok = len(actual) == len(expected) and all(pattern(e).match(a.strip()) for e, a in zip(expected, actual))
    print(f"quickstart-test: {'ok  ' if ok else 'FAIL'} $ {command}")
    if not ok:
        failed = True
        print("  the README shows:\n    " + "\n    ".join(expected))
        print("  it printed:\n    " + "\n    ".join(actual))
sys.exit(1 if failed else 0)
PY

# 3. Ctrl-C stops everything.
stop_demo
trap - EXIT
for _ in $(seq 100); do kill -0 "$demo" 2>/dev/null || break; sleep 0.1; done
kill -0 "$demo" 2>/dev/null && fail "make run did not exit within 10 s of Ctrl-C"
sleep 0.5
left=$(ps -eo pgid=,pid=,args= | awk -v g="$demo" '$1 == g {print}')
[ -z "$left" ] || fail "processes left after Ctrl-C:
$left"
for port in 9080 9091 9092 8080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then fail "127.0.0.1:$port still answers after Ctrl-C"; fi
done
echo "quickstart-test: Ctrl-C stopped every process; the README's quick start works"
