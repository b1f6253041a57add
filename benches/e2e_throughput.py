"""End-to-end throughput of bronze against the local broker (run through scripts/bench.sh).

Produces N Debezium change events of a realistic 20-column shape (ints, strings, doubles, timestamps, a
date, a boolean, a JSON column) to a fresh topic, then times `bronze run --until-caught-up` until every
event is committed to a local Delta table. Prints events/s, MB/s, events/s per CPU core (from the
process's CPU time), peak RSS, files and mean file size. `--smoke` runs a small N for CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import harness as h  # noqa: E402

SCHEMA = HERE / "schemas" / "wide_orders.toml"


class Event:
    def __init__(self, i: int, rng: random.Random, base_ms: int):
        ts = base_ms + i * 7
        row = {
            "id": i, "customer_id": rng.randint(1, 200_000), "store_id": rng.randint(1, 500),
            "status": rng.choice(["new", "paid", "shipped", "delivered"]),
            "currency": rng.choice(["EUR", "USD", "GBP"]), "amount": round(rng.uniform(1, 5000), 2),
            "tax": round(rng.uniform(0, 500), 2), "discount": round(rng.uniform(0, 50), 2),
            "quantity": rng.randint(1, 20), "sku": f"SKU-{rng.randint(1, 99999):05d}",
            "channel": rng.choice(["web", "app", "store"]), "country": rng.choice(["DE", "FR", "US", "GB", "NL"]),
            "city": rng.choice(["Berlin", "Paris", "Austin", "Leeds", "Utrecht"]),
            "email": f"user{rng.randint(1, 10**6)}@example.com", "is_gift": rng.random() < 0.1,
            "order_date": ts // 86_400_000, "created_at": (ts - 60_000) * 1000, "updated_at": ts * 1000,
            "notes": rng.choice([None, "leave at door", "gift wrap", "call first"]),
            "attributes": json.dumps({"promo": rng.choice(["", "BF", "XMAS"]), "items": rng.randint(1, 9)}),
        }
        self.table = "orders"
        self.key = json.dumps({"id": i}).encode()
        payload = {"before": None, "after": row, "op": "c", "ts_ms": ts + 3, "transaction": None,
                   "source": {"version": "3.0.0.Final", "connector": "postgresql", "name": "shop", "ts_ms": ts,
                              "snapshot": "false", "db": "shop", "schema": "public", "table": "orders",
                              "txId": i, "lsn": 10_000_000 + i * 64, "xmin": None}}
        self.value = json.dumps(payload).encode()
        self.op, self.row_id, self.source_ts_ms = "c", i, ts


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bronze-bench-"))
    before = set(h.topics())
    try:
        run(work)
    finally:
        # Each run leaves tables and topics of several hundred MB otherwise; a few runs fill a disk.
        shutil.rmtree(work, ignore_errors=True)
        created = [t for t in h.topics() if t not in before and t.startswith("bench.")]
        if created:
            h.delete_topics(created)


def run(work: Path) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="20k events, for CI")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="[pipeline] decode_threads of the main run (default: bronze's, 2 on two cores)")
    ap.add_argument("--bin", default=os.environ.get("BRONZE_BIN"))
    ap.add_argument("--ceilings", default=os.environ.get("BRONZE_CEILINGS_BIN"),
                    help="the ceilings program (cargo build --example ceilings); skipped when absent")
    ap.add_argument("--maintenance", action="store_true",
                    help="also time a backfill, a compaction and a Postgres extract of the same size")
    ap.add_argument("--latency", action="store_true",
                    help="also measure produce -> committed latency at a moderate steady rate")
    ap.add_argument("--rate", type=int, default=20_000, help="events/s for --latency")
    ap.add_argument("--seconds", type=int, default=20, help="how long --latency produces")
    ap.add_argument("--matrix", action="store_true",
                    help="also the scaling matrix: partitions 1/3/12, 1 vs 2 members, flush sizes")
    ap.add_argument("--matrix-events", type=int, default=200_000, help="events per matrix topic")
    ap.add_argument("--tables", type=int, default=0,
                    help="also the many-tables cell: this many source tables (topics) through one fan-out")
    ap.add_argument("--tables-events", type=int, default=400_000, help="events over all tables of --tables")
    ap.add_argument("--store-latency", default="",
                    help="also the object-store cells: S3 (moto) behind a proxy adding these latencies, ms (0,25,100)")
    ap.add_argument("--store-events", type=int, default=500_000, help="events of each object-store cell")
    ap.add_argument("--members", default="",
                    help="also the scale-out cells: this many members (1,2,4) into one S3 table and into separate ones")
    ap.add_argument("--members-events", type=int, default=300_000, help="events of each scale-out cell")
    ap.add_argument("--members-latency", type=int, default=25, help="ms the proxy adds in the scale-out cells")
    ap.add_argument("--format", choices=["json", "avro"], default="json",
                    help="avro: also the main cell's events as Debezium Avro (test registry), beside JSON")
    ap.add_argument("--runs", type=int, default=1, help="measured runs of the main cell (median and spread)")
    ap.add_argument("--warmup", type=int, default=0, help="unmeasured runs of the main cell before them")
    args = ap.parse_args()
    n = 20_000 if args.smoke else args.events
    rng = random.Random(42)
    base_ms = 1_767_225_600_000
    topic = h.unique("bench.orders")
    h.create_topics({topic: args.partitions})
    t0 = time.time()
    chunk = 100_000
    produced = 0
    payload_bytes = 0
    for start in range(0, n, chunk):
        events = [Event(i, rng, base_ms) for i in range(start, min(n, start + chunk))]
        payload_bytes += sum(len(e.value) for e in events)
        produced += len(h.produce(events, {"orders": topic}))
    produce_s = time.time() - t0

    mb = payload_bytes / 1e6
    # One warm-up run (page cache, the broker's segments, the allocator), then `runs` measured ones:
    # the median is the figure, the spread says how far to trust it.
    runs = [main_run(args, work / f"run{i}", topic, n) for i in range(args.warmup + args.runs)][args.warmup:]
    runs.sort(key=lambda r: r["ingest"])
    r = runs[len(runs) // 2]
    cfg, ingest, cpu = r["cfg"], r["ingest"], r["cpu"]
    rates = [n / x["ingest"] for x in runs]
    spread = (max(rates) - min(rates)) / (n / ingest) * 100
    print(f"bronze end-to-end bench ({'smoke' if args.smoke else 'full'}), {n} events, {args.partitions} partitions,"
          f" {mb:.1f} MB of JSON (mean {payload_bytes / n:.0f} B/event); produced in {produce_s:.1f}s")
    print(f"  runs (after {args.warmup} warm-up)                    "
          f"{', '.join(f'{x:.0f}' for x in sorted(rates))} events/s; median below, spread {spread:.1f} %")
    print(f"  wall time (incl. start-up and group join)  {r['wall']:8.2f} s")
    print(f"  ingest time (assignment -> last commit)    {ingest:8.2f} s")
    print(f"  throughput                                 {n / ingest:10.0f} events/s  {mb / ingest:7.1f} MB/s")
    print(f"  CPU time                                   {cpu:8.2f} s  -> {n / cpu:10.0f} events per CPU-second")
    print(f"  peak RSS                                   {r['rss']:>8} MiB")
    print(f"  files                                      {len(r['sizes']):8d}  mean "
          f"{sum(r['sizes']) / len(r['sizes']) / 1e6:.2f} MB")
    if args.ceilings:
        ceilings(args.ceilings, cfg, n, work, n / ingest, mb)
    if args.format == "avro":
        import avro_format
        avro_format.cell(args, work, n, Event, base_ms, main_run, json_rate=n / ingest)
    if args.maintenance:
        maintenance(args.bin, cfg, topic, n, work, base_ms)
    if args.latency:
        rate, seconds = (2_000, 4) if args.smoke else (args.rate, args.seconds)
        latency(args.bin, work, rate, seconds)
    if args.matrix:
        matrix(args.bin, work, 3_000 if args.smoke else args.matrix_events, base_ms)
    if args.tables:
        many_tables(args.bin, work, args.tables, 4_000 if args.smoke else args.tables_events, base_ms)
    if args.store_latency:
        import object_store
        store_rng = random.Random(11)
        count = 4_000 if args.smoke else args.store_events
        object_store.cells(args.bin, work, [Event(i, store_rng, base_ms) for i in range(count)], SCHEMA,
                           [int(x) for x in args.store_latency.split(",")],
                           steady=(2_000, 3) if args.smoke else (args.rate, args.seconds))
    if args.members:
        import scale_out
        scale_rng = random.Random(13)
        count = 4_000 if args.smoke else args.members_events
        scale_out.cells(args.bin, work, [Event(i, scale_rng, base_ms) for i in range(count)], SCHEMA,
                        [int(x) for x in args.members.split(",")], latency=args.members_latency)


def main_run(args, work: Path, topic: str, n: int, fmt: str = "debezium-json", sections: str = "") -> dict:
    """One `bronze run --until-caught-up` of the main cell into a fresh table under `work` (events in
    format `fmt`; `sections` adds config, such as the schema registry of Avro)."""
    dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": f'"{fmt}"', "schema": f'"{SCHEMA}"',
               "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
    cfg = h.write_config(work, group=h.unique("bench"), root=str(work / "lake"), datasets=[dataset],
                         flush_age="5s", max_rows=500_000, budget=512 * 1024 * 1024,
                         extra=sections + ("" if args.decode_threads is None
                                           else f"\n[pipeline]\ndecode_threads = {args.decode_threads}\n"))
    cfg.write_text(cfg.read_text().replace("max_bytes = 67108864", "max_bytes = 134217728"))
    env = dict(os.environ, RUST_LOG="info")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    proc = subprocess.Popen([args.bin, "run", "--until-caught-up", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.time() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"bronze failed ({proc.returncode}):\n{err[-4000:]}")
    cpu = (usage.ru_utime + usage.ru_stime) - (before.ru_utime + before.ru_stime)
    # Ingest time: from the partition assignment (after the group join) to the last commit.
    stamps = [(line[:27], line) for line in err.splitlines() if line[:4].isdigit()]
    assigned = next(datetime.fromisoformat(s.rstrip("Z")) for s, l in stamps if "partitions assigned" in l)
    finished = [datetime.fromisoformat(s.rstrip("Z")) for s, l in stamps if "caught up" in l][-1]
    table = h.read_delta(str(work / "lake" / "orders"))
    assert table.num_rows == n, (table.num_rows, n)
    from deltalake import DeltaTable
    files = DeltaTable(str(work / "lake" / "orders")).file_uris()
    return {"cfg": cfg, "wall": wall, "ingest": (finished - assigned).total_seconds(), "cpu": cpu,
            "rss": re.search(r"peak RSS: ([0-9.]+) MiB", out).group(1),
            "sizes": [os.path.getsize(u.replace("file://", "")) for u in files]}


def ingest(binary: str, work: Path, topic: str, n: int, members: int, threads: int, max_rows: int,
           label: str) -> dict:
    """`members` bronze processes of one group, each decoding on `threads` threads, run `--until-caught-up`
    on `topic` (n events) into a fresh table: ingest seconds (first assignment to last catch-up), CPU
    seconds of all, files, peak RSS."""
    dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{SCHEMA}"',
               "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
    cell = work / label
    cfg = h.write_config(cell, group=h.unique("matrix"), root=str(cell / "lake"), datasets=[dataset],
                         flush_age="5s", max_rows=max_rows, budget=512 * 1024 * 1024,
                         extra=f"\n[pipeline]\ndecode_threads = {threads}\n")
    cfg.write_text(cfg.read_text().replace("max_bytes = 67108864", "max_bytes = 134217728"))
    env = dict(os.environ, RUST_LOG="info")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([binary, "run", "--until-caught-up", "--config", str(cfg)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(members)]
    outputs = [p.communicate() for p in procs]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            sys.exit(f"bronze failed ({p.returncode}) in {label}:\n{err[-4000:]}")
    stamps = [(datetime.fromisoformat(line[:27].rstrip("Z")), line) for _, err in outputs
              for line in err.splitlines() if line[:4].isdigit()]
    start = min(t for t, l in stamps if "partitions assigned" in l)
    end = max(t for t, l in stamps if "caught up" in l)
    table = h.read_delta(str(cell / "lake" / "orders"))
    assert table.num_rows == n, (label, table.num_rows, n)
    from deltalake import DeltaTable
    files = DeltaTable(str(cell / "lake" / "orders")).file_uris()
    rss = max(float(re.search(r"peak RSS: ([0-9.]+) MiB", out).group(1)) for out, _ in outputs)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": (end - start).total_seconds(), "cpu": cpu, "files": len(files), "rss": rss}


def matrix(binary: str, work: Path, n: int, base_ms: int) -> None:
    """Throughput across partition counts, group members, decode threads and flush sizes, on the same
    events."""
    rng = random.Random(7)
    events = [Event(i, rng, base_ms) for i in range(n)]
    topics = {}
    for partitions in (1, 3, 12):
        topics[partitions] = h.unique(f"bench.matrix{partitions}")
        h.create_topics({topics[partitions]: partitions})
        h.produce(events, {"orders": topics[partitions]})
    # (partitions, members, decode threads per member, flush rows)
    cells = [(1, 1, 1, 500_000), (1, 1, 2, 500_000), (3, 1, 2, 500_000), (12, 1, 1, 500_000),
             (12, 1, 2, 500_000), (12, 2, 1, 500_000), (12, 1, 2, n // 20 or 1), (12, 1, 2, n // 4 or 1),
             # Flushes during the run: commits overlap reading (one flush at the end cannot).
             (12, 1, 1, n // 20 or 1), (12, 1, 1, n // 4 or 1)]
    print(f"scaling matrix: {n} events per cell, `--until-caught-up` from the first assignment to the last catch-up")
    print(f"  {'partitions':>10} {'members':>7} {'threads':>7} {'flush rows':>10} {'events/s':>10} {'per CPU-s':>10}"
          f" {'files':>6} {'peak RSS MiB':>12}")
    for partitions, members, threads, rows in cells:
        r = ingest(binary, work, topics[partitions], n, members, threads, rows,
                   f"m{partitions}-{members}-{threads}-{rows}")
        print(f"  {partitions:>10} {members:>7} {threads:>7} {rows:>10} {n / max(r['seconds'], 1e-3):>10.0f}"
              f" {n / max(r['cpu'], 1e-3):>10.0f} {r['files']:>6} {r['rss']:>12.0f}")


def many_tables(binary: str, work: Path, tables: int, n: int, base_ms: int) -> None:
    """The same events into one table and into `tables` tables (one topic each, one fan-out entry), each
    `--until-caught-up` with flushes every 1,000 rows or 2 s: events/s, commits/s, files, peak RSS."""
    rng = random.Random(11)
    events = [Event(i, rng, base_ms) for i in range(n)]
    prefix = h.unique("bench.fan").replace("-", "")
    names = [f"t{j:04d}" for j in range(tables)]
    h.create_topics({f"{prefix}.{t}": 1 for t in names})
    for j, t in enumerate(names):
        h.produce(events[j::tables], {"orders": f"{prefix}.{t}"})
    single = h.unique("bench.fan1")
    h.create_topics({single: 12})
    h.produce(events, {"orders": single})
    pipeline = "\n[pipeline]\nmax_concurrent_commits = 16\n"
    print(f"many tables: {n} events, flush every 1,000 rows or 2 s, `--until-caught-up`")
    print(f"  {'tables':>6} {'events/s':>10} {'per CPU-s':>10} {'commits':>8} {'commits/s':>9} {'files':>6}"
          f" {'files/table':>11} {'peak RSS MiB':>12}")
    for label, dataset in (
        ("1", {"name": '"orders"', "topics": f'["{single}"]', "format": '"debezium-json"',
               "schema": f'"{SCHEMA}"', "partitioning": '{ by = "none" }'}),
        (str(tables), {"name": '"fan"', "topic_pattern": f"'^{re.escape(prefix)}\\.(t[0-9]+)$'", "table_name": '"{1}"',
                       "format": '"debezium-json"', "schema": f'"{SCHEMA}"', "partitioning": '{ by = "none" }'}),
    ):
        cell = work / f"fan{label}"
        cfg = h.write_config(cell, group=h.unique("fan"), root=str(cell / "lake"), datasets=[dataset],
                             flush_age="2s", max_rows=1_000, budget=512 * 1024 * 1024, extra=pipeline)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([binary, "run", "--until-caught-up", "--config", str(cfg)],
                              env=dict(os.environ, RUST_LOG="info"), capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            sys.exit(f"bronze failed ({proc.returncode}) with {label} tables:\n{proc.stderr[-4000:]}")
        stamps = [(datetime.fromisoformat(line[:27].rstrip("Z")), line) for line in proc.stderr.splitlines()
                  if line[:4].isdigit()]
        start = min(t for t, l in stamps if "partitions assigned" in l)
        end = max(t for t, l in stamps if "caught up" in l)
        seconds = max((end - start).total_seconds(), 1e-3)
        from deltalake import DeltaTable
        lake = cell / "lake"
        made = [p for p in lake.iterdir() if not p.name.startswith("_")]
        assert len(made) == int(label), (label, len(made))
        rows = commits = files = 0
        for p in made:
            dt = DeltaTable(str(p))
            rows += dt.to_pyarrow_dataset().count_rows()
            commits += dt.version()  # version 0 creates the table
            files += len(dt.file_uris())
        assert rows == n, (label, rows, n)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rss = float(re.search(r"peak RSS: ([0-9.]+) MiB", proc.stdout).group(1))
        print(f"  {label:>6} {n / seconds:>10.0f} {n / max(cpu, 1e-3):>10.0f} {commits:>8} {commits / seconds:>9.1f}"
              f" {files:>6} {files / len(made):>11.1f} {rss:>12.0f}")


def latency(binary: str, work: Path, rate: int, seconds: int, flush_age: float = 1.0, store=None,
            label: str | None = None) -> dict:
    """End-to-end latency under a steady load: each event carries its produce time as the source time;
    a row's latency is the time of the Delta commit that holds it (commitInfo timestamp of its batch) minus
    that. Compared with the flush age (target: p99 <= 2x). `store(topic, flush_age)`, when given, writes
    the config of another table root (the object-store cells) and returns it with the table's URI."""
    topic = h.unique("bench.latency")
    h.create_topics({topic: 6})
    if store is None:
        lwork = work / "latency"
        dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{SCHEMA}"',
                   "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
        cfg = h.write_config(lwork, group=h.unique("bench-latency"), root=str(lwork / "lake"), datasets=[dataset],
                             flush_age=f"{int(flush_age * 1000)}ms", max_rows=500_000, budget=512 * 1024 * 1024)
        uri = str(lwork / "lake" / "orders")
    else:
        cfg, uri = store(topic, f"{int(flush_age * 1000)}ms")
    proc = subprocess.Popen([binary, "run", "--config", str(cfg)], env=dict(os.environ, RUST_LOG="warn"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rng = random.Random(7)
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": h.bootstrap(), "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})

    def send(i: int) -> None:
        e = Event(i, rng, int(time.time() * 1000) - i * 7)   # source ts = now
        producer.produce(topic, key=e.key, value=e.value)
        producer.poll(0)

    try:
        # Wait until bronze is assigned and committing, so start-up is not counted.
        send(0)
        producer.flush(10)
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= 1, 120, what="bronze to commit a first event")
        n = 1
        start = time.time()
        while time.time() - start < seconds:
            due = int((time.time() - start) * rate)
            while n <= due:
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
    table = h.read_delta(uri).select(["id", "_batch_id", "_source_ts"]).to_pylist()
    lat = sorted(commits[r["_batch_id"]] - r["_source_ts"].timestamp() * 1000 for r in table if r["id"] > 0)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    result = {"p50": p(0.50), "p99": p(0.99), "max": lat[-1], "events": len(lat), "commits": len(commits)}
    if label is None:
        print(f"  latency (produce -> committed), {rate} events/s for {seconds} s, flush max_age {flush_age:.1f} s,"
              f" {len(lat)} events")
        print(f"    p50 {p(0.50):7.0f} ms   p99 {p(0.99):7.0f} ms   max {lat[-1]:7.0f} ms"
              f"   (target p99 <= {2 * flush_age * 1000:.0f} ms)")
    else:
        print(f"    steady {rate} events/s for {seconds} s {label}, flush max_age {flush_age:.1f} s: "
              f"p50 {p(0.50):6.0f} ms  p99 {p(0.99):6.0f} ms  max {lat[-1]:6.0f} ms")
    return result


def run_json(binary: str, cfg: Path, *args: str) -> dict:
    out = subprocess.run([binary, *args, "--config", str(cfg), "--json"], capture_output=True, text=True,
                         env=dict(os.environ, RUST_LOG="warn"))
    if out.returncode != 0:
        sys.exit(f"bronze {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


EXTRACT_CONTRACT = """
[[columns]]
name = "id"
type = "int64"
nullable = false
[[columns]]
name = "customer_id"
type = "int64"
[[columns]]
name = "status"
type = "string"
[[columns]]
name = "amount"
type = "decimal"
precision = 12
scale = 2
[[columns]]
name = "email"
type = "string"
[[columns]]
name = "updated_at"
type = "timestamp"
"""


def maintenance(binary: str, cfg: Path, topic: str, n: int, work: Path, base_ms: int) -> None:
    """Backfill rows/s (Kafka replay + replace commit), compaction MB/s and files before/after, Postgres
    extract rows/s (4 parallel ranges of one snapshot), on this run's data size."""
    first = datetime.utcfromtimestamp(base_ms / 1000).strftime("%Y-%m-%d")
    last = datetime.utcfromtimestamp((base_ms + n * 7) / 1000 + 86_400).strftime("%Y-%m-%d")
    t0 = time.time()
    b = run_json(binary, cfg, "backfill", "--dataset", "orders", "--from", first, "--to", last)
    wall = time.time() - t0
    print(f"  backfill from Kafka (replay + one replace commit)")
    print(f"    {b['messages_read']} messages read, {b['rows_written']} rows written in {wall:.2f} s"
          f" -> {b['rows_written'] / wall:10.0f} rows/s; {b['files_removed']} files replaced by {b['files_added']}")

    # Compaction: the same topic into a table with small flushes, then compacted.
    small = work / "small"
    dataset = {"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{SCHEMA}"',
               "key_columns": '["id"]', "partitioning": '{ by = "date" }'}
    scfg = h.write_config(small, group=h.unique("bench-small"), root=str(small / "lake"), datasets=[dataset],
                          flush_age="5s", max_rows=max(n // 200, 1000), budget=512 * 1024 * 1024)
    subprocess.run([binary, "run", "--until-caught-up", "--config", str(scfg)], check=True, capture_output=True,
                   env=dict(os.environ, RUST_LOG="warn"))
    t0 = time.time()
    c = run_json(binary, scfg, "compact", "--all-partitions")
    wall = time.time() - t0
    print(f"  compaction: {c['files_before']} files -> {c['files_after']}, {c['bytes_rewritten'] / 1e6:.1f} MB"
          f" rewritten in {wall:.2f} s -> {c['bytes_rewritten'] / 1e6 / wall:7.1f} MB/s")

    # Postgres extract of n rows.
    from harness.postgres import running_postgres
    with running_postgres() as pg:
        pg.sql(f"""CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status text, amount numeric(12,2),
                                         email text, updated_at timestamptz NOT NULL);
                   INSERT INTO orders SELECT i, i % 200000, (ARRAY['new','paid','shipped'])[1 + i % 3],
                          (i % 500000) / 100.0, 'user' || i || '@example.com',
                          timestamptz '2026-01-01 00:00:00+00' + (i % 86400) * interval '1 second'
                   FROM generate_series(1, {n}) i;""")
        ework = work / "extract"
        ework.mkdir()
        (ework / "orders.toml").write_text(EXTRACT_CONTRACT)
        ds = {"name": '"pg_orders"', "format": '"debezium-json"', "schema": f'"{ework / "orders.toml"}"',
              "key_columns": '["id"]', "ordering_column": '"_offset"',
              "partitioning": '{ by = "date", time_column = "updated_at" }',
              "extract": f'{{ dsn = "{pg.dsn}", query = "SELECT * FROM orders", time_column = "updated_at", '
                         f'split_column = "id", max_parallelism = 4 }}'}
        ecfg = h.write_config(ework, group=h.unique("bench-extract"), root=str(ework / "lake"), datasets=[ds])
        t0 = time.time()
        e = run_json(binary, ecfg, "extract", "--dataset", "pg_orders", "--full")
        wall = time.time() - t0
        print(f"  Postgres extract ({e['ranges']} parallel ranges, one snapshot): {e['rows_written']} rows in"
              f" {wall:.2f} s -> {e['rows_written'] / wall:10.0f} rows/s")


def ceilings(binary: str, cfg: Path, n: int, work: Path, bronze_rate: float, mb: float) -> None:
    """The raw ceilings on the same topic and contract, one thread each, and bronze as a fraction of the
    slowest of them."""
    out = subprocess.run([binary, "--config", str(cfg), "--events", str(n), "--keep", str(min(n, 200_000)),
                          "--lake", str(work)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"ceilings failed ({out.returncode}):\n{out.stderr[-4000:]}")
    c = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [("librdkafka consume-only", c["consume"]), ("Debezium decode + coercion only", c["decode"]),
            ("Arrow build + Parquet write only", c["write"])]
    print("  ceilings on the same data (one thread each, no commit):")
    for name, s in rows:
        per_cpu = s["events"] / s["cpu_s"] if s["cpu_s"] > 0 else 0
        print(f"    {name:<38} {s['events_per_s']:10.0f} events/s  ({per_cpu:.0f} per CPU-second)")
    consume_mb = c["consume"]["bytes"] / 1e6 / c["consume"]["wall_s"]
    print(f"    {'(consume-only MB/s)':<38} {consume_mb:10.1f} MB/s")
    slowest = min(s["events_per_s"] for _, s in rows)
    print(f"  bronze / slowest ceiling                   {bronze_rate / slowest:8.2f}")


if __name__ == "__main__":
    main()
