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
