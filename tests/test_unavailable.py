"""Debezium's placeholder for values it did not deliver (unchanged TOASTed columns of Postgres rows in
tables without `REPLICA IDENTITY FULL`): the column is null in the Bronze row and named in its
`_unavailable_columns`, never stored as if it were the value, in every form the placeholder takes
(text, base64 and hex in binary columns, an array of it); a table made before the column existed
gets it with its next commit."""

import json

import harness as h
from harness.setups import ID_COLUMN, change, one_dataset, send

CONTRACT = ID_COLUMN + """
[[columns]]
name = "name"
type = "string"

[[columns]]
name = "notes"
type = "string"

[[columns]]
name = "doc"
type = "json"

[[columns]]
name = "blob"
type = "binary"
encoding = "base64"
"""
PLACEHOLDER = "__debezium_unavailable_value"
B64 = "X19kZWJleml1bV91bmF2YWlsYWJsZV92YWx1ZQ=="


def by_offset(table):
    rows = h.read_delta(str(table)).to_pylist()
    return {r["_offset"]: r for r in rows}


def test_placeholders_become_unavailable_columns_across_flushes_and_restarts(tmp_path):
    ds = one_dataset(tmp_path, "toast", CONTRACT, flush_age="200ms")
    full = {"id": 1, "name": "Ann", "notes": "long text", "doc": {"k": 1}, "blob": "AAEC"}
    send(ds.topic, [("1", change(0, full))])
    # A table made with the placeholder handling off, as by a bronze before it existed.
    text = ds.config.read_text()
    ds.config.write_text(text.replace('format = "debezium-json"', 'format = "debezium-json"\nunavailable_value = ""'))
    h.run_bronze(ds.config, "run", "--until-caught-up")
    assert "_unavailable_columns" not in h.read_delta(str(ds.table)).schema.names
    ds.config.write_text(text)

    send(ds.topic, [
        # notes and doc unchanged (TOASTed): the placeholder, also as an array for the json column.
        ("1", change(1, {"id": 1, "name": "Ann B", "notes": PLACEHOLDER, "doc": [PLACEHOLDER], "blob": "AAEC"},
                     op="u")),
        # the binary column, in base64 (binary.handling.mode = base64)
        ("1", change(2, {"id": 1, "name": "Ann C", "notes": "new text", "doc": {"k": 2}, "blob": B64}, op="u")),
    ])
    h.run_bronze(ds.config, "run", "--until-caught-up")
    # A later flush, after a restart, with a column named only by its placeholder.
    send(ds.topic, [("1", change(3, {"id": 1, "name": "Ann D", "notes": PLACEHOLDER, "doc": {"k": 3},
                                      "blob": "AAEC", "extra": PLACEHOLDER}, op="u"))])
    h.run_bronze(ds.config, "run", "--until-caught-up")

    rows = by_offset(ds.table)
    assert [rows[o]["_unavailable_columns"] for o in range(4)] == [None, ["notes", "doc"], ["blob"], ["notes"]]
    assert (rows[0]["notes"], json.loads(rows[0]["doc"])) == ("long text", {"k": 1})
    assert (rows[1]["notes"], rows[1]["doc"], rows[1]["blob"]) == (None, None, b"\x00\x01\x02")
    assert (rows[2]["notes"], rows[2]["blob"]) == ("new text", None)
    assert rows[3]["notes"] is None and rows[3]["name"] == "Ann D"
    assert PLACEHOLDER not in json.dumps([{k: v for k, v in r.items() if isinstance(v, str)} for r in rows.values()])
    assert "extra" not in h.read_delta(str(ds.table)).schema.names
    # polars reads the list column too.
    assert h.read_polars(str(ds.table)).filter(id=1).height == 4


def test_the_latest_view_carries_the_previous_value_forward(tmp_path):
    ds = one_dataset(tmp_path, "toastlatest", CONTRACT, keys=["id"], flush_age="200ms")
    text = ds.config.read_text().replace('format = "debezium-json"',
                                         'format = "debezium-json"\nlatest = { buckets = 2, interval = "1h" }')
    ds.config.write_text(text)
    view = tmp_path / "lake" / "events_latest"

    def row(i, id_, name, notes, op="u", ts=None):
        return (str(id_), change(i if ts is None else ts, {"id": id_, "name": name, "notes": notes, "doc": None,
                                                            "blob": None}, op=op))

    def latest():
        return {r["id"]: r for r in h.read_delta(str(view)).to_pylist()}

    # Run 1, refresh 1: key 1 inserted with its notes.
    send(ds.topic, [row(0, 1, "a1", "one", op="c")])
    h.run_bronze(ds.config, "run", "--until-caught-up")
    h.run_bronze(ds.config, "latest")
    # Run 2, refresh 2: key 1 updated without its notes (the view knows them); key 2 inserted and updated
    # without them in the same refresh (an earlier change knows them); key 3 only ever updated without
    # them (nobody knows them).
    send(ds.topic, [row(1, 1, "a2", PLACEHOLDER), row(2, 2, "b1", "two", op="c"), row(3, 2, "b2", PLACEHOLDER),
                    row(4, 3, "c1", PLACEHOLDER)])
    h.run_bronze(ds.config, "run", "--until-caught-up")
    h.run_bronze(ds.config, "latest")
    got = latest()
    assert {k: (r["name"], r["notes"], r["_unavailable_columns"]) for k, r in got.items()} == {
        1: ("a2", "one", None), 2: ("b2", "two", None), 3: ("c1", None, ["notes"])}
    # Run 3, refresh 3: key 1 again without them (carried from the carried value), then with new notes for
    # key 2 in one flush and without them after it in a later one.
    send(ds.topic, [row(5, 1, "a3", PLACEHOLDER), row(6, 2, "b3", "two, new")])
    h.run_bronze(ds.config, "run", "--until-caught-up")
    send(ds.topic, [row(7, 2, "b4", PLACEHOLDER)])
    h.run_bronze(ds.config, "run", "--until-caught-up")
    h.run_bronze(ds.config, "latest")
    got = latest()
    assert {k: (r["name"], r["notes"]) for k, r in got.items()} == {
        1: ("a3", "one"), 2: ("b4", "two, new"), 3: ("c1", None)}
    # The history keeps what arrived: the placeholder rows are null and say so.
    history = sorted(h.read_delta(str(ds.table)).to_pylist(), key=lambda r: r["_offset"])
    assert [r["notes"] for r in history] == ["one", None, "two", None, None, None, "two, new", None]
    # A rebuild from the whole history (a new view) finds the same values.
    import shutil
    shutil.rmtree(view)
    h.run_bronze(ds.config, "latest")
    assert {k: (r["name"], r["notes"]) for k, r in latest().items()} == {
        1: ("a3", "one"), 2: ("b4", "two, new"), 3: ("c1", None)}
