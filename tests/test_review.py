"""Review gates (`drift.new_column = "review"`) on the real broker: messages with a new field are held in
the dead-letter table and the field becomes a proposal; approving it adds the column to the table in one
commit, a running member takes it on, and the held messages are replayed into it; a rejected field stays
out. produced = table rows + dead letters still held, at every step."""

import json
import time

import harness as h
from harness.setups import ID_COLUMN, change, send

CONTRACT = """
[drift]
new_column = "review"
""" + ID_COLUMN + """
[[columns]]
name = "name"
type = "string"
"""


def produce(topic, rows):
    send(topic, ((str(after["id"]), change(after["id"], after)) for after in rows))


def diff(cfg):
    return [json.loads(line) for line in h.run_bronze(cfg, "schema", "diff", "--json").stdout.splitlines()]


def test_new_columns_wait_for_approval_and_held_messages_replay_into_them(tmp_path):
    topic = h.unique("review.users")
    h.create_topics({topic: 1})
    schema = tmp_path / "users.toml"
    schema.write_text(CONTRACT)
    root = tmp_path / "lake"
    uri = str(root / "users")
    cfg = h.write_config(tmp_path, group=h.unique("review"), root=str(root), flush_age="300ms",
                         datasets=[{"name": '"users"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                                    "schema": f'"{schema}"', "key_columns": '["id"]',
                                    "partitioning": '{ by = "date" }'}])
    produce(topic, [{"id": i, "name": f"n{i}"} for i in range(10)]
            + [{"id": i, "name": f"n{i}", "tier": f"t{i}", "hue": None} for i in range(10, 20)]
            + [{"id": i, "name": f"n{i}", "score": i * 10} for i in range(20, 25)])
    h.run_bronze(cfg, "run", "--until-caught-up")

    # Held: rows with a new field are dead letters (reason schema_review); an always-null field holds nothing.
    assert sorted(r["id"] for r in h.read_delta(uri).to_pylist()) == list(range(10))
    dead = h.read_delta(str(root / "_dead_letters" / "users")).to_pylist()
    assert len(dead) == 15 and {d["reason"] for d in dead} == {"schema_review"}
    assert "awaiting review" in dead[0]["error"]
    pending = {p["column"]: p for p in diff(cfg)}
    assert set(pending) == {"tier", "score"}
    assert (pending["tier"]["proposed_type"], pending["tier"]["messages"]) == ("string", 10)
    assert pending["score"]["proposed_type"] == "int64"
    assert "tier" in h.run_bronze(cfg, "schema", "diff").stdout
    status = json.loads(h.run_bronze(cfg, "status", "--json").stdout.splitlines()[0])
    assert status["schema_proposals"] == 2 and status["dead_letters_1h"] == 15

    # Approve one (with a type of the operator's choosing), reject the other.
    out = h.run_bronze(cfg, "schema", "approve", "users", "score", "--type", "float64").stdout
    assert "added in table version" in out
    h.run_bronze(cfg, "schema", "reject", "users", "tier")
    assert diff(cfg) == []
    approvals = [c for c in h.delta_history(uri) if c.get("bronze", {}).get("kind") == "schema_approved"]
    assert len(approvals) == 1
    assert dict((f.name, str(f.type)) for f in h.read_delta(uri).schema)["score"] == "double"
    kinds = {r["kind"] for r in h.ledger(str(root)) if r["dataset"] == "users"}
    assert {"schema_approved", "schema_rejected"} <= kinds
    out = h.run_bronze(cfg, "schema", "approve", "users", "nothing", check=False)
    assert out.returncode != 0 and "no pending proposal" in out.stderr

    # The held messages of the approved column replay into it; the rejected ones stay held.
    summary = json.loads(h.run_bronze(cfg, "dlq", "replay", "--dataset", "users", "--reason", "schema_review",
                                      "--json").stdout)
    assert summary["rows_written"] == 5 and summary["still_failing"] == {"schema_review": 10}, summary
    rows = {r["id"]: r for r in h.read_delta(uri).to_pylist()}
    assert sorted(rows) == list(range(10)) + list(range(20, 25))
    assert rows[22]["score"] == 220.0 and rows[3]["score"] is None
    assert h.read_polars(uri).height == 15

    # A running member takes on a column approved while it runs: held first, landing after its next commit.
    proc = h.start_bronze(cfg, log=tmp_path / "live.log")
    try:
        produce(topic, [{"id": 100, "name": "x", "size": 1}])
        h.wait_until(lambda: any(p["column"] == "size" for p in diff(cfg)), 60, interval=1, what="a size proposal")
        h.run_bronze(cfg, "schema", "approve", "users", "size")
        next_id = 101

        def size_landed():
            nonlocal next_id
            produce(topic, [{"id": next_id, "name": "x", "size": next_id}])
            next_id += 1
            return any(r["size"] is not None for r in h.read_delta(uri).to_pylist())

        h.wait_until(size_landed, 60, interval=1, what="a row with the approved column")
        time.sleep(1)
    finally:
        assert h.stop(proc) == 0
    assert "taking on columns the table gained" in (tmp_path / "live.log").read_text()
    table = h.read_delta(uri)
    h.assert_no_duplicate_offsets(table)
    held = h.read_delta(str(root / "_dead_letters" / "users")).num_rows
    # Nothing lost, nothing doubled: every produced message is a row or a held dead letter (the replayed
    # ones count as rows; their dead letters stay as history).
    assert table.num_rows + held - 5 == 25 + (next_id - 100)
