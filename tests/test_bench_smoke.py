"""The end-to-end bench still runs (smoke mode, debug build): numbers are not asserted, only that it
ingests every event and prints its report."""

import subprocess
import sys
from pathlib import Path

import harness as h


def test_bench_smoke():
    ceilings = Path(h.bronze_bin()).parent / "examples" / "ceilings"
    out = subprocess.run([sys.executable, str(h.REPO / "benches" / "e2e_throughput.py"), "--smoke",
                          "--bin", h.bronze_bin(), "--ceilings", str(ceilings), "--maintenance", "--latency", "--matrix",
                          "--tables", "20", "--store-latency", "25",
                          "--members", "2", "--format", "avro"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for needle in ("events/s", "MB/s", "events per CPU-second", "peak RSS", "files", "consume-only",
                   "decode + coercion only", "Parquet write only", "bronze / slowest ceiling",
                   "backfill from Kafka", "compaction:", "Postgres extract", "p99",
                   "scaling matrix", "per CPU-s", "many tables", "commits/s", "object store",
                   "steady 2000 events/s", "requests per commit", "scale-out", "separate", "x JSON of this run"):
        assert needle in out.stdout, out.stdout
