# Sourced by the scripts: shared cache locations, outside the clone so CI reuses them.
BRONZE_CACHE="${BRONZE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/bronze}"
export BRONZE_CACHE
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$BRONZE_CACHE/target}"
export BRONZE_KAFKA_BOOTSTRAP="127.0.0.1:${BRONZE_KAFKA_PORT:-39092}"
export BRONZE_BIN="$CARGO_TARGET_DIR/debug/bronze"

# For the entry scripts (demo, test, bench): install what is missing and set $py to the venv's python.
prepare_machine() {
  "$here/scripts/setup.sh"
  py="$("$here/scripts/pyenv.sh")"
}

# Start the local broker for the rest of the calling script, and stop it when the script exits.
start_broker() {
  "$here/scripts/kafka.sh" start
  trap '"$here/scripts/kafka.sh" stop' EXIT
}
