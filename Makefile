# Streamgate. `make run` and `make test` do all set-up on a fresh Debian machine with Rust.
.PHONY: run test lint check bench fuzz clean broker

run:            ## build, start the demo broker + web upstream + gateway (Ctrl-C stops all)
	bash scripts/run-demo.sh

test:           ## install what the tests need, then fmt, clippy and every test
	bash scripts/test.sh

lint:           ## formatting and clippy only
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

check:          ## check the shipped configuration
	cargo run --quiet --bin streamgate -- -t -c conf/streamgate.toml

broker:         ## install the test/demo broker into ~/.cache/streamgate (no-op when cached)
	bash scripts/install-test-broker.sh

bench:          ## every benchmark scenario against its baseline (see BENCHMARKS.md); ARGS="--only 2,4"
	bash scripts/bench.sh $(ARGS)

fuzz:           ## long fuzz runs: 1,000,000 frames through the gateway, 500,000 mutated configs (make test runs short ones)
	STREAMGATE_TEST_BROKER=$$(bash scripts/install-test-broker.sh) STREAMGATE_FUZZ_FRAMES=1000000 \
	  cargo test --test fuzz_frames -- --nocapture
	STREAMGATE_FUZZ_CONFIGS=500000 cargo test -p streamgate-config --test fuzz_config -- --nocapture

clean:
	cargo clean
