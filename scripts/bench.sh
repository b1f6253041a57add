#!/usr/bin/env bash
# Benchmarks (not tests): end-to-end throughput against the local broker with a release build.
#   scripts/bench.sh [--events N] [--partitions P]     full run (default 1,000,000 events)
#   scripts/bench.sh --smoke                            small run
#   scripts/bench.sh --store-latency 0,25,100           also S3 (moto) behind 0/25/100 ms of latency
# The main cell runs once to warm up, then 3 times; the median is reported with the spread
# (--warmup N / --runs N to change).
# BRONZE_BENCH_PROFILE=debug uses the debug build (no 27-minute cold release build).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
source scripts/env.sh
prepare_machine
profile="${BRONZE_BENCH_PROFILE:-release}"
if [[ "$profile" == release ]]; then
  cargo build --release --locked --quiet --bin bronze --example ceilings
  export BRONZE_BIN="$CARGO_TARGET_DIR/release/bronze"
  export BRONZE_CEILINGS_BIN="$CARGO_TARGET_DIR/release/examples/ceilings"
else
  cargo build --locked --quiet --bin bronze --example ceilings
  export BRONZE_CEILINGS_BIN="$CARGO_TARGET_DIR/debug/examples/ceilings"
fi
start_broker
"$py" benches/e2e_throughput.py --bin "$BRONZE_BIN" --warmup 1 --runs 3 "$@"
