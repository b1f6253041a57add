# Sourced by the scripts: shared cache locations, outside the clone so CI reuses them.
BRONZE_CACHE="${BRONZE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bronze}"
export BRONZE_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BRONZE_CACHE/target}"
export BRONZE_KAFKA_BOOTSTRAP="127.0.0.1:${BRONZE_KAFKA_PORT:-39092}"
export BRONZE_BIN="$CARGO_TARGET_DIR/debug/bronze"
