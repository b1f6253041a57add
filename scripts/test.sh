#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): format and lint checks, unit tests, then the
# integration tests against a real Kafka broker (KRaft), a real S3-compatible server (moto) and Delta
# tables read back by independent readers (Python deltalake, polars).
# Soak tests are skipped unless BRONZE_SOAK=1. Extra arguments go to pytest (e.g. -k crash).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
source scripts/env.sh
prepare_machine

echo "== cargo fmt / clippy / unit tests"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo build --locked --bin bronze --example ceilings
cargo test --locked

echo "== alert rules (promtool)"
promtool check rules config/prometheus/alerts.yml
(cd config/prometheus && promtool test rules alerts_test.yml)

echo "== integration tests (real Kafka broker)"
start_broker
cd tests
"$py" -m pytest -q -p no:cacheprovider "$@"
