"""Fan-outs: one `[[datasets]]` entry makes a Delta table of every topic its pattern matches, the way a
Debezium connector writes one topic per source table, each with the contract its own Connect schema
gives (`contract = "derived"`). Topics created while bronze runs get their table when the group is
assigned them; an empty topic gets its table once a message with a schema arrives; per-table
overrides change one table and not the others; a restart finds every table and reads on exactly
once."""

import json
import random
import re
import time

import pyarrow as pa

import harness as h
from harness import glue as g
from harness.cdc import BASE_TS_MS, Event

ITEM_CONTRACT = """\
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

# (field, Connect type, optional, logical name) of every source table's rows; some tables have more.
BASE_FIELDS = [("id", "int64", False, None), ("name", "string", True, None), ("qty", "int32", True, None),
               ("updatedAt", "int64", True, "io.debezium.time.MicroTimestamp"),
               ("day", "int32", True, "io.debezium.time.Date")]
EXTRA_FIELD = ("note", "string", True, None)
COLOR_FIELD = ("color", "string", True, None)


def connect_schema(table: str, fields) -> dict:
    def field(name, ty, optional, logical):
        return {"field": name, "type": ty, "optional": optional, **({"name": logical} if logical else {})}
    row = {"type": "struct", "optional": True, "name": f"inventory.public.{table}.Value",
           "fields": [field(*f) for f in fields]}
    source = {"type": "struct", "optional": False, "name": "io.debezium.connector.postgresql.Source",
              "fields": [field("ts_ms", "int64", False, None), field("schema", "string", False, None),
                         field("table", "string", False, None), field("lsn", "int64", True, None)]}
    return {"type": "struct", "optional": False, "name": f"inventory.public.{table}.Envelope",
            "fields": [dict(row, field="before"), dict(row, field="after"), dict(source, field="source"),
                       field("op", "string", False, None), field("ts_ms", "int64", True, None)]}


KEY_SCHEMA = {"type": "struct", "optional": False, "name": "inventory.Key",
              "fields": [{"field": "id", "type": "int64", "optional": False}]}


def fields_of(table: str, altered: bool = False):
    fields = list(BASE_FIELDS)
    if int(table[1:]) % 3 == 0:
        fields.append(EXTRA_FIELD)
    if altered:
        fields.append(COLOR_FIELD)
    return fields


def table_events(table: str, n: int, rng: random.Random, first_id: int = 1, altered: bool = False):
    """`n` Debezium inserts of one source table with the Connect schema wrapper (unique ids: the tables
    are keyed by the key schema, and the exactly-once check counts every offset)."""
    fields = fields_of(table, altered)
    schema = connect_schema(table, fields)
    out = []
    for i in range(n):
        row_id = first_id + i
        ts = BASE_TS_MS + row_id * 1000
        row = {"id": row_id, "name": f"{table}-{row_id}", "qty": rng.randint(0, 1000), "updatedAt": ts * 1000,
               "day": ts // 86_400_000}
        if EXTRA_FIELD in fields:
            row["note"] = rng.choice(["a", "b", None])
        if altered:
            row["color"] = "red"
        payload = {"before": None, "after": row, "op": "c", "ts_ms": ts + 3,
                   "source": {"ts_ms": ts, "schema": "public", "table": table, "lsn": 1000 + row_id}}
        key = {"schema": KEY_SCHEMA, "payload": {"id": row_id}}
        out.append(Event(table, json.dumps(key).encode(), json.dumps({"schema": schema, "payload": payload}).encode(),
                         "c", row_id, ts))
    return out


def fan_out_config(tmp_path, group: str, prefix: str, glue_port: int) -> tuple:
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "item.toml").write_text(ITEM_CONTRACT)
    port = h.free_port()
    text = h.fan_out_head(schema_dir=tmp_path / "schemas", group=group, root=str(tmp_path / "lake"),
                          sections=f"""
        [memory]
        budget_bytes = {32 * 1024 * 1024}

        [pipeline]
        max_concurrent_commits = 4

        [metrics]
        address = "127.0.0.1:{port}"

        [catalog]
        kind = "glue"
        database = "inventory"
        endpoint = "http://127.0.0.1:{glue_port}"
        interval = "1s"

        [[datasets]]
        name = "inventory"
        topic_pattern = '^{re.escape(prefix)}\\.(?P<schema>[a-z]+)\\.(?P<table>[a-z0-9_]+)$'
        table_name = "{{schema}}_{{table}}"
        format = "debezium-json"
        contract = "derived"

        [datasets.tables.public_t007]
        partitioning = {{ by = "none" }}

        [datasets.tables.public_t042]
        drift = {{ new_column = "evolve" }}

        [datasets.tables.public_t050]
        contract = "file"
        schema = "item.toml"
        """)
    cfg = tmp_path / "bronze.toml"
    cfg.write_text(text)
    return cfg, f"http://127.0.0.1:{port}/metrics"


def produce_tables(prefix: str, tables: list[str], per_table: int, seed: int, **kw) -> list:
    rng = random.Random(seed)
    events = [e for t in tables for e in table_events(t, per_table, rng, **kw)]
    rng.shuffle(events)
    return h.produce(events, {t: f"{prefix}.public.{t}" for t in tables})


def add_offsets(expected: dict, produced) -> None:
    for p in produced:
        expected.setdefault(f"public_{p.table}", set()).add((p.topic, p.partition, p.offset))


def test_a_fan_out_makes_a_table_with_its_own_contract_per_topic_also_for_new_topics(tmp_path):
    prefix = h.unique("fan").replace("-", "")
    first = [f"t{i:03d}" for i in range(100)]
    later = [f"t{i:03d}" for i in range(100, 120)]
    empty = "t120"
    h.create_topics({f"{prefix}.public.{t}": 1 for t in first + [empty]})
    # A topic of another database is not the fan-out's.
    h.create_topics({f"{prefix}.other1.t000": 1})
    expected: dict[str, set] = {}
    add_offsets(expected, produce_tables(prefix, first, 30, seed=1))
    glue_port = h.free_port()
    glue = g.start(glue_port, tmp_path / "glue.log")
    cfg, url = fan_out_config(tmp_path, h.unique("fan"), prefix, glue_port)
    lake = tmp_path / "lake"

    def landed(tables) -> bool:
        return all(len(h.stored_offsets(str(lake / f"public_{t}"))) >= len(expected[f"public_{t}"]) for t in tables)

    # Glue's credentials and region from the environment (the tables are local: no [storage.s3]).
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}
    proc = h.start_bronze(cfg, env=env, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: landed(first), 180, interval=2, what="the first 100 tables")
        # The empty topic has no schema to derive a contract from: no table yet, and nothing fails.
        assert not (lake / f"public_{empty}" / "_delta_log").exists()
        assert proc.poll() is None
        # New source tables while running: their topics appear, their tables follow; the empty topic
        # gets its first rows; t042 (drift evolve) and t043 (the default: ignore) gain a column.
        h.create_topics({f"{prefix}.public.{t}": 1 for t in later})
        add_offsets(expected, produce_tables(prefix, later + [empty], 30, seed=2))
        add_offsets(expected, produce_tables(prefix, ["t042", "t043"], 10, seed=3, first_id=1000, altered=True))
        h.wait_until(lambda: landed(first + later + [empty]), 120, interval=2, what="the tables of the new topics")
        # A topic dropped at the source leaves its table alone, and bronze reading on.
        h.delete_topics([f"{prefix}.public.t099"])
        time.sleep(3)
        assert proc.poll() is None, "bronze stopped when a topic of its pattern was deleted"
        assert h.metric(h.scrape(url), "bronze_fan_out_errors_total") == 0
        # Every table is in the catalog, with its columns after its evolution.
        h.wait_until(lambda: len(g.tables(glue_port, "inventory") or {}) == len(expected)
                     and "color" in g.columns(g.tables(glue_port, "inventory").get("public_t042")), 60,
                     what="121 tables registered in Glue")
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    peak = re.search(r"peak RSS: ([0-9.]+) MiB", (tmp_path / "bronze.log").read_text())
    assert peak
    print(f"peak RSS with 121 tables: {peak.group(1)} MiB")

    # A restart finds every table (the contracts derived again agree with them) and reads on.
    add_offsets(expected, produce_tables(prefix, ["t000", "t043"], 5, seed=4, first_id=2000, altered=True))
    run = h.run_bronze(cfg, "run", "--until-caught-up", env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    try:
        registered = g.tables(glue_port, "inventory")
        sync = [json.loads(line) for line in h.run_bronze(cfg, "catalog", "sync", "--json", env=env).stdout.splitlines()]
    finally:
        glue.terminate()
    assert {r["status"] for r in sync} == {"unchanged"} and len(sync) == len(expected) - 1, sync
    assert "note" in g.columns(registered["public_t000"]) and "note" not in g.columns(registered["public_t001"])
    assert g.columns(registered["public_t042"])["color"] == "string"
    assert "color" not in g.columns(registered["public_t043"])
    assert g.columns(registered["public_t050"])["qty"] == "bigint"
    assert registered["public_t007"]["PartitionKeys"] == []
    assert [k["Name"] for k in registered["public_t008"]["PartitionKeys"]] == ["event_date"]

    from deltalake import DeltaTable
    expected.pop("public_t099")  # its topic is gone; its table stays as it was
    tables = sorted(p.name for p in lake.iterdir() if not p.name.startswith("_"))
    assert tables == sorted(list(expected) + ["public_t099"])
    for table, offsets in expected.items():
        h.assert_exactly_once(str(lake / table), offsets)
    assert not (lake / "other1_t000").exists()

    # Each table's columns are its own source table's, typed from the Connect schema.
    t000 = h.read_delta(str(lake / "public_t000")).schema
    t001 = h.read_delta(str(lake / "public_t001")).schema
    assert "note" in t000.names and "note" not in t001.names
    assert pa.types.is_timestamp(t001.field("updated_at").type), t001.field("updated_at").type
    assert t001.field("day").type == pa.date32()
    assert t001.field("qty").type == pa.int32()
    # Per-table overrides: t007 is not partitioned; t042 evolved the new column, t043 kept its columns;
    # t050 has the contract file's columns (qty as int64).
    assert DeltaTable(str(lake / "public_t007")).metadata().partition_columns == []
    assert DeltaTable(str(lake / "public_t008")).metadata().partition_columns == ["event_date"]
    t42 = h.read_delta(str(lake / "public_t042"))
    assert sorted(set(v for v in t42.column("color").to_pylist() if v)) == ["red"]
    assert "color" not in h.read_delta(str(lake / "public_t043")).schema.names
    t050 = h.read_delta(str(lake / "public_t050")).schema
    assert t050.field("qty").type == pa.int64() and "updated_at" not in t050.names
    # Each table has its own ledger records, accounting for every row and offset.
    committed = {r["dataset"] for r in h.ledger(str(lake)) if r["kind"] == "commit"}
    assert committed == set(expected) | {"public_t099"}
    for table in ("public_t000", "public_t042", "public_t119", f"public_{empty}"):
        h.assert_ledger_complete(str(lake), table)


def test_tables_named_by_the_source_block_of_their_messages(tmp_path):
    """Topics whose names do not tell the table (routed, renamed): `{source.schema}_{source.table}` names
    each topic's table by the Debezium `source` block of its first messages. An empty topic gets its
    table once a message arrives; a topic carrying two source tables gets none (it would mix them) and
    the others go on; a restart names every table the same."""
    prefix = h.unique("routed").replace("-", "")
    topics = {t: f"{prefix}.r{i}" for i, t in enumerate(["t101", "t102", "t103"], start=1)}
    mixed = f"{prefix}.r4"
    h.create_topics({**{t: 1 for t in topics.values()}, mixed: 1, f"{prefix}.r5": 1})
    port = h.free_port()
    cfg = tmp_path / "bronze.toml"
    (tmp_path / "schemas").mkdir()
    cfg.write_text(h.fan_out_head(schema_dir=tmp_path / "schemas", group=h.unique("routed"),
                                  root=str(tmp_path / "lake"), sections=f"""
        [metrics]
        address = "127.0.0.1:{port}"

        [[datasets]]
        name = "routed"
        topic_pattern = '^{re.escape(prefix)}\\.r[0-9]+$'
        table_name = "{{source.schema}}_{{source.table}}"
        format = "debezium-json"
        contract = "derived"
        """))
    url = f"http://127.0.0.1:{port}/metrics"
    rng = random.Random(5)
    expected: dict[str, set] = {}

    def produce(table: str, n: int, first_id: int = 1, topic: str | None = None) -> None:
        produced = h.produce(table_events(table, n, rng, first_id=first_id), {table: topic or topics[table]})
        if topic is None:
            expected.setdefault(f"public_{table}", set()).update((p.topic, p.partition, p.offset) for p in produced)

    produce("t101", 40)
    produce("t102", 30)
    produce("t104", 5, topic=mixed)
    produce("t105", 5, topic=mixed)
    # Named by its bare envelopes, but with no Connect schema to derive a contract from: its table waits.
    bare = [Event(e.table, e.key, json.dumps(json.loads(e.value)["payload"]).encode(), e.op, e.row_id, e.source_ts_ms)
            for e in table_events("t106", 5, rng)]
    h.produce(bare, {"t106": f"{prefix}.r5"})
    check = h.run_bronze(cfg, "validate")
    assert "public_t106: ok, its contract cannot be derived yet" in check.stdout, check.stdout
    lake = tmp_path / "lake"

    def landed(tables) -> bool:
        return all(len(h.stored_offsets(str(lake / t))) >= len(expected[t]) for t in tables)

    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: landed(["public_t101", "public_t102"]), 60, interval=1, what="the named tables")
        assert not (lake / "public_t103").exists(), "an empty topic names no table"
        produce("t103", 20)
        h.wait_until(lambda: landed(list(expected)), 60, interval=1, what="the table named by its first message")
        assert proc.poll() is None, "bronze stopped over a topic of two source tables"
        assert h.metric(h.scrape(url), "bronze_fan_out_errors_total") >= 1
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    produce("t101", 10, first_id=41)
    run = h.run_bronze(cfg, "run", "--until-caught-up", timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    made = sorted(p.name for p in lake.iterdir() if not p.name.startswith("_"))
    assert made == ["public_t101", "public_t102", "public_t103"], made
    assert not (lake / "public_t106").exists()
    for table, offsets in expected.items():
        h.assert_exactly_once(str(lake / table), offsets)
    log = (tmp_path / "bronze.log").read_text()
    assert "carries changes of several source tables (public_t104, public_t105)" in log, log[-3000:]
