"""Confluent-framed Avro (`debezium-avro`) on the real broker, writer schemas from a schema registry.

The messages are produced with Confluent's own Python serializer (`confluent_kafka.schema_registry.avro`),
which registers the schemas and frames the values; the registry is the Confluent-API test server of
harness/registry.py (see why there). The envelope and key schemas, and the first records, are the shared
Debezium Avro fixtures (`../shared/fixtures/debezium/avro`)."""

import copy
import io
import json
import signal
import struct
import time
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import harness as h
from harness import cdc
from harness.registry import Registry

FIXTURES = h.REPO.parent / "shared" / "fixtures" / "debezium" / "avro"
ENVELOPE = json.loads((FIXTURES / "debezium-postgres-orders-envelope.avsc").read_text())
KEY = json.loads((FIXTURES / "debezium-postgres-orders-key.avsc").read_text())
AUTH = "bronze:s3cret"

CONTRACT = """
[drift]
new_column = "evolve"

[[columns]]
name = "order_id"
type = "int32"
nullable = false

# io.debezium.time.Timestamp: milliseconds since the epoch, a plain Avro long.
[[columns]]
name = "order_date"
type = "timestamp"
unit = "ms"

[[columns]]
name = "customer_name"
type = "string"
aliases = ["client_name"]

# io.debezium.data.VariableScaleDecimal: an Avro record {scale, value}.
[[columns]]
name = "price"
type = "decimal"
precision = 12
scale = 3

[[columns]]
name = "product_id"
type = "int32"

[[columns]]
name = "order_status"
type = "int32"
"""


@pytest.fixture()
def registry():
    r = Registry(h.free_port(), auth=AUTH).start()
    yield r
    r.stop()


def client(registry):
    return SchemaRegistryClient({"url": registry.url, "basic.auth.user.info": AUTH})


def fixture_records():
    """The fixture's (key, value) records, read from Avro's JSON encoding into Python values."""
    raw = json.loads((FIXTURES / "debezium-postgres-orders-records-avro-json-encoding.json").read_text())
    env, key = fastavro.parse_schema(copy.deepcopy(ENVELOPE)), fastavro.parse_schema(copy.deepcopy(KEY))

    def decode(value, schema):
        return next(fastavro.json_reader(io.StringIO(json.dumps(value)), schema))

    return [(decode(r["key"], key), None if r["value"] is None else decode(r["value"], env)) for r in raw]


def envelope_with(change):
    """The fixture envelope schema with its row record (`Value`) changed by `change(fields)`."""
    schema = copy.deepcopy(ENVELOPE)
    value = schema["fields"][0]["type"][1]
    assert value["name"] == "Value"
    change(value["fields"])
    return schema


class AvroProducer:
    """Frames values with Confluent's serializer (registering the schema under `<topic>-value`)."""

    def __init__(self, registry, topic):
        self.topic = topic
        self.client = client(registry)
        self.producer = Producer({"bootstrap.servers": h.bootstrap()})
        self.keys = AvroSerializer(self.client, json.dumps(KEY))
        self.produced = []  # (expected outcome, partition, offset)

    def serializer(self, schema):
        return AvroSerializer(self.client, json.dumps(schema))

    def frame(self, serializer, value):
        return serializer(value, SerializationContext(self.topic, MessageField.VALUE))

    def key(self, order_id):
        return self.keys({"order_id": order_id}, SerializationContext(self.topic, MessageField.KEY))

    def send(self, outcome, key, value):
        def cb(err, msg):
            assert err is None, err
            self.produced.append((outcome, msg.partition(), msg.offset()))
        self.producer.produce(self.topic, key=key, value=value, on_delivery=cb)
        self.producer.poll(0)

    def flush(self):
        assert self.producer.flush(30) == 0


def row(i, name="n", price=None, **extra):
    """A `Value` record; `price` as (unscaled, scale) of a VariableScaleDecimal."""
    r = {"order_id": i, "order_date": 1_767_225_600_000 + i * 1000, "customer_name": f"{name}{i}",
         "price": None if price is None else {"scale": price[1], "value": price[0].to_bytes(8, "big", signed=True)},
         "product_id": i % 7, "order_status": 1}
    r.update(extra)
    return r


def change(after, i):
    return {"before": None, "after": after, "op": "c", "ts_ms": None, "transaction": None,
            "source": {"version": "2.7.0.Final", "connector": "postgresql", "name": "pg", "ts_ms": 1_767_225_600_000 + i,
                       "snapshot": "false", "db": "shop", "sequence": None, "schema": "public", "table": "orders",
                       "txId": None, "lsn": 1000 + i, "xmin": None}}


def config(tmp_path, name, registry, topic, extra_datasets=(), extra=""):
    contract = tmp_path / "orders_avro.toml"
    contract.write_text(CONTRACT)
    user, password = AUTH.split(":")
    datasets = [{"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-avro"',
                 "schema": f'"{contract}"', "key_columns": '["order_id"]', "key_from_message_key": "true",
                 "ordering_column": '"_offset"', "partitioning": '{ by = "date" }'}, *extra_datasets]
    registry_section = f"""
[schema_registry]
url = "{registry.url}"
username = "{user}"
password = "${{env:TEST_REGISTRY_PASSWORD}}"
max_backoff = "2s"
"""
    cfg = h.write_config(tmp_path, group=h.unique(name), root=str(tmp_path / "lake"), datasets=datasets,
                         flush_age="300ms", extra=registry_section + extra)
    return cfg, {"TEST_REGISTRY_PASSWORD": password}


def dataset_summary(stdout, name):
    """The run summary's counters of one dataset."""
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            keys = ["events", "rows", "skipped", "duplicates", "dead", "errors", "files", "bytes"]
            return dict(zip(keys, map(int, parts[1:9])))
    raise AssertionError(f"no summary line for {name} in:\n{stdout}")


def test_debezium_avro_fixtures_land_with_keys_from_the_avro_key(tmp_path, registry):
    topic = h.unique("avro.fixtures")
    h.create_topics({topic: 1})
    p = AvroProducer(registry, topic)
    envelope = p.serializer(ENVELOPE)
    for key, value in fixture_records():
        p.send("row" if value else "tombstone", p.key(key["order_id"]),
               None if value is None else p.frame(envelope, value))
    # A delete without `before` (REPLICA IDENTITY NOTHING): its key columns come from the Avro key.
    p.send("row", p.key(3), p.frame(envelope, {**change(None, 9), "op": "d"}))
    p.flush()
    cfg, env = config(tmp_path, "avro-fixtures", registry, topic)
    run = h.run_bronze(cfg, "run", "--until-caught-up", env=env)
    s = dataset_summary(run.stdout, "orders")
    table = h.read_delta(str(tmp_path / "lake" / "orders")).sort_by("_offset").to_pylist()
    # In-batch dedup keeps the latest change per key (ordering `_offset`): counted, not lost.
    assert s["events"] == 7 and s["skipped"] == 1 and s["dead"] == 0
    assert len(table) + s["duplicates"] == 6
    latest = {r["order_id"]: r for r in table}
    assert latest[3]["_op"] == "d" and latest[3]["_offset"] == 6
    assert latest[2]["customer_name"] == "Alice" and latest[2]["_op"] == "r"
    assert str(latest[2]["order_date"]).startswith("2019-05-21")
    assert latest[2]["_source_pos"] == "23911624"
    # Writer schemas are fetched once per id, with basic auth.
    ids = {i for i in registry.store.by_id}
    assert ids and all(registry.lookups(i) <= 1 for i in ids)
    # A backfill replays the Avro messages through the registry too (its own process, its own cache).
    day = [r for r in table if str(r["event_date"]) == "2023-06-05"]
    out = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "orders", "--from", "2023-06-05",
                                  "--to", "2023-06-06", "--json", env=env).stdout)
    assert out["status"] == "succeeded" and not out["still_failing"], out
    assert out["messages_read"] == 7
    after = h.read_delta(str(tmp_path / "lake" / "orders")).to_pylist()
    after_day = [r for r in after if str(r["event_date"]) == "2023-06-05"]
    # The replay dedups among the day's rows only (streaming dropped the snapshot rows of keys changed later
    # in the same flush, in other partitions), so the day may gain rows; it never loses one.
    assert out["rows_written"] == len(after_day) and {r["order_id"] for r in day} <= {r["order_id"] for r in after_day}
    assert {r["_offset"] for r in after_day} <= {0, 1, 2, 3, 4}
    h.assert_no_duplicate_offsets(h.read_delta(str(tmp_path / "lake" / "orders")))


def test_avro_corpus_and_schema_changes_mid_stream(tmp_path, registry):
    """Bad Avro mixed into good traffic, and the writer schema changing mid-stream: every message ends
    up in the table or the dead-letter table with its reason, exactly once; the JSON dataset in the same
    process is untouched."""
    topic, customers_topic = h.unique("avro.corpus"), h.unique("avro.customers")
    h.create_topics({topic: 1, customers_topic: 1})
    plan = cdc.generate(600, seed=5)
    customers = h.produce([e for e in plan.events if e.table == "customers"], {"customers": customers_topic})
    p = AvroProducer(registry, topic)
    v1 = p.serializer(ENVELOPE)
    added = p.serializer(envelope_with(lambda f: f.append({"name": "discount", "type": ["null", "double"],
                                                          "default": None})))
    widened = p.serializer(envelope_with(lambda f: f[4].update(type=["null", "long"])))
    incompatible = p.serializer(envelope_with(lambda f: f[5].update(type=["null", "string"])))
    renamed = p.serializer(envelope_with(lambda f: f[2].update(name="client_name")))
    good = p.frame(v1, change(row(1), 1))
    cases = [
        ("unknown_schema_id", b"\x00" + struct.pack(">I", 987_654) + good[5:]),
        ("invalid_avro", good[: len(good) // 2]),                                  # truncated datum
        ("invalid_avro", b"\x00\x00\x01"),                                          # header cut short
        ("bad_magic_byte", b"\x01" + good[1:]),                                     # wrong magic byte
        ("bad_magic_byte", json.dumps(change(row(2), 2)).encode()),                # JSON on an Avro topic
        ("type_mismatch", p.frame(v1, change(row(3, price=(10**15, 2)), 3))),      # decimal overflow
        ("type_mismatch", p.frame(widened, change(row(4, product_id=2**40), 4))),  # widened, out of range
        ("type_mismatch", p.frame(incompatible, change(row(5, order_status="shipped"), 5))),
        ("row", p.frame(widened, change(row(6, product_id=6), 6))),               # widened, fits
        ("row", p.frame(added, change(row(7, discount=0.25), 7))),                # new column: evolve
        ("row", p.frame(renamed, change({**{k: v for k, v in row(8).items() if k != "customer_name"},
                                         "client_name": "renamed8"}, 8))),        # rename via alias
    ]
    step = 40
    for i in range(10, 10 + step * (len(cases) + 1)):
        p.send("row", p.key(i), p.frame(v1, change(row(i, price=(i * 1001, 3)), i)))
        if i % step == 0 and cases:
            outcome, value = cases.pop(0)
            p.send(outcome, p.key(i + 100_000), value)
    assert not cases
    p.flush()
    customers_ds = {"name": '"customers"', "topics": f'["{customers_topic}"]', "format": '"debezium-json"',
                    "schema": '"customers.toml"', "partitioning": '{ by = "date" }'}
    cfg, env = config(tmp_path, "avro-corpus", registry, topic, extra_datasets=[customers_ds])
    run = h.run_bronze(cfg, "run", "--until-caught-up", env=env)

    lake = tmp_path / "lake"
    table = h.read_delta(str(lake / "orders"))
    letters = h.read_delta(str(lake / "_dead_letters" / "orders")).to_pylist()
    stored = {(r["_partition"], r["_offset"]) for r in table.select(["_partition", "_offset"]).to_pylist()}
    dead = {(d["partition"], d["offset"]): d for d in letters}
    expected_rows = {(part, off) for outcome, part, off in p.produced if outcome == "row"}
    expected_dead = {(part, off): outcome for outcome, part, off in p.produced if outcome != "row"}
    s = dataset_summary(run.stdout, "orders")
    # produced = table rows + dead letters + counted drops (in-batch duplicates; the keys are unique here).
    assert s["duplicates"] == 0
    assert stored == expected_rows, (len(stored), len(expected_rows))
    assert set(dead) == set(expected_dead) and not stored & set(dead)
    assert {k: d["reason"] for k, d in dead.items()} == expected_dead
    h.assert_no_duplicate_offsets(table)
    rows = {r["order_id"]: r for r in table.to_pylist()}
    assert rows[7]["discount"] == 0.25 and rows[8]["customer_name"] == "renamed8" and rows[6]["product_id"] == 6
    assert rows[11]["price"] is not None and str(rows[11]["price"]) == "11.011"
    unknown = next(d for d in letters if d["reason"] == "unknown_schema_id")
    assert "987654" in unknown["error"] and unknown["value"] == b"\x00" + struct.pack(">I", 987_654) + good[5:]
    mismatches = [d["error"] for d in letters if d["reason"] == "type_mismatch"]
    assert any("out of range for int32" in e for e in mismatches), mismatches
    assert any("found string" in e and "shipped" in e for e in mismatches), mismatches
    assert len(h.read_delta(str(lake / "customers"))) == len(h.data_offsets(customers))


def test_registry_outage_delays_avro_partitions_and_loses_nothing(tmp_path, registry):
    """The registry is down for 20 s while messages with a schema bronze has not seen arrive: their
    partition waits (metric, log line), the JSON dataset keeps committing, and when the registry is back
    every message lands exactly once, none dead-lettered."""
    topic, customers_topic = h.unique("avro.outage"), h.unique("avro.outage.customers")
    h.create_topics({topic: 2, customers_topic: 1})
    p = AvroProducer(registry, topic)
    v1 = p.serializer(ENVELOPE)
    v2 = p.serializer(envelope_with(lambda f: f.append({"name": "discount", "type": ["null", "double"],
                                                       "default": None})))
    for i in range(1, 101):
        p.send("row", p.key(i), p.frame(v1, change(row(i), i)))
    # Registered now, first used while the registry is down.
    v2_messages = [(p.key(i), p.frame(v2, change(row(i, discount=i / 10), i))) for i in range(101, 201)]
    p.flush()
    port = h.free_port()
    customers_ds = {"name": '"customers"', "topics": f'["{customers_topic}"]', "format": '"debezium-json"',
                    "schema": '"customers.toml"', "partitioning": '{ by = "date" }'}
    cfg, env = config(tmp_path, "avro-outage", registry, topic, extra_datasets=[customers_ds],
                      extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    # `bronze validate` compares the contract with the latest value schema of the subject.
    validate = h.run_bronze(cfg, "validate", env=env).stdout
    assert f"registry subject {topic}-value version 2" in validate, validate
    assert "not in the contract: discount double?; contract columns it lacks: none" in validate, validate
    lake = tmp_path / "lake"
    log = tmp_path / "bronze.log"
    proc = h.start_bronze(cfg, env=env, log=log)
    try:
        h.wait_until(lambda: len(h.stored_offsets(str(lake / "orders"))) == 100, 60, what="v1 rows")
        registry.stop()
        outage = time.time()
        for key, value in v2_messages:
            p.send("row", key, value)
        p.flush()
        plan = cdc.generate(400, seed=9)
        customers = h.produce([e for e in plan.events if e.table == "customers"], {"customers": customers_topic})
        # The JSON dataset goes on while the Avro partitions wait.
        h.wait_until(lambda: len(h.stored_offsets(str(lake / "customers"))) == len(h.data_offsets(customers)), 30,
                     what="customers during the outage")
        h.wait_until(lambda: h.metric(h.scrape(f"http://127.0.0.1:{port}/metrics"),
                                      "bronze_registry_waits_total", dataset="orders") >= 2, 20,
                     what="registry waits")
        assert len(h.stored_offsets(str(lake / "orders"))) == 100
        time.sleep(max(0.0, 20 - (time.time() - outage)))
        registry.start()
        h.wait_until(lambda: len(h.stored_offsets(str(lake / "orders"))) == 200, 60, what="v2 rows after the outage")
        assert h.stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        registry.stop()
    table = h.read_delta(str(lake / "orders"))
    h.assert_no_duplicate_offsets(table)
    assert sorted(table.column("order_id").to_pylist()) == list(range(1, 201))
    assert sorted(x for x in table.column("discount").to_pylist() if x is not None) == [i / 10 for i in range(101, 201)]
    from deltalake.exceptions import TableNotFoundError
    try:
        assert len(h.read_delta(str(lake / "_dead_letters" / "orders"))) == 0
    except TableNotFoundError:
        pass
    assert "writer schema unavailable; partition waits at this message" in Path(log).read_text()


def test_type_widening_evolves_the_table_column(tmp_path, registry):
    """The source widens `product_id` from int to bigint (Avro int -> long). Under `type_widening =
    "evolve"` the table column becomes int64 in one commit that rewrites the files (dataChange false),
    before the first rows that need it; values beyond int32 land; readers see one int64 column."""
    topic = h.unique("avro.widen")
    h.create_topics({topic: 1})
    p = AvroProducer(registry, topic)
    v1 = p.serializer(ENVELOPE)
    wide = p.serializer(envelope_with(lambda f: f[4].update(type=["null", "long"])))
    for i in range(1, 51):
        p.send("row", p.key(i), p.frame(v1, change(row(i), i)))
    p.flush()
    cfg, env = config(tmp_path, "avro-widen", registry, topic)
    contract = tmp_path / "orders_avro.toml"
    contract.write_text(CONTRACT.replace('new_column = "evolve"', 'new_column = "evolve"\ntype_widening = "evolve"'))
    h.run_bronze(cfg, "run", "--until-caught-up", env=env)
    uri = str(tmp_path / "lake" / "orders")
    assert str(h.read_delta(uri).schema.field("product_id").type) == "int32"
    files_before = len(h.referenced_files(Path(uri)))
    for i in range(51, 101):
        p.send("row", p.key(i), p.frame(wide, change(row(i, product_id=i * 100_000_000), i)))
    p.flush()
    run = h.run_bronze(cfg, "run", "--until-caught-up", env=env)
    assert "table column widened" in run.stderr
    table = h.read_delta(uri)
    assert str(table.schema.field("product_id").type) == "int64"
    h.assert_no_duplicate_offsets(table)
    got = dict(zip(table.column("order_id").to_pylist(), table.column("product_id").to_pylist()))
    assert got == {i: (i % 7 if i <= 50 else i * 100_000_000) for i in range(1, 101)}
    assert h.read_polars(uri)["product_id"].dtype.__class__.__name__ == "Int64"
    log = Path(uri) / "_delta_log"
    commits = [[json.loads(line) for line in f.read_text().splitlines() if line] for f in sorted(log.glob("*.json"))]
    widen = [c for c in commits if any(a.get("commitInfo", {}).get("bronze", {}).get("kind") == "widen_column"
                                       for a in c)]
    assert len(widen) == 1
    actions = widen[0]
    assert any("metaData" in a for a in actions)
    removes = [a["remove"] for a in actions if "remove" in a]
    adds = [a["add"] for a in actions if "add" in a]
    assert len(removes) == files_before and adds and not any(a["dataChange"] for a in removes + adds)
    assert not any("txn" in a for a in actions), "the widening carries no offsets"
    # A member started later takes the widened type on from the table.
    again = h.run_bronze(cfg, "run", "--until-caught-up", env=env)
    assert "table has columns widened beyond the contract" in again.stderr
