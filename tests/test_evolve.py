"""Drift policy `evolve` on the real broker: new source fields become table columns in the same Delta commit
as the first rows that carry them; a restart takes the evolved columns on from the table; two members of one
group evolving the same table concurrently (and one never seeing a new field) lose and double nothing."""

import json
import time
from pathlib import Path

import harness as h
from harness.setups import ID_COLUMN, change, send

CONTRACT = """
[drift]
new_column = "evolve"
""" + ID_COLUMN + """
[[columns]]
name = "name"
type = "string"
"""


def produce(topic, rows, partition=None, start=0):
    send(topic, ((str(after["id"]), change(start + i, after), partition) for i, after in enumerate(rows)))


def log_commits(uri: str) -> list[list[dict]]:
    """Every commit of the table as its list of actions, straight from the JSON log files."""
    log = Path(uri) / "_delta_log"
    return [[json.loads(line) for line in f.read_text().splitlines() if line]
            for f in sorted(log.glob("*.json"))]


def column_types(table) -> dict[str, str]:
    """Arrow type names, whichever string layout the reader chose."""
    alias = {"large_string": "string", "string_view": "string"}
    return {f.name: alias.get(str(f.type), str(f.type)) for f in table.schema}


def dataset(name, topic, schema):
    return {"name": f'"{name}"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": f'"{schema}"',
            "key_columns": '["id"]', "partitioning": '{ by = "date" }'}


def test_new_fields_become_columns_in_the_commit_that_first_carries_them(tmp_path):
    topic = h.unique("evolve.users")
    h.create_topics({topic: 1})
    schema = tmp_path / "users.toml"
    schema.write_text(CONTRACT)
    root = tmp_path / "lake"
    uri = str(root / "users")
    cfg = h.write_config(tmp_path, group=h.unique("evolve"), root=str(root),
                         datasets=[dataset("users", topic, schema)], max_rows=10)
    before = [{"id": i, "name": f"n{i}"} for i in range(20)]
    after = [{"id": i, "name": f"n{i}", "tier": "gold", "loyaltyPoints": 10 * i, "prefs": {"mail": i % 2 == 0},
              "ratio": i / 4 + 0.5, "vip": i % 3 == 0, "late": None if i < 30 else f"l{i}"}
             for i in range(20, 40)]
    produce(topic, before + after)
    run = h.run_bronze(cfg, "run", "--until-caught-up")

    table = h.read_delta(uri)
    types = column_types(table)
    assert types["tier"] == "string" and types["loyalty_points"] == "int64" and types["ratio"] == "double"
    assert types["vip"] == "bool" and types["prefs"] == "string" and types["late"] == "string"
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == 40
    assert rows[5]["tier"] is None and rows[5]["loyalty_points"] is None
    assert rows[25]["tier"] == "gold" and rows[25]["loyalty_points"] == 250 and rows[25]["ratio"] == 25 / 4 + 0.5
    assert json.loads(rows[26]["prefs"]) == {"mail": True} and rows[27]["vip"] is True
    assert rows[29]["late"] is None and rows[31]["late"] == "l31", "a column typed by its first non-null value"
    assert h.read_polars(uri).height == 40

    # The schema grows only in commits that also add rows and move offsets: never a commit of its own.
    evolving = [c for c in log_commits(uri)[1:] if any("metaData" in a for a in c)]
    assert 1 <= len(evolving) <= 2, "tier..vip arrive together; `late` gets its first value later"
    for c in evolving:
        assert any("add" in a for a in c) and any("txn" in a for a in c)
    added = [f["name"] for c in evolving for a in c if "metaData" in a
             for f in json.loads(a["metaData"]["schemaString"])["fields"]]
    assert "tier" in added and "late" in added
    drift = {json.loads(r["detail"])["column"]: json.loads(r["detail"]) for r in h.ledger(str(root))
             if r["kind"] == "drift"}
    assert drift["loyalty_points"]["action"] == "evolve" and drift["loyalty_points"]["observed"] == "int64"
    assert "the commit adds columns to the table schema" in run.stderr

    # A restart takes the evolved columns on from the table: their fields land there, typed as before,
    # and yet another new field evolves the table again.
    more = [{"id": i, "name": f"n{i}", "tier": "silver", "loyaltyPoints": i, "region": "eu"} for i in range(40, 50)]
    produce(topic, more, start=40)
    run = h.run_bronze(cfg, "run", "--until-caught-up")
    assert "table has evolved columns beyond the contract" in run.stderr
    table = h.read_delta(uri)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == 50 and rows[45]["loyalty_points"] == 45 and rows[45]["region"] == "eu"
    assert column_types(table)["loyalty_points"] == "int64"
    h.assert_no_duplicate_offsets(table)

    # A contract that does not evolve refuses the evolved table rather than dropping its columns.
    schema.write_text(CONTRACT.replace('new_column = "evolve"', 'new_column = "ignore"'))
    out = h.run_bronze(cfg, "validate", check=False)
    assert out.returncode != 0 and "evolved columns" in out.stdout + out.stderr, out.stdout + out.stderr


def test_two_members_evolving_one_table_lose_and_double_nothing(tmp_path):
    topic = h.unique("evolve.shared")
    h.create_topics({topic: 2})
    schema = tmp_path / "shared.toml"
    schema.write_text(CONTRACT)
    root = tmp_path / "lake"
    uri = str(root / "shared")
    cfg = h.write_config(tmp_path, group=h.unique("evolve2"), root=str(root),
                         datasets=[dataset("shared", topic, schema)], flush_age="300ms", max_rows=15)
    a = h.start_bronze(cfg, log=tmp_path / "a.log")
    b = h.start_bronze(cfg, log=tmp_path / "b.log")
    try:
        # Both members own a partition before any new field shows up: warm-up rows go to both partitions
        # until each member has committed some.
        warm = 0

        def both_committing():
            nonlocal warm
            for partition in (0, 1):
                produce(topic, [{"id": 10_000 + warm, "name": "warm"}], partition=partition, start=warm)
                warm += 1
            if not (root / "shared" / "_delta_log").exists():
                return False
            return len({c["bronze"]["run_id"] for c in h.delta_history(uri) if c.get("bronze")}) == 2

        h.wait_until(both_committing, 120, interval=1, what="both members committing")
        # Both partitions carry `tier` (both members evolve it at about the same time); only partition 0
        # carries `channel`, so the other member keeps writing files without it after the table has it.
        for round_ in range(6):
            base = 100 + round_ * 100
            produce(topic, [{"id": base + i, "name": "x", "tier": "t", "channel": "web"} for i in range(40)],
                    partition=0, start=base)
            produce(topic, [{"id": base + 50 + i, "name": "y", "tier": "u"} for i in range(40)],
                    partition=1, start=base + 50)
            time.sleep(0.2)
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= warm + 480, 120, what="all rows committed")
    finally:
        assert h.stop(a) == 0
        assert h.stop(b) == 0
    table = h.read_delta(uri)
    h.assert_no_duplicate_offsets(table)
    rows = table.to_pylist()
    assert len(rows) == warm + 480
    assert all(r["tier"] == ("t" if r["name"] == "x" else "u") for r in rows if r["name"] != "warm")
    assert all((r["channel"] == "web") == (r["name"] == "x") for r in rows)
    names = [f.name for f in table.schema]
    assert names.count("tier") == 1 and names.count("channel") == 1
    runs = {c["bronze"]["run_id"] for c in h.delta_history(uri) if c.get("bronze")}
    assert len(runs) == 2
    assert h.read_polars(uri).height == warm + 480


def test_a_burst_mapped_on_two_threads_evolves_and_counts_exactly_once(tmp_path):
    """3,000 messages on 4 partitions waiting at start are decoded, mapped and buffered on two lanes (two
    partitions each). Columns evolve in the middle of such turns (`tier` at 1,000, `score` at 2,000): a lane
    leaves the rest of that partition to the loop, which evolves the table. 30 values break their column:
    every row lands once, in the columns of its time, and every drift and error is counted once — never
    again for a message a lane mapped, left and the loop mapped again after the contract changed."""
    topic = h.unique("evolve.burst")
    h.create_topics({topic: 4})
    schema = tmp_path / "burst.toml"
    schema.write_text(CONTRACT + '\n[[columns]]\nname = "qty"\ntype = "int32"\n')
    root = tmp_path / "lake"
    uri = str(root / "burst")
    port = h.free_port()
    cfg = h.write_config(tmp_path, group=h.unique("burst"), root=str(root),
                         datasets=[dataset("burst", topic, schema)],
                         extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n[pipeline]\ndecode_threads = 2\n')
    rows = []
    for i in range(3000):
        after = {"id": i, "name": f"n{i}", "qty": "x" if i % 100 == 37 else i % 50}
        if i >= 1000:
            after["tier"] = f"t{i % 3}"
        if i >= 2000:
            after["score"] = i
        rows.append(after)
    produce(topic, rows)
    bad = {i for i in range(3000) if i % 100 == 37}
    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_rows_written_total", dataset="burst") == 3000 - len(bad),
                     90, what="every good row committed")
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_dead_letters_total", dataset="burst") == len(bad),
                     30, what="every bad message dead-lettered")
        time.sleep(0.5)  # drift is reported on the loop's 100 ms tick
        text = h.scrape(url)
    finally:
        assert h.stop(proc) == 0
    # The first polls hold both evolutions, in the middle of their partitions' messages.
    assert h.metric(text, "bronze_lane_messages_total", dataset="burst") > 0, "nothing went through the lanes"
    assert h.metric(text, "bronze_lane_handed_back_total", dataset="burst") > 0, "no evolution inside a turn"
    assert h.metric(text, "bronze_coercion_errors_total", dataset="burst", column="qty") == len(bad)
    assert h.metric(text, "bronze_schema_drift_messages_total", dataset="burst", kind="type_change") == len(bad)
    assert h.metric(text, "bronze_schema_drift_messages_total", dataset="burst", kind="new_column") == 2
    assert h.metric(text, "bronze_unknown_fields_total", dataset="burst") == 2, "one unknown field per evolution"

    table = h.read_delta(uri)
    h.assert_no_duplicate_offsets(table)
    got = {r["id"]: r for r in table.to_pylist()}
    assert set(got) == set(range(3000)) - bad
    for i, r in got.items():
        assert r["qty"] == i % 50 and r["name"] == f"n{i}"
        assert r["tier"] == (f"t{i % 3}" if i >= 1000 else None), i
        assert r["score"] == (i if i >= 2000 else None), i
