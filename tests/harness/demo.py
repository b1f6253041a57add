"""Demo helper: produce a realistic Debezium stream to the demo topics, and report on the lake with an
independent reader (Python deltalake). Used by scripts/demo.sh."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import harness as h  # noqa: E402
from harness import cdc  # noqa: E402

TOPICS = {"customers": "shop.public.customers", "orders": "shop.public.orders"}


def produce(n: int) -> None:
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": h.bootstrap()})
    existing = set(admin.list_topics(timeout=10).topics)
    stale = [t for t in TOPICS.values() if t in existing]
    if stale:
        for f in admin.delete_topics(stale).values():
            f.result(timeout=30)
        h.wait_until(lambda: not (set(admin.list_topics(timeout=10).topics) & set(stale)), 60, what="topic deletion")
    h.create_topics({TOPICS["customers"]: 3, TOPICS["orders"]: 4})
    plan = cdc.generate(n, seed=2026)
    started = time.time()
    produced = h.produce(plan.events, TOPICS)
    ops = Counter((p.table, p.op or "tombstone") for p in produced)
    print(f"produced {len(produced)} events in {time.time() - started:.1f}s:")
    for table in TOPICS:
        parts = ", ".join(f"{op}={ops[(table, op)]}" for op in ("r", "c", "u", "d", "tombstone"))
        print(f"  {TOPICS[table]:<24} {parts}")


def report(lake: Path) -> None:
    from deltalake import DeltaTable
    print("read back with the Python deltalake package (independent of bronze):")
    for table in TOPICS:
        dt = DeltaTable(str(lake / table))
        t = dt.to_pyarrow_table()
        ops = Counter(t.column("_op").to_pylist())
        parts = dt.metadata().partition_columns
        partitions = {tuple(r[c] for c in parts) for r in t.select(parts).to_pylist()}
        print(f"  {table:<10} version={dt.version()} rows={t.num_rows} files={len(dt.file_uris())} "
              f"partitions={len(partitions)} ops={dict(sorted(ops.items()))}")


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("produce")
    p.add_argument("--events", type=int, default=40_000)
    r = sub.add_parser("report")
    r.add_argument("lake", type=Path)
    args = ap.parse_args()
    if args.cmd == "produce":
        produce(args.events)
    else:
        report(args.lake)


if __name__ == "__main__":
    main()
