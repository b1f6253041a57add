"""The `latest` view: a second Delta table with the newest row per key, derived from the history table by
rewriting only the hash buckets that changed. Checked against what was produced (newest change per key by
source time, then offset; deleted keys absent), read back by deltalake and polars."""

import json
import signal

import harness as h
from harness import cdc


def expected_latest(produced):
    """row id -> offset of its newest change, for keys whose newest change is not a delete."""
    newest = {}
    for p in produced:
        if p.op is None:
            continue
        if p.row_id not in newest or (p.source_ts_ms, p.offset) > (newest[p.row_id].source_ts_ms,
                                                                  newest[p.row_id].offset):
            newest[p.row_id] = p
    return {rid: p.offset for rid, p in newest.items() if p.op != "d"}


def view_state(uri):
    rows = h.read_delta(uri).to_pylist()
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), "one row per key"
    return {r["id"]: r["_offset"] for r in rows}, rows


def test_latest_view_follows_the_table_bucket_by_bucket(tmp_path):
    topic = h.unique("latest.customers")
    h.create_topics({topic: 1})
    events = [e for e in cdc.generate(3_000, seed=17).events if e.table == "customers"]
    half = len(events) // 2
    produced = h.produce(events[:half], {"customers": topic})
    port = h.free_port()
    datasets = [{"name": '"customers"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                 "schema": '"customers.toml"', "key_columns": '["id"]', "key_from_message_key": "true",
                 "partitioning": '{ by = "date" }',
                 "latest": '{ buckets = 4, interval = "1h", max_bytes = 1 }'}]
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("latest"), root=str(root), datasets=datasets,
                         flush_age="200ms", max_rows=150, extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    h.run_bronze(cfg, "run", "--until-caught-up")
    view_uri = str(root / "customers_latest")
    # Killed with the buckets written and nothing committed: the rerun does it all, the strays stay unread.
    crashed = h.run_bronze(cfg, "latest", env={"BRONZE_FAILPOINT": "latest_before_commit"}, check=False)
    assert crashed.returncode != 0 and "latest_before_commit" in crashed.stderr
    strays = h.parquet_files_on_disk(root / "customers_latest")
    assert strays and not h.referenced_files(root / "customers_latest")
    # The first refresh builds from the whole history; `max_bytes = 1` forces a pass per bucket.
    first = json.loads(h.run_bronze(cfg, "latest", "--json").stdout)
    assert first["rebuilt"] and first["passes"] == 4 and first["version"] is not None
    state, rows = view_state(view_uri)
    assert state == expected_latest(produced)
    assert {r["_bucket"] for r in rows} <= {"0", "1", "2", "3"} and len({r["_bucket"] for r in rows}) == 4
    assert json.loads(h.run_bronze(cfg, "latest", "--json").stdout)["version"] is None, "up to date: no commit"
    assert not strays & h.referenced_files(root / "customers_latest")

    # The rest streams in while `bronze run` refreshes the view in the background every second.
    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log", env={"BRONZE__DATASETS__CUSTOMERS__LATEST__INTERVAL": "1s"})
    try:
        produced += h.produce(events[half:], {"customers": topic})
        want = expected_latest(produced)
        h.wait_until(lambda: view_state(view_uri)[0] == want, 60, what="the view to catch up")
        assert h.stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "latest view refreshed" in (tmp_path / "bronze.log").read_text()
    history = [json.loads(line) for f in sorted((root / "customers_latest" / "_delta_log").glob("*.json"))
               for line in f.read_text().splitlines() if line]
    refreshes = [a["commitInfo"]["bronze"] for a in history
                 if a.get("commitInfo", {}).get("bronze", {}).get("kind") == "latest_refresh"]
    assert len(refreshes) >= 2 and not any(r["rebuilt"] for r in refreshes[1:]), "incremental after the build"
    # Another reader agrees.
    import polars as pl
    df = h.read_polars(view_uri)
    assert df.height == len(want) and df["id"].n_unique() == df.height
    assert set(df.filter(pl.col("_op") == "d")["id"].to_list()) == set()
