#!/usr/bin/env bash
# The main job end to end on the embedded default: a local Kafka broker, a realistic Debezium stream for
# two Postgres tables (inserts, updates, deletes, tombstones), bronze into a local Delta lake (var/lake),
# then a summary read back from the tables. Usage: scripts/demo.sh [EVENTS] (default 40000).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
source scripts/env.sh
events="${1:-40000}"
prepare_machine
cargo build --locked --quiet
start_broker

"$py" tests/harness/demo.py produce --events "$events"
rm -rf var/lake
# A fresh group per demo run: the topics were recreated, so old group offsets mean nothing.
export BRONZE__KAFKA__GROUP_ID="bronze-demo-$(date +%s)"
export RUST_LOG="${RUST_LOG:-warn}"
echo "== bronze run --until-caught-up --config config/demo.toml"
"$BRONZE_BIN" run --until-caught-up --config config/demo.toml
echo "== bronze summary --config config/demo.toml"
"$BRONZE_BIN" summary --config config/demo.toml
"$py" tests/harness/demo.py report var/lake
echo "== bronze status --config config/demo.toml"
"$BRONZE_BIN" status --config config/demo.toml
echo "== bronze runs --config config/demo.toml --limit 6   (the audit ledger, var/lake/_bronze_runs)"
"$BRONZE_BIN" runs --config config/demo.toml --limit 6
