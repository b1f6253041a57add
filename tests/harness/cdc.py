"""Realistic Debezium change events for two Postgres tables (customers, orders).

The stream is deterministic for a seed: snapshot reads first, then inserts, updates and deletes,
each delete followed by a Kafka tombstone, spread over several days of source time so the tables
get several partitions. Half of the messages use the Kafka Connect schema wrapper, half the bare
envelope, as both appear in real deployments.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

DAY_MS = 86_400_000
BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class Event:
    table: str  # "customers" | "orders"
    key: bytes
    value: bytes | None  # None = tombstone
    op: str | None
    row_id: int
    source_ts_ms: int | None


@dataclass
class Plan:
    events: list[Event] = field(default_factory=list)


def _source(table: str, ts_ms: int, lsn: int, snapshot: bool) -> dict:
    return {
        "version": "3.0.0.Final",
        "connector": "postgresql",
        "name": "shop",
        "ts_ms": ts_ms,
        "snapshot": "true" if snapshot else "false",
        "db": "shop",
        "schema": "public",
        "table": table,
        "txId": lsn // 100,
        "lsn": lsn,
        "xmin": None,
    }


def _wrap(payload: dict, wrapped: bool) -> bytes:
    if wrapped:
        return json.dumps({"schema": {"type": "struct", "optional": False, "name": "envelope"}, "payload": payload}).encode()
    return json.dumps(payload).encode()


def _key(row_id: int, wrapped: bool) -> bytes:
    payload = {"id": row_id}
    if wrapped:
        return json.dumps({"schema": {"type": "struct", "fields": [{"field": "id", "type": "int64"}]}, "payload": payload}).encode()
    return json.dumps(payload).encode()


def _customer(rng: random.Random, cid: int, ts_ms: int) -> dict:
    first = rng.choice(["Anne", "Bob", "Chen", "Dara", "Eve", "Femi", "Gus", "Hana"])
    last = rng.choice(["Kretchmar", "Walker", "Li", "Okafor", "Novak", "Silva"])
    return {
        "id": cid,
        "firstName": first,  # camelCase on purpose: bronze normalizes to first_name
        "last_name": last,
        "email": f"{first.lower()}.{cid}@example.com",
        "status": rng.choice(["active", "active", "active", "suspended"]),
        "loyalty_points": rng.randint(0, 50_000),
        "created_at": (ts_ms - rng.randint(0, 30) * DAY_MS) * 1000,
        "updated_at": ts_ms * 1000,
    }


def _order(rng: random.Random, oid: int, customers: int, ts_ms: int) -> dict:
    return {
        "id": oid,
        "customer_id": rng.randint(1, max(1, customers)),
        "amount": round(rng.uniform(1, 2_000), 2),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "status": rng.choice(["new", "paid", "shipped"]),
        "order_date": ts_ms // DAY_MS,
        "attributes": json.dumps({"channel": rng.choice(["web", "app", "store"]), "items": rng.randint(1, 9)}),
        "is_gift": rng.random() < 0.1,
        "updated_at": ts_ms,
    }


def generate(n_events: int, seed: int = 7, days: int = 3) -> Plan:
    """About `n_events` messages (tombstones included) over `days` days of source time."""
    rng = random.Random(seed)
    plan = Plan()
    lsn = 1_000_000
    live: dict[str, dict[int, dict]] = {"customers": {}, "orders": {}}
    next_id = {"customers": 1, "orders": 1}
    span_ms = days * DAY_MS
    snapshot = max(10, n_events // 20)

    def emit(table: str, op: str, before: dict | None, after: dict | None, row_id: int, ts_ms: int) -> None:
        nonlocal lsn
        lsn += rng.randint(8, 200)
        wrapped = rng.random() < 0.5
        payload = {
            "before": before,
            "after": after,
            "source": _source(table, ts_ms, lsn, op == "r"),
            "op": op,
            "ts_ms": ts_ms + 5,
            "transaction": None,
        }
        # Keys keep one format per table (as a connector does), so a row id always maps to one partition.
        key = _key(row_id, table == "customers")
        plan.events.append(Event(table, key, _wrap(payload, wrapped), op, row_id, ts_ms))

    for i in range(snapshot):
        table = "customers" if i % 2 == 0 else "orders"
        ts = BASE_TS_MS + (i * span_ms) // (n_events)
        rid = next_id[table]
        next_id[table] += 1
        row = _customer(rng, rid, ts) if table == "customers" else _order(rng, rid, next_id["customers"], ts)
        live[table][rid] = row
        emit(table, "r", None, row, rid, ts)

    while len(plan.events) < n_events:
        i = len(plan.events)
        ts = BASE_TS_MS + (i * span_ms) // n_events
        table = "customers" if rng.random() < 0.4 else "orders"
        roll = rng.random()
        ids = live[table]
        if roll < 0.45 or len(ids) < 5:
            rid = next_id[table]
            next_id[table] += 1
            row = _customer(rng, rid, ts) if table == "customers" else _order(rng, rid, next_id["customers"], ts)
            ids[rid] = row
            emit(table, "c", None, row, rid, ts)
        elif roll < 0.9:
            # Recently touched rows are updated more often, so some keys repeat within one flush.
            recent = list(ids)[-50:]
            rid = rng.choice(recent)
            before = ids[rid]
            after = dict(before)
            if table == "customers":
                after["status"] = rng.choice(["active", "suspended", "closed"])
                after["loyalty_points"] = rng.randint(0, 50_000)
                after["updated_at"] = ts * 1000
            else:
                after["status"] = rng.choice(["paid", "shipped", "delivered", "refunded"])
                after["updated_at"] = ts
            ids[rid] = after
            emit(table, "u", before, after, rid, ts)
        else:
            rid = rng.choice(list(ids))
            before = ids.pop(rid)
            # Postgres default REPLICA IDENTITY: `before` carries only the key.
            emit(table, "d", {"id": rid}, None, rid, ts)
            plan.events.append(Event(table, _key(rid, table == "customers"), None, None, rid, None))
    return plan
