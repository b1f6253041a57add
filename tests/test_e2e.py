"""End to end on the local embedded default: 50,000 Debezium events for two tables through a real
broker into local Delta tables, checked row by row with two independent readers."""

import json
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pyarrow.compute as pc

import harness as h
from harness import cdc

N_EVENTS = 50_000


def check_tables(root: str, produced: list, run_stdout: str) -> dict:
    """Assertions shared by the local and the S3 end-to-end tests. Returns row counts per table."""
    counts = {}
    by_table = defaultdict(list)
    for p in produced:
        by_table[p.table].append(p)
    for table_name, events in by_table.items():
        uri = f"{root}/{table_name}"
        table = h.read_delta(uri)
        pl_df = h.read_polars(uri)
        assert pl_df.height == table.num_rows, "polars and deltalake disagree"
        h.assert_no_duplicate_offsets(table)
        rows = table.to_pylist()
        stored = {(r["_topic"], r["_partition"], r["_offset"]): r for r in rows}
        data_events = [e for e in events if e.op is not None]
        tombstones = [e for e in events if e.op is None]
        by_offset = {(e.topic, e.partition, e.offset): e for e in data_events}
        # Nothing stored that was not produced as a data event (tombstones make no rows).
        assert set(stored) <= set(by_offset), "rows with offsets that were never produced"
        # Every data event is stored, or superseded in its batch by a later event for the same key.
        latest = {}
        for (t, p, o), r in stored.items():
            order = (by_offset[(t, p, o)].source_ts_ms, o)
            latest[(t, r["id"])] = max(latest.get((t, r["id"]), order), order)
        missing = [e for k, e in by_offset.items() if k not in stored]
        for e in missing:
            assert latest.get((e.topic, e.row_id), (-1, -1)) > (e.source_ts_ms, e.offset), f"event lost: {e}"
        # The commits account for every dropped duplicate.
        dropped = 0
        for commit in h.delta_history(uri):
            info = commit.get("bronze")
            if info:
                dropped += info["duplicates_dropped"]
        assert dropped == len(missing), (dropped, len(missing))
        # Metadata columns hold what was produced.
        for key, r in stored.items():
            e = by_offset[key]
            assert r["_op"] == e.op
            assert r["id"] == e.row_id
            assert r["_source_ts"] == datetime.fromtimestamp(e.source_ts_ms / 1000, tz=timezone.utc)
            assert r["_source_pos"] is not None and r["_batch_id"] and r["_ingested_at"] is not None
            # Op semantics: deletes carry only the key, every other op a full row.
            if e.op == "d":
                assert r["status"] is None
            else:
                assert r["status"] is not None
            assert r["event_date"] == r["_source_ts"].strftime("%Y-%m-%d")
            if "event_hour" in r:
                assert r["event_hour"] == r["_source_ts"].strftime("%H")
        # Exact rows per partition: produced per date, less the superseded events.
        want = Counter(datetime.fromtimestamp(e.source_ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")
                       for e in data_events)
        for e in missing:
            want[datetime.fromtimestamp(e.source_ts_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")] -= 1
        got = Counter(r["event_date"] for r in rows)
        assert got == +want
        # Keys are unique within each batch.
        per_batch = Counter((r["_batch_id"], r["id"]) for r in rows)
        assert max(per_batch.values()) == 1
        assert len(tombstones) > 0
        counts[table_name] = (table.num_rows, len(missing), len(tombstones))
    assert "customers" in run_stdout and "orders" in run_stdout
    return counts


def test_end_to_end_debezium_to_local_delta(tmp_path):
    ct, ot = h.unique("shop.customers"), h.unique("shop.orders")
    h.create_topics({ct: 3, ot: 4})
    plan = cdc.generate(N_EVENTS, seed=11)
    produced = h.produce(plan.events, {"customers": ct, "orders": ot})
    assert len(produced) == N_EVENTS
    assert {p.op for p in produced} >= {"r", "c", "u", "d", None}
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("e2e"), root=str(root), datasets=h.cdc_datasets(ct, ot),
                         max_rows=4000)
    run = h.run_bronze(cfg, "run", "--until-caught-up")
    counts = check_tables(str(root), produced, run.stdout)
    assert all(rows > 1000 for rows, _, _ in counts.values()), counts
    # Several flushes happened: the row limit is 4000.
    history = h.delta_history(str(root / "customers"))
    assert sum(1 for c in history if c.get("bronze")) >= 3
    # The txn actions hold the last offset of every partition.
    from deltalake import DeltaTable
    dt = DeltaTable(str(root / "orders"))
    per_part = Counter((p.topic, p.partition) for p in produced if p.table == "orders")
    for (topic, partition), n in per_part.items():
        assert dt.transaction_version(f"{cfg_group(cfg)}:{topic}:{partition}") == n - 1
    # Summary command reads the same numbers back.
    summary = h.run_bronze(cfg, "summary", "--json").stdout
    assert f'"rows":{counts["orders"][0]}' in summary.replace(" ", "")

    # A rerun finds nothing new and writes nothing.
    before = DeltaTable(str(root / "orders")).version()
    h.run_bronze(cfg, "run", "--until-caught-up")
    assert DeltaTable(str(root / "orders")).version() == before
    assert h.read_delta(str(root / "orders")).num_rows == counts["orders"][0]


def cfg_group(cfg_path) -> str:
    for line in cfg_path.read_text().splitlines():
        if line.startswith("group_id"):
            return line.split('"')[1]
    raise AssertionError("no group id")


def test_tombstones_only_advance_offsets_and_rerun_is_idempotent(tmp_path):
    topic = h.unique("tomb")
    h.create_topics({topic: 1})
    plan = cdc.generate(400, seed=3)
    only_orders = [e for e in plan.events if e.table == "orders"]
    produced = h.produce(only_orders, {"orders": topic})
    n_tomb = sum(1 for e in only_orders if e.value is None)
    cfg = h.write_config(tmp_path, group=h.unique("t"), root=str(tmp_path / "lake"),
                         datasets=[h.cdc_datasets("unused", topic)[1]])
    out = h.run_bronze(cfg, "run", "--until-caught-up").stdout
    line = next(l for l in out.splitlines() if l.startswith("orders"))
    assert int(line.split()[3]) == n_tomb, line
    table = h.read_delta(str(tmp_path / "lake" / "orders"))
    assert pc.max(table["_offset"]).as_py() <= max(p.offset for p in produced)


def test_last_flush_of_a_catch_up_run_is_written_by_several_writers(tmp_path):
    """`--until-caught-up` ends with a flush that nothing overlaps: it is encoded by two writers at once
    (here from 1,000 rows each), and the table still holds every event exactly once, read back by both
    readers."""
    topic = h.unique("shop.orders")
    h.create_topics({topic: 3})
    plan = cdc.generate(6_000, seed=5, days=1)
    produced = h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic})
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("tail"), root=str(root), datasets=h.keyless_orders(topic),
                         flush_age="60s",
                         extra="\n[pipeline]\nfinal_flush_writers = 2\nfinal_flush_min_rows = 1000\n")
    h.run_bronze(cfg, "run", "--until-caught-up")
    uri = str(root / "orders")
    expected = h.data_offsets(produced)
    assert len(expected) >= 2_000
    h.assert_exactly_once(uri, expected)
    assert h.read_polars(uri).height == len(expected)
    # One flush (max_rows 100,000, flush age 60 s): the last commit holds every row, and at least
    # one Delta partition got a file from each writer.
    log = sorted((root / "orders" / "_delta_log").glob("*.json"))[-1]
    adds = [a["add"] for a in map(json.loads, log.read_text().splitlines()) if "add" in a]
    partitions = {tuple(sorted(a["partitionValues"].items())) for a in adds}
    assert sum(json.loads(a["stats"])["numRecords"] for a in adds) == len(expected)
    assert len(adds) > len(partitions), (len(adds), partitions)
