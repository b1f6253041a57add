"""The object-store cells of the bench (`e2e_throughput.py --store-latency 0,25,100`): bronze writing to an
S3 table on moto through the latency-injecting proxy (`tests/harness/store_proxy.py`), so a commit pays
what a remote store charges per request.

For each injected latency: events/s into one table with the bench's flush sizes (500,000 rows / 5 s) and
with small flushes (5,000 rows / 100 ms, where commit latency is the limit), each with
`commits_in_flight` 2 (the default) and 1 (no upload ahead), commits/s per table, and p99 produce ->
committed latency under a steady load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

import harness as h
from harness.moto import BUCKET, CREDENTIALS, running_moto, s3_storage_block
from harness.store_proxy import StoreProxy

FLUSHES = {"bench": (500_000, "5s"), "small": (5_000, "100ms")}


def cells(binary: str, work: Path, events: list, schema: Path, latencies: list[int],
          steady: tuple[int, int] = (10_000, 10), partitions: int = 6) -> None:
    with running_moto(work / "moto.log") as moto:
        saved = dict(os.environ)
        os.environ.update({"AWS_ENDPOINT_URL": moto, **CREDENTIALS})
        try:
            topic = h.unique("bench.s3")
            h.create_topics({topic: partitions})
            h.produce(events, {"orders": topic})
            print(f"  object store (moto behind the latency proxy), {len(events)} events, {partitions} partitions")
            print(f"    {'latency':>8} {'flush':>6} {'in flight':>9} {'events/s':>10} {'commits':>8} {'commits/s':>10}"
                  f" {'s/commit':>9}")
            for latency in latencies:
                for flush in FLUSHES:
                    for in_flight in (2, 1):
                        r = cell(binary, work, topic, len(events), schema, moto, latency, flush, in_flight)
                        print(f"    {latency:>6}ms {flush:>6} {in_flight:>9} {r['events_s']:>10.0f} {r['commits']:>8}"
                              f" {r['commits_s']:>10.2f} {r['ingest'] / max(r['commits'], 1):>9.3f}")
                        if latency == latencies[0] and flush == "small" and in_flight == 2:
                            per = ", ".join(f"{k} {v / max(r['commits'], 1):.1f}"
                                            for k, v in sorted(r["requests"].items()))
                            print(f"      requests per commit: {per}")
            for latency in latencies:
                steady_latency(binary, work, schema, moto, latency, rate=steady[0], seconds=steady[1])
        finally:
            os.environ.clear()
            os.environ.update(saved)


def config(work: Path, label: str, schema: Path, topic: str, endpoint: str, max_rows: int, max_age: str,
           in_flight: int, group: str | None = None, prefix: str | None = None) -> tuple[Path, str]:
    """A config writing one table under `s3://<bucket>/<prefix>` (new ones unless given: members of
    one group writing one table share both)."""
    prefix = prefix or h.unique(label)
    dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{schema}"',
               "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
    cfg = h.write_config(work / h.unique(label), group=group or h.unique("bench-s3"), root=f"s3://{BUCKET}/{prefix}",
                         datasets=[dataset], flush_age=max_age, max_rows=max_rows, budget=512 * 1024 * 1024,
                         extra=f"\n[pipeline]\ncommits_in_flight = {in_flight}\n")
    text = cfg.read_text().replace("max_bytes = 67108864", "max_bytes = 134217728")
    cfg.write_text(text.replace("\n[flush]", s3_storage_block(endpoint) + "\n[flush]", 1))
    return cfg, f"s3://{BUCKET}/{prefix}/orders"


def cell(binary: str, work: Path, topic: str, n: int, schema: Path, moto: str, latency: int, flush: str,
         in_flight: int) -> dict:
    max_rows, max_age = FLUSHES[flush]
    with StoreProxy(moto) as proxy:
        proxy.latency_ms = latency
        proxy.trace = []
        cfg, uri = config(work, f"s3cell-{latency}-{flush}-{in_flight}", schema, topic, proxy.endpoint, max_rows,
                          max_age, in_flight)
        proc = subprocess.run([binary, "run", "--until-caught-up", "--config", str(cfg)],
                              env=dict(os.environ, RUST_LOG="info"), capture_output=True, text=True)
        trace = list(proxy.trace)
    if proc.returncode != 0:
        sys.exit(f"bronze failed in the {latency} ms cell:\n{proc.stderr[-4000:]}")
    ingest = ingest_seconds(proc.stderr)
    table = h.read_delta(uri)
    assert table.num_rows == n, (table.num_rows, n)
    commits = len([c for c in h.delta_history(uri) if c.get("bronze", {}).get("offsets")])
    return {"ingest": ingest, "events_s": n / ingest, "commits": commits, "commits_s": commits / ingest,
            "requests": request_kinds(trace)}


def ingest_seconds(*logs: str) -> float:
    """From the first partition assignment to the last "caught up" over the logs of all members."""
    stamps = [(datetime.fromisoformat(line[:27].rstrip("Z")), line) for log in logs for line in log.splitlines()
              if line[:4].isdigit()]
    start = min(t for t, line in stamps if "partitions assigned" in line)
    end = max(t for t, line in stamps if "caught up" in line)
    return (end - start).total_seconds()


def request_kinds(trace: list) -> Counter:
    """The proxy's requests by what they did: a commit's cost in round trips, per table and kind."""
    kinds: Counter = Counter()
    for _start, _seconds, method, path, _status in trace:
        table = "ledger" if "/_bronze_runs/" in path else "dead letters" if "/_dead_letters" in path else "table"
        if "list-type=2" in path:
            kind = "LIST"
        elif "/_delta_log/" in path:
            kind = f"{method} log" + (" checkpoint" if "checkpoint" in path else "")
        elif ".parquet" in path:
            kind = f"{method} data"
        else:
            kind = method
        kinds[f"{table}: {kind}"] += 1
    return kinds


def steady_latency(binary: str, work: Path, schema: Path, moto: str, latency: int, rate: int = 10_000,
                   seconds: int = 10) -> dict:
    """Produce -> committed latency of each event at a steady rate, through the proxy at `latency`."""
    from e2e_throughput import latency as measure
    with StoreProxy(moto) as proxy:
        proxy.latency_ms = latency

        def store(topic: str, flush_age: str) -> tuple[Path, str]:
            return config(work, f"s3lat-{latency}", schema, topic, proxy.endpoint, 500_000, flush_age, 2)

        return measure(binary, work, rate, seconds, store=store, label=f"at {latency:>3} ms")
