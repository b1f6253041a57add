"""Schema drift mid-stream on the real broker: a source renames a column, adds one, drops one. Each kind is
detected, counted, logged and recorded in the audit ledger; the dataset's drift policy decides what happens
to the rows (ignore: they land; quarantine: they are dead-lettered with the reason)."""

import json

from confluent_kafka import Producer

import harness as h
from harness.setups import change

CONTRACT = """
[drift]
new_column = "{new_column}"
missing_column = "ignore"

[[columns]]
name = "score"
type = "int32"
on_error = "{score_on_error}"

[[columns]]
name = "id"
type = "int64"
nullable = false

[[columns]]
name = "name"
type = "string"

[[columns]]
name = "email_address"
type = "string"
aliases = ["email"]
"""


def update(i, after):
    return change(i, after, op="u", ts_step_ms=1)


def phases():
    old = [{"id": i, "name": f"n{i}", "email": f"{i}@old", "score": i} for i in range(0, 20)]  # before a rename
    old[7]["score"] = "lots"                                                                # a bad value
    added = [{"id": i, "name": f"n{i}", "email_address": f"{i}@new", "tier": "gold", "score": 1}
             for i in range(20, 35)]
    dropped = [{"id": i, "email_address": f"{i}@new", "score": 2} for i in range(35, 50)]    # `name` dropped
    return old, added, dropped


def test_rename_add_and_drop_are_detected_and_the_policy_applies(tmp_path):
    topics = {name: h.unique(f"drift.{name}") for name in ("lenient", "strict", "rescuing")}
    h.create_topics({t: 1 for t in topics.values()})
    old, added, dropped = phases()
    p = Producer({"bootstrap.servers": h.bootstrap()})
    for topic in topics.values():
        for i, after in enumerate(old + added + dropped):
            p.produce(topic, key=str(after["id"]).encode(), value=update(i, after))
    assert p.flush(30) == 0
    datasets = []
    for name, policy, on_error in (("lenient", "ignore", "null"), ("strict", "quarantine", "dead_letter"),
                                   ("rescuing", "rescue", "rescue")):
        (tmp_path / f"{name}.toml").write_text(CONTRACT.format(new_column=policy, score_on_error=on_error))
        datasets.append({"name": f'"{name}"', "topics": f'["{topics[name]}"]', "format": '"debezium-json"',
                         "schema": f'"{tmp_path / (name + ".toml")}"', "partitioning": '{ by = "none" }'})
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("drift"), root=str(root), datasets=datasets)
    run = h.run_bronze(cfg, "run", "--until-caught-up")

    lenient = {r["id"]: r for r in h.read_delta(str(root / "lenient")).to_pylist()}
    assert len(lenient) == 50
    assert lenient[3]["email_address"] == "3@old", "the old name lands in the renamed column"
    assert lenient[25]["email_address"] == "25@new" and lenient[40]["name"] is None
    assert lenient[7]["score"] is None and lenient[8]["score"] == 8
    assert "_rescued_data" not in h.read_delta(str(root / "lenient")).schema.names
    strict = {r["id"] for r in h.read_delta(str(root / "strict")).to_pylist()}
    assert strict == set(range(50)) - set(range(20, 35)) - {7}
    dead = sorted(h.read_delta(str(root / "_dead_letters" / "strict")).to_pylist(), key=lambda d: d["offset"])
    assert [d["reason"] for d in dead] == ["type_mismatch"] + ["schema_drift"] * 15
    assert "new column `tier`" in dead[1]["error"]
    # Rescue: every row lands; what it could not place is kept as JSON, under the names as they arrived.
    rescuing = {r["id"]: r for r in h.read_delta(str(root / "rescuing")).to_pylist()}
    assert len(rescuing) == 50
    assert json.loads(rescuing[7]["_rescued_data"]) == {"score": "lots"} and rescuing[7]["score"] is None
    assert json.loads(rescuing[25]["_rescued_data"]) == {"tier": "gold"}
    assert rescuing[3]["_rescued_data"] is None and rescuing[40]["_rescued_data"] is None
    assert h.read_polars(str(root / "rescuing")).filter(
        __import__("polars").col("_rescued_data").is_not_null()).height == 16

    # One record per kind and column in the ledger, with what was expected and what arrived.
    drift = [r for r in h.ledger(str(root)) if r["kind"] == "drift"]
    seen = {(r["dataset"], json.loads(r["detail"])["kind"], json.loads(r["detail"])["column"],
             json.loads(r["detail"])["action"]) for r in drift}
    assert seen == {
        ("lenient", "renamed", "email_address", "mapped"),
        ("lenient", "new_column", "tier", "ignore"),
        ("lenient", "missing_column", "name", "ignore"),
        ("strict", "renamed", "email_address", "mapped"),
        ("strict", "new_column", "tier", "quarantine"),
        ("strict", "missing_column", "name", "ignore"),
        ("rescuing", "renamed", "email_address", "mapped"),
        ("rescuing", "new_column", "tier", "rescue"),
        ("rescuing", "missing_column", "name", "ignore"),
        # "lots" in an int column: an incompatible type, under each column's on_error.
        ("lenient", "type_change", "score", "null"),
        ("strict", "type_change", "score", "dead_letter"),
        ("rescuing", "type_change", "score", "rescue"),
    }, seen
    counts = {(r["dataset"], json.loads(r["detail"])["kind"]): r["rows_in"] for r in drift}
    assert counts[("lenient", "new_column")] == 15 and counts[("lenient", "renamed")] == 20
    assert "schema drift" in run.stderr and "column=tier" in run.stderr
    status = {d["dataset"]: d for d in map(json.loads, h.run_bronze(cfg, "status", "--json").stdout.splitlines())}
    assert status["lenient"]["drift_events_1h"] == 4 and status["strict"]["dead_letters_1h"] == 16
