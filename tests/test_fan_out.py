"""Fan-outs: one `[[datasets]]` entry makes a Delta table of every topic its pattern matches, the way a
Debezium connector writes one topic per source table. Topics created while bronze runs get their table
when the group is assigned them; per-table overrides change one table and not the others; the memory
budget and the number of commits running at once hold with more than a hundred tables."""

import json
import random
import re
import textwrap
import time

import harness as h
from harness.cdc import BASE_TS_MS, Event

CONTRACT = """\
[[columns]]
name = "id"
type = "int64"
nullable = false

[[columns]]
name = "name"
type = "string"

[[columns]]
name = "qty"
type = "int64"
"""


def table_events(schema: str, table: str, n: int, rng: random.Random, extra: dict | None = None,
                 first_id: int = 1):
    """`n` Debezium change events (bare envelopes) of one source table: inserts, and updates of rows
    inserted before; `extra` fields go into every row."""
    out = []
    for i in range(n):
        update = i >= 5 and rng.random() < 0.3
        row_id = rng.randint(first_id, first_id + i - 1) if update else first_id + i
        row = {"id": row_id, "name": f"{table}-{row_id}", "qty": rng.randint(0, 1000), **(extra or {})}
        ts = BASE_TS_MS + i * 1000
        value = {"before": None, "after": row, "op": "u" if update else "c", "ts_ms": ts + 3,
                 "source": {"connector": "postgresql", "db": "inventory", "schema": schema, "table": table,
                            "ts_ms": ts, "lsn": 1000 + i}}
        out.append(Event(table, json.dumps({"id": row_id}).encode(), json.dumps(value).encode(),
                               value["op"], row_id, ts))
    return out


def fan_out_config(tmp_path, group: str, prefix: str) -> tuple:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "item.toml").write_text(CONTRACT)
    port = h.free_port()
    text = textwrap.dedent(f"""\
        schema_dir = "{tmp_path / 'schemas'}"

        [kafka]
        bootstrap_servers = "{h.bootstrap()}"
        group_id = "{group}"
        auto_offset_reset = "earliest"
        # New topics of the pattern are found within a second, not librdkafka's 5 minutes.
        properties = {{ "topic.metadata.refresh.interval.ms" = "1000" }}

        [storage]
        root = "{tmp_path / 'lake'}"

        [flush]
        max_rows = 100000
        max_bytes = 67108864
        max_age = "1s"

        [memory]
        budget_bytes = {32 * 1024 * 1024}

        [pipeline]
        max_concurrent_commits = 4

        [metrics]
        address = "127.0.0.1:{port}"

        [[datasets]]
        name = "inventory"
        topic_pattern = '^{re.escape(prefix)}\\.(?P<schema>[a-z]+)\\.(?P<table>[a-z0-9_]+)$'
        table_name = "{{schema}}_{{table}}"
        format = "debezium-json"
        schema = "item.toml"

        [datasets.tables.public_t007]
        partitioning = {{ by = "none" }}

        [datasets.tables.public_t042]
        drift = {{ new_column = "evolve" }}
        """)
    cfg = tmp_path / "bronze.toml"
    cfg.write_text(text)
    return cfg, f"http://127.0.0.1:{port}/metrics"


def produce_tables(prefix: str, tables: list[str], per_table: int, seed: int, extra: dict | None = None,
                   first_id: int = 1) -> list:
    rng = random.Random(seed)
    events = [e for t in tables for e in table_events("public", t, per_table, rng, extra, first_id)]
    rng.shuffle(events)
    return h.produce(events, {t: f"{prefix}.public.{t}" for t in tables})


def offsets_by_table(produced) -> dict[str, set]:
    out: dict[str, set] = {}
    for p in produced:
        out.setdefault(f"public_{p.table}", set()).add((p.topic, p.partition, p.offset))
    return out


def test_a_fan_out_makes_one_table_per_topic_also_for_topics_created_while_running(tmp_path):
    prefix = h.unique("fan").replace("-", "")
    first = [f"t{i:03d}" for i in range(100)]
    later = [f"t{i:03d}" for i in range(100, 120)]
    h.create_topics({f"{prefix}.public.{t}": 1 for t in first})
    # A topic of another database is not the fan-out's.
    h.create_topics({f"{prefix}.other1.t000": 1})
    produced = produce_tables(prefix, first, 30, seed=1)
    cfg, url = fan_out_config(tmp_path, h.unique("fan"), prefix)
    lake = tmp_path / "lake"
    expected = offsets_by_table(produced)

    def landed(tables) -> bool:
        return all(len(h.stored_offsets(str(lake / f"public_{t}"))) >= len(expected[f"public_{t}"]) for t in tables)

    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: landed(first), 180, interval=2, what="the first 100 tables")
        # New source tables while running: their topics appear, their tables follow.
        h.create_topics({f"{prefix}.public.{t}": 1 for t in later})
        more = produce_tables(prefix, later, 30, seed=2)
        # t042 (drift evolve) and t043 (the contract's default: ignore) gain a column.
        altered = produce_tables(prefix, ["t042", "t043"], 10, seed=3, extra={"color": "red"}, first_id=1000)
        for part in (more, altered):
            for table, offsets in offsets_by_table(part).items():
                expected.setdefault(table, set()).update(offsets)
        h.wait_until(lambda: landed(first + later), 120, interval=2, what="the tables of the new topics")
        # A topic dropped at the source leaves its table alone, and bronze reading on.
        h.delete_topics([f"{prefix}.public.t099"])
        time.sleep(3)
        assert proc.poll() is None, "bronze stopped when a topic of its pattern was deleted"
        text = h.scrape(url)
        assert h.metric(text, "bronze_fan_out_errors_total") == 0
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = (tmp_path / "bronze.log").read_text()
    peak = re.search(r"peak RSS: ([0-9.]+) MiB", summary)
    assert peak, summary[-2000:]
    print(f"peak RSS with 120 tables: {peak.group(1)} MiB")

    from deltalake import DeltaTable
    tables = sorted(p.name for p in lake.iterdir() if not p.name.startswith("_"))
    assert tables == sorted(expected), set(tables) ^ set(expected)
    for table, offsets in expected.items():
        h.assert_exactly_once(str(lake / table), offsets)
    assert not (lake / "other1_t000").exists()
    # Per-table overrides: t007 is not partitioned; t042 evolved the new column, t043 kept its columns.
    assert DeltaTable(str(lake / "public_t007")).metadata().partition_columns == []
    assert DeltaTable(str(lake / "public_t008")).metadata().partition_columns == ["event_date"]
    t42 = h.read_delta(str(lake / "public_t042"))
    assert "color" in t42.column_names
    assert sorted(set(v for v in t42.column("color").to_pylist() if v)) == ["red"]
    assert "color" not in h.read_delta(str(lake / "public_t043")).column_names
    # Each table has its own ledger records, accounting for every row and offset.
    committed = {r["dataset"] for r in h.ledger(str(lake)) if r["kind"] == "commit"}
    assert committed == set(expected)
    for table in ("public_t000", "public_t042", "public_t119"):
        h.assert_ledger_complete(str(lake), table)
