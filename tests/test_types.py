"""Typed columns end to end: Debezium `Decimal` bytes, `VariableScaleDecimal`, numeric text with rounding,
base64 binary, and local-time text in a named zone, through a contract into a real Delta table that
pyarrow (via deltalake) and polars read back with the right types and values."""

import base64
import datetime as dt
import json
from decimal import Decimal

import pyarrow as pa

import harness as h
from harness.setups import ID_COLUMN

CONTRACT = ID_COLUMN + """
[[columns]]
name = "price"
type = "decimal"
precision = 12
scale = 2
rounding = "half_even"

[[columns]]
name = "payload"
type = "binary"

[[columns]]
name = "local_time"
type = "timestamp"
formats = ["%d.%m.%Y %H:%M:%S"]
timezone = "Europe/Berlin"
"""


def unscaled_b64(value: int) -> str:
    n = max(1, (value.bit_length() + 8) // 8)
    return base64.b64encode(value.to_bytes(n, "big", signed=True)).decode()


def message(i, price, payload, local_time):
    return json.dumps({"op": "c", "source": {"ts_ms": 1_700_000_000_000 + i, "lsn": i},
                       "after": {"id": i, "price": price, "payload": payload, "local_time": local_time}}).encode()


def test_decimals_binary_and_zoned_text_land_typed(tmp_path):
    topic = h.unique("types")
    h.create_topics({topic: 1})
    rows = [
        (1, unscaled_b64(1234), b"\x00\x01\x02", "01.07.2024 12:00:00"),      # Debezium Decimal: 12.34
        (2, unscaled_b64(-99), b"bytes", "01.01.2024 00:00:00"),             # -0.99
        (3, {"scale": 3, "value": unscaled_b64(1005)}, b"", "31.12.2023 23:59:59"),  # 1.005 -> 1.00 (half even)
        (4, "1234567890.125", b"\xff", "2024-06-01T10:00:00+02:00"),          # text -> 1234567890.12
        (5, 7.5, b"x" * 300, "27.10.2024 02:30:00"),                          # DST repeat: earlier instant
    ]
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": h.bootstrap()})
    for i, price, payload, local in rows:
        p.produce(topic, key=str(i).encode(), value=message(i, price, base64.b64encode(payload).decode(), local))
    assert p.flush(30) == 0
    (tmp_path / "types.toml").write_text(CONTRACT)
    datasets = [{"name": '"typed"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                 "schema": f'"{tmp_path / "types.toml"}"', "partitioning": '{ by = "none" }'}]
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("types"), root=str(root), datasets=datasets)
    h.run_bronze(cfg, "run", "--until-caught-up")

    table = h.read_delta(str(root / "typed")).sort_by("id")
    assert table.schema.field("price").type == pa.decimal128(12, 2)
    assert table.schema.field("payload").type == pa.binary()
    got = table.to_pylist()
    assert [r["price"] for r in got] == [Decimal("12.34"), Decimal("-0.99"), Decimal("1.00"),
                                         Decimal("1234567890.12"), Decimal("7.50")]
    assert [r["payload"] for r in got] == [r[2] for r in rows]
    berlin = dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=1))
    expected_times = [
        dt.datetime(2024, 7, 1, 12, tzinfo=berlin[0]),
        dt.datetime(2024, 1, 1, 0, tzinfo=berlin[1]),
        dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=berlin[1]),
        dt.datetime(2024, 6, 1, 10, tzinfo=berlin[0]),
        dt.datetime(2024, 10, 27, 2, 30, tzinfo=berlin[0]),  # first of the two 02:30s (CEST)
    ]
    assert [r["local_time"] for r in got] == [t.astimezone(dt.timezone.utc) for t in expected_times]
    # polars reads the same types.
    df = h.read_polars(str(root / "typed")).sort("id")
    assert str(df.schema["price"]).startswith("Decimal") and df["price"].to_list()[0] == Decimal("12.34")
    assert df["payload"].to_list()[1] == b"bytes"
