"""Catalog registration (`[catalog]`, AWS Glue, against moto's Glue): every table of a fan-out on S3 is
registered as a native Delta table with its columns, partition columns and location, and follows its
schema as it evolves. A catalog that is down loses nothing: commits go on, the failures are counted and
shown by `bronze status`, and the entries are registered again once it is back. `bronze catalog sync`
is idempotent."""

import json

import harness as h
from harness import glue as g
from conftest import BUCKET
from test_fan_out import add_offsets, produce_tables
from harness.moto import s3_storage_block

DATABASE = "bronze_test"


def catalog_config(tmp_path, s3: str, glue_port: int, prefix: str, root: str) -> tuple:
    port = h.free_port()
    text = h.fan_out_head(schema_dir=tmp_path, group=h.unique("catalog"), root=root, storage=s3_storage_block(s3),
                          flush_age="500ms", sections=f"""
        [catalog]
        kind = "glue"
        database = "{DATABASE}"
        endpoint = "http://127.0.0.1:{glue_port}"
        interval = "1s"

        [metrics]
        address = "127.0.0.1:{port}"

        [[datasets]]
        name = "shop"
        topic_pattern = '^{prefix}\\.public\\.(?P<table>t[0-9]+)$'
        table_name = "{{table}}"
        format = "debezium-json"
        contract = "derived"
        drift = {{ new_column = "evolve" }}

        [datasets.tables.t002]
        partitioning = {{ by = "none" }}
        """)
    cfg = tmp_path / "bronze.toml"
    cfg.write_text(text)
    return cfg, f"http://127.0.0.1:{port}/metrics"


def test_tables_are_registered_in_glue_and_follow_their_schema_through_an_outage(tmp_path, s3):
    prefix = h.unique("cat").replace("-", "")
    tables = ["t000", "t001", "t002"]
    h.create_topics({f"{prefix}.public.{t}": 1 for t in tables})
    expected: dict[str, set] = {}
    add_offsets(expected, produce_tables(prefix, tables, 20, seed=1))
    root = f"s3://{BUCKET}/{h.unique('catalog')}"
    glue_port = h.free_port()
    glue = g.start(glue_port, tmp_path / "glue.log")
    cfg, url = catalog_config(tmp_path, s3, glue_port, prefix, root)
    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: set(g.tables(glue_port, DATABASE) or {}) == set(tables), 90, what="three tables in Glue")
        registered = g.tables(glue_port, DATABASE)
        t0 = registered["t000"]
        assert t0["TableType"] == "EXTERNAL_TABLE"
        assert t0["Parameters"]["table_type"] == "DELTA"
        assert t0["Parameters"]["spark.sql.sources.provider"] == "delta"
        assert t0["StorageDescriptor"]["Location"] == f"{root}/t000"
        assert t0["StorageDescriptor"]["SerdeInfo"]["Parameters"]["path"] == f"{root}/t000"
        cols = g.columns(t0)
        assert cols["id"] == "bigint" and cols["qty"] == "int" and cols["updated_at"] == "timestamp"
        assert cols["day"] == "date" and cols["note"] == "string" and cols["_offset"] == "bigint"
        assert [k["Name"] for k in t0["PartitionKeys"]] == ["event_date"]
        assert "event_date" not in cols
        assert registered["t002"]["PartitionKeys"] == []
        assert "note" not in g.columns(registered["t001"])

        # A column added at the source: the table evolves, and its entry follows.
        add_offsets(expected, produce_tables(prefix, ["t001"], 5, seed=2, first_id=1000, altered=True))
        h.wait_until(lambda: "color" in g.columns((g.tables(glue_port, DATABASE) or {}).get("t001")), 60,
                     what="t001's new column in Glue")
        assert g.columns(g.tables(glue_port, DATABASE)["t001"])["color"] == "string"

        # Glue down: commits go on, the failures are counted and shown.
        glue.terminate()
        glue.wait(timeout=30)
        add_offsets(expected, produce_tables(prefix, ["t000"], 5, seed=3, first_id=2000))
        h.wait_until(lambda: len(h.stored_offsets(f"{root}/t000")) >= len(expected["public_t000"]), 60,
                     what="t000's rows committed while Glue is down")
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_catalog_errors_total") > 0, 60,
                     what="catalog errors counted")
        status = [json.loads(l) for l in h.run_bronze(cfg, "status", "--json", timeout=120).stdout.splitlines()]
        assert all(s["catalog"].startswith("error") for s in status), status

        # Back (empty, as a fresh moto is): the run registers every table again.
        glue = g.start(glue_port, tmp_path / "glue.log")
        h.wait_until(lambda: set(g.tables(glue_port, DATABASE) or {}) == set(tables), 60, what="tables registered again")
        assert "color" in g.columns(g.tables(glue_port, DATABASE)["t001"])
        status = [json.loads(l) for l in h.run_bronze(cfg, "status", "--json", timeout=120).stdout.splitlines()]
        assert {s["dataset"]: s["catalog"] for s in status} == {t: "in sync" for t in tables}
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        for t in tables:
            h.assert_exactly_once(f"{root}/{t}", expected[f"public_{t}"])
        # `bronze catalog sync` is idempotent, and puts back an entry someone dropped.
        sync = lambda: {r["dataset"]: (r["status"], r["table"])  # noqa: E731
                        for r in map(json.loads, h.run_bronze(cfg, "catalog", "sync", "--json").stdout.splitlines())}
        assert sync() == {t: ("unchanged", f"{DATABASE}.{t}") for t in tables}
        g.client(glue_port).delete_table(DatabaseName=DATABASE, Name="t002")
        assert {d: st for d, (st, _) in sync().items()} == {"t000": "unchanged", "t001": "unchanged",
                                                             "t002": "created"}
    finally:
        glue.terminate()
