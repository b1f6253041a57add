"""The Avro cell of the bench (`e2e_throughput.py --format avro`): the main cell's events again, as
Confluent-framed Debezium Avro (the envelope the AvroConverter writes with `decimal.handling.mode=precise`,
`schemas/wide_orders_envelope.avsc`, the one `stages.rs` reads too), writer schema from the test
registry (`tests/harness/registry.py`), timed the same way into a fresh table, beside the JSON figure
of the same run.
"""

from __future__ import annotations

import copy
import io
import json
import random
import struct
from decimal import Decimal
from pathlib import Path

import fastavro

import harness as h
from harness.registry import Registry

ENVELOPE = Path(__file__).resolve().parent / "schemas" / "wide_orders_envelope.avsc"
DECIMALS = ("amount", "tax", "discount")


def framed(events: list, schema_id: int) -> list:
    """Each event with its JSON envelope written as a framed Avro datum."""
    schema = fastavro.parse_schema(json.loads(ENVELOPE.read_text()))
    header = b"\0" + struct.pack(">I", schema_id)
    out = []
    for e in events:
        payload = json.loads(e.value)
        for k in DECIMALS:
            payload["after"][k] = Decimal(str(payload["after"][k])).quantize(Decimal("0.01"))
        buf = io.BytesIO()
        buf.write(header)
        fastavro.schemaless_writer(buf, schema, payload)
        a = copy.copy(e)
        a.value = buf.getvalue()
        out.append(a)
    return out


def cell(args, work: Path, n: int, event, base_ms: int, main_run, json_rate: float) -> None:
    registry = Registry(h.free_port()).start()
    try:
        schema_id = registry.store.register("bench-avro-value", ENVELOPE.read_text())
        topic = h.unique("bench.avro")
        h.create_topics({topic: args.partitions})
        rng = random.Random(42)
        payload_bytes = 0
        for start in range(0, n, 100_000):
            events = framed([event(i, rng, base_ms) for i in range(start, min(n, start + 100_000))], schema_id)
            payload_bytes += sum(len(e.value) for e in events)
            h.produce(events, {"orders": topic})
        sections = f'\n[schema_registry]\nurl = "{registry.url}"\n'
        r = main_run(args, work / "avro", topic, n, fmt="debezium-avro", sections=sections)
    finally:
        registry.stop()
    rate = n / r["ingest"]
    print(f"  Avro (debezium-avro, {payload_bytes / n:.0f} B/event, {payload_bytes / 1e6:.1f} MB)"
          f"   {rate:10.0f} events/s  {payload_bytes / 1e6 / r['ingest']:7.1f} MB/s  {n / r['cpu']:10.0f} per CPU-s"
          f"   = {rate / json_rate:.2f} x JSON of this run")
