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
import random
import subprocess
import sys
import time
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
            for latency in latencies:
                steady_latency(binary, work, schema, moto, latency, rate=steady[0], seconds=steady[1])
        finally:
            os.environ.clear()
            os.environ.update(saved)


def config(work: Path, label: str, schema: Path, topic: str, endpoint: str, max_rows: int, max_age: str,
           in_flight: int) -> tuple[Path, str]:
    prefix = h.unique(label)
    dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{schema}"',
               "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
    cfg = h.write_config(work / prefix, group=h.unique("bench-s3"), root=f"s3://{BUCKET}/{prefix}",
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
        cfg, uri = config(work, f"s3cell-{latency}-{flush}-{in_flight}", schema, topic, proxy.endpoint, max_rows,
                          max_age, in_flight)
        proc = subprocess.run([binary, "run", "--until-caught-up", "--config", str(cfg)],
                              env=dict(os.environ, RUST_LOG="info"), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bronze failed in the {latency} ms cell:\n{proc.stderr[-4000:]}")
    stamps = [(datetime.fromisoformat(line[:27].rstrip("Z")), line) for line in proc.stderr.splitlines()
              if line[:4].isdigit()]
    start = min(t for t, line in stamps if "partitions assigned" in line)
    end = max(t for t, line in stamps if "caught up" in line)
    ingest = (end - start).total_seconds()
    table = h.read_delta(uri)
    assert table.num_rows == n, (table.num_rows, n)
    commits = len([c for c in h.delta_history(uri) if c.get("bronze", {}).get("offsets")])
    return {"ingest": ingest, "events_s": n / ingest, "commits": commits, "commits_s": commits / ingest}


def steady_latency(binary: str, work: Path, schema: Path, moto: str, latency: int, rate: int = 10_000,
                   seconds: int = 10, flush_age: str = "1s") -> None:
    """Produce -> committed latency of each event at a steady rate, through the proxy at `latency`."""
    from e2e_throughput import Event
    topic = h.unique("bench.s3latency")
    h.create_topics({topic: 6})
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": h.bootstrap(), "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    rng = random.Random(7)
    with StoreProxy(moto) as proxy:
        proxy.latency_ms = latency
        cfg, uri = config(work, f"s3lat-{latency}", schema, topic, proxy.endpoint, 500_000, flush_age, 2)
        proc = subprocess.Popen([binary, "run", "--config", str(cfg)], env=dict(os.environ, RUST_LOG="warn"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def send(i: int) -> None:
            e = Event(i, rng, int(time.time() * 1000) - i * 7)
            producer.produce(topic, key=e.key, value=e.value)
            producer.poll(0)

        try:
            send(0)
            producer.flush(10)
            h.wait_until(lambda: len(h.stored_offsets(uri)) >= 1, 120, what="bronze to commit a first event")
            n, start = 1, time.time()
            while time.time() - start < seconds:
                while n <= int((time.time() - start) * rate):
                    send(n)
                    n += 1
                time.sleep(0.005)
            producer.flush(30)
            h.wait_until(lambda: len(h.stored_offsets(uri)) >= n, 120, interval=0.5, what="every event committed")
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    commits = {c["bronze"]["batch_id"]: c["timestamp"] for c in h.delta_history(uri)
               if isinstance(c.get("bronze"), dict) and "batch_id" in c["bronze"]}
    rows = h.read_delta(uri).select(["id", "_batch_id", "_source_ts"]).to_pylist()
    lat = sorted(commits[r["_batch_id"]] - r["_source_ts"].timestamp() * 1000 for r in rows if r["id"] > 0)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"    steady {rate} events/s for {seconds} s at {latency:>3} ms, flush max_age {flush_age}: "
          f"p50 {p(0.50):6.0f} ms  p99 {p(0.99):6.0f} ms  max {lat[-1]:6.0f} ms")
