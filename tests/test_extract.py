"""Postgres extracts against a real PostgreSQL server (Debian's packages): four parallel ranges read one
exported snapshot while a writer keeps committing, and the table matches that snapshot exactly; incremental
extracts three times, with late rows inside the lookback between runs, keep the table equal to the source,
advance the watermark and double nothing."""

import json
import signal
import threading
import time

import harness as h
from harness.setups import ID_COLUMN

ACCOUNTS = ID_COLUMN + """
[[columns]]
name = "name"
type = "string"

[[columns]]
name = "balance"
type = "decimal"
precision = 18
scale = 2

[[columns]]
name = "seq"
type = "int64"

[[columns]]
name = "updated_at"
type = "timestamp"
"""


def dataset(name, schema, dsn, table, parallelism=4, split="id"):
    extract = (f'{{ dsn = "{dsn}", query = "SELECT * FROM {table}", time_column = "updated_at", '
               f'split_column = "{split}", max_parallelism = {parallelism}, lookback = "1h" }}')
    return {"name": f'"{name}"', "format": '"debezium-json"', "schema": f'"{schema}"', "key_columns": '["id"]',
            "ordering_column": '"_offset"', "partitioning": '{ by = "date", time_column = "updated_at" }',
            "extract": extract}


def test_parallel_ranges_read_one_snapshot_while_the_source_changes(tmp_path, postgres):
    postgres.sql("""
        CREATE TABLE accounts (id bigint PRIMARY KEY, name text, balance numeric(18,2), seq bigint,
                               updated_at timestamptz NOT NULL);
        INSERT INTO accounts
          SELECT i, 'name ' || i, (i % 1000) / 7.0, 0,
                 timestamptz '2025-11-01 00:00:00+00' + (i % 3) * interval '1 day' + (i % 3600) * interval '1 second'
          FROM generate_series(1, 20000) i;
    """)
    (tmp_path / "accounts.toml").write_text(ACCOUNTS)
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("extract"), root=str(root),
                         datasets=[dataset("accounts", tmp_path / "accounts.toml", postgres.dsn, "accounts")])
    # The writer: each transaction adds row 100000+k and sets the counter row's seq to k, so a consistent
    # snapshot holds rows 100001..100000+K exactly when the counter says K.
    writer = postgres.session()
    stop = threading.Event()
    written = 0

    def write():
        nonlocal written
        while not stop.is_set():
            k = written + 1
            writer.stdin.write(f"BEGIN; INSERT INTO accounts VALUES ({100000 + k}, 'late', 1, {k}, "
                               f"'2025-11-02 12:00:00+00'); UPDATE accounts SET seq = {k} WHERE id = 1; COMMIT;\n")
            writer.stdin.flush()
            written = k
            time.sleep(0.002)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        h.wait_until(lambda: int(postgres.sql("SELECT seq FROM accounts WHERE id = 1")) > 50, 30,
                     what="the writer to commit")
        out = json.loads(h.run_bronze(cfg, "extract", "--dataset", "accounts", "--full", "--json").stdout)
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=30)
        writer.stdin.close()
        writer.wait(timeout=30)
    assert out["status"] == "succeeded" and out["ranges"] == 4, out
    rows = {r["id"]: r for r in h.read_delta(str(root / "accounts")).to_pylist()}
    k = rows[1]["seq"]
    committed_after = int(postgres.sql("SELECT seq FROM accounts WHERE id = 1"))
    assert 0 < k < committed_after, f"the snapshot ({k}) should fall inside the writes (up to {committed_after})"
    late = sorted(i for i in rows if i > 100000)
    assert late == list(range(100001, 100001 + k)), "a row from after the snapshot, or one missing"
    assert len(rows) == 20000 + k == out["rows_written"]
    assert str(rows[1000]["balance"]) == "0.00" and str(rows[700]["balance"]) == "100.00"
    assert h.read_polars(str(root / "accounts")).height == 20000 + k
    history = h.delta_history(str(root / "accounts"))
    assert history[0]["bronze"]["kind"] == "extract" and history[0]["operationParameters"]["mode"] == "Overwrite"


def test_incremental_extracts_follow_the_source(tmp_path, postgres):
    postgres.sql("""
        CREATE TABLE ledger (id bigint PRIMARY KEY, name text, balance numeric(18,2), seq bigint,
                             updated_at timestamptz NOT NULL);
        INSERT INTO ledger SELECT i, 'first', i, 1, now() - (i % 50) * interval '1 second'
          FROM generate_series(1, 500) i;
    """)
    (tmp_path / "ledger.toml").write_text(ACCOUNTS)
    root = tmp_path / "lake"
    uri = str(root / "ledger")
    cfg = h.write_config(tmp_path, group=h.unique("incr"), root=str(root),
                         datasets=[dataset("ledger", tmp_path / "ledger.toml", postgres.dsn, "ledger", 3)])

    def source():
        lines = postgres.sql("SELECT id, name, balance, seq FROM ledger ORDER BY id").split()
        return sorted(tuple(line.split("|")) for line in lines)

    def table():
        rows = h.read_delta(uri).to_pylist()
        ids = [r["id"] for r in rows]
        assert len(ids) == len(set(ids)), "a row stored twice"
        return sorted((str(r["id"]), r["name"], f'{r["balance"]:.2f}', str(r["seq"])) for r in rows)

    watermarks = []
    for run in range(1, 4):
        if run > 1:
            postgres.sql(f"""
                INSERT INTO ledger SELECT i, 'new', i, {run}, now() FROM generate_series({run * 1000}, {run * 1000 + 99}) i;
                -- late rows: committed now, stamped 30 minutes ago, inside the 1h lookback
                INSERT INTO ledger SELECT i, 'late', i, {run}, now() - interval '30 minutes'
                  FROM generate_series({run * 1000 + 500}, {run * 1000 + 519}) i;
                UPDATE ledger SET name = 'updated', seq = {run}, updated_at = now() WHERE id % 10 = {run};
            """)
        out = json.loads(h.run_bronze(cfg, "extract", "--dataset", "ledger", "--json").stdout)
        assert out["status"] == "succeeded", out
        assert out["mode"] == ("full" if run == 1 else "incremental")
        watermarks.append(out["watermark_after_us"])
        assert table() == source(), f"run {run}: the table differs from the source"
    assert watermarks == sorted(watermarks) and len(set(watermarks)) == 3
    txns = [c for c in h.delta_history(uri) if c.get("bronze", {}).get("kind") == "extract"]
    assert len(txns) == 3


def test_extract_requests_on_the_control_topic(tmp_path, postgres):
    postgres.sql("""
        CREATE TABLE orders_src (id bigint PRIMARY KEY, name text, balance numeric(18,2), seq bigint,
                                 updated_at timestamptz NOT NULL);
        INSERT INTO orders_src SELECT i, 'o', i, 1, now() - i * interval '1 second' FROM generate_series(1, 300) i;
    """)
    (tmp_path / "orders.toml").write_text(ACCOUNTS)
    control, status, stream = h.unique("ext.requests"), h.unique("ext.status"), h.unique("ext.stream")
    h.create_topics({control: 1, status: 1, stream: 1})
    root = tmp_path / "lake"
    streamed = {"name": '"streamed"', "topics": f'["{stream}"]', "format": '"debezium-json"',
                "schema": f'"{tmp_path / "orders.toml"}"'}
    cfg = h.write_config(tmp_path, group=h.unique("extctl"), root=str(root),
                         extra=f'[control]\ntopic = "{control}"\nstatus_topic = "{status}"\n',
                         datasets=[streamed, dataset("orders", tmp_path / "orders.toml", postgres.dsn, "orders_src",
                                                     split="updated_at")])
    from test_control import final, post
    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        post(control, {"request_id": "ext-1", "dataset": "orders", "kind": "extract",
                       "options": {"mode": "full"}, "requested_by": "test"})
        steps = final(status, "ext-1")
        assert steps[-1]["status"] == "succeeded", steps
        assert steps[-1]["result"]["rows_written"] == 300 and steps[-1]["result"]["mode"] == "full"
        assert steps[-1]["result"]["ranges"] == 4, "split on the time column"
        postgres.sql("INSERT INTO orders_src SELECT i, 'n', i, 2, now() FROM generate_series(301, 350) i;")
        out = json.loads(h.run_bronze(cfg, "extract", "--dataset", "orders", "--submit", "--json").stdout)
        assert out["status"] == "succeeded" and out["result"]["mode"] == "incremental", out
        post(control, {"request_id": "ext-bad", "dataset": "streamed", "kind": "extract"})
        assert final(status, "ext-bad")[-1]["code"] == "source_not_configured"
    finally:
        assert h.stop(proc) == 0
    assert h.read_polars(str(root / "orders")).height == 350


def test_scheduled_incremental_extracts_and_compactions_run_once_per_slot_across_a_restart(tmp_path, postgres):
    """`[datasets.schedule]` with an incremental extract and a compaction every 3 s: the table follows
    the source through a kill -9 and a restart, and every slot that ran committed exactly once."""
    from test_control import statuses
    postgres.sql("""
        CREATE TABLE shop (id bigint PRIMARY KEY, name text, balance numeric(18,2), seq bigint,
                           updated_at timestamptz NOT NULL);
        INSERT INTO shop SELECT i, 'first', i, 1, now() - (i % 50) * interval '1 second' FROM generate_series(1, 200) i;
    """)
    (tmp_path / "shop.toml").write_text(ACCOUNTS)
    control, status, stream = h.unique("sx.requests"), h.unique("sx.status"), h.unique("sx.stream")
    h.create_topics({control: 1, status: 1, stream: 1})
    root = tmp_path / "lake"
    uri = str(root / "shop")
    streamed = {"name": '"streamed"', "topics": f'["{stream}"]', "format": '"debezium-json"',
                "schema": f'"{tmp_path / "shop.toml"}"'}
    shop = dataset("shop", tmp_path / "shop.toml", postgres.dsn, "shop", 2)
    shop["schedule"] = '{ extract = "*/3 * * * * *", compact = "1-59/3 * * * * *" }'
    cfg = h.write_config(tmp_path, group=h.unique("sx"), root=str(root),
                         extra=f'[control]\ntopic = "{control}"\nstatus_topic = "{status}"\n',
                         datasets=[streamed, shop])

    def source_ids():
        return sorted(int(i) for i in postgres.sql("SELECT id FROM shop").split())

    def table_matches():
        try:
            rows = h.read_delta(uri).column("id").to_pylist()
        except Exception:  # noqa: BLE001 - the table appears with the first extract
            return False
        assert len(rows) == len(set(rows)), "a row stored twice"
        return sorted(rows) == source_ids()

    def slots(job):
        out = {}
        for s in statuses(status):
            if s["request_id"].startswith(f"schedule:shop:{job}:"):
                out.setdefault(s["request_id"], []).append(s)
        return out

    proc = h.start_bronze(cfg, log=tmp_path / "a.log")
    try:
        h.wait_until(table_matches, 60, interval=0.5, what="the first scheduled extract")
        postgres.sql("INSERT INTO shop SELECT i, 'new', i, 2, now() FROM generate_series(1000, 1049) i;")
        h.wait_until(table_matches, 60, interval=0.5, what="an extract with the new rows")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    posted = set(slots("extract"))
    postgres.sql("""
        INSERT INTO shop SELECT i, 'while down', i, 3, now() FROM generate_series(2000, 2029) i;
        UPDATE shop SET name = 'updated', seq = 3, updated_at = now() WHERE id % 10 = 3;
    """)
    proc = h.start_bronze(cfg, log=tmp_path / "b.log")
    try:
        h.wait_until(lambda: table_matches() and len(set(slots("extract")) - posted) >= 2, 90, interval=1,
                     what="scheduled extracts after the restart")
        h.wait_until(lambda: any(s[-1]["status"] == "succeeded" for s in slots("compact").values()), 30,
                     interval=1, what="a scheduled compaction")
    finally:
        assert h.stop(proc) == 0
    rows = h.read_delta(uri).to_pylist()
    updated = {r["id"]: r["name"] for r in rows if r["id"] % 10 == 3}
    assert set(updated.values()) == {"updated"}, "the update while down arrived"
    extracts = slots("extract")
    for request_id, steps in {**extracts, **slots("compact")}.items():
        # Resumed after the kill, a slot the dead member had committed is a no-op the second time.
        assert sum(s["status"] == "succeeded" and not s.get("no_op") for s in steps) <= 1, (request_id, steps)
    # Exactly one commit per slot that extracted (a slot killed before its commit never committed).
    committed = [c["bronze"]["request_id"] for c in h.delta_history(uri) if c.get("bronze", {}).get("kind") == "extract"]
    assert len(committed) == len(set(committed)), committed
    succeeded = {i for i, s in extracts.items() if s[-1]["status"] == "succeeded" and not s[-1].get("no_op")}
    assert succeeded <= set(committed) and set(committed) <= set(extracts), (sorted(succeeded), sorted(committed))
    assert all(i.startswith("schedule:shop:extract:") for i in committed)
    print(f"{len(committed)} scheduled extracts committed, {len(slots('compact'))} compaction slots")
