#!/usr/bin/env bash
# Everything bronze needs on a fresh machine of this kind, installed idempotently:
# system build packages (only those missing), Kafka broker jars (scripts/kafka.sh fetch) and the Python
# venv for tests and readers (scripts/pyenv.sh). Caches live outside the clone: $BRONZE_CACHE
# (default ~/.cache/bronze).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
need=()
for pkg in build-essential pkg-config libssl-dev zlib1g-dev python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
# promtool checks and unit-tests the alert rules; the server scrapes bronze in an integration test.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# Database extracts are tested against a real PostgreSQL server.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if ((${#need[@]})); then
  echo "setup.sh: installing ${need[*]}" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
command -v cargo >/dev/null 2>&1 || { echo "setup.sh: cargo (rustc >= 1.95) is required" >&2; exit 1; }
"$here/scripts/kafka.sh" fetch
"$here/scripts/pyenv.sh" >/dev/null
