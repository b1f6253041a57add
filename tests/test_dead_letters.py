"""Bad input: a corpus of broken messages mixed into good Debezium traffic on the real broker. Every
message ends up exactly once in the dataset table, in its dead-letter table (byte for byte, with the
reason) or counted as a tombstone; the other dataset is untouched; a crash between the dead-letter commit
and the data commit changes nothing."""

import json
import signal
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import harness as h
from harness import cdc

MAX_BYTES = 64 * 1024
HEADERS = [("trace", b"\x00\x01bad"), ("empty", None)]


def envelope(after, op="c"):
    return json.dumps({"op": op, "ts_ms": 1, "source": {"ts_ms": 1_700_000_000_000, "lsn": 1},
                       "before": None, "after": after}).encode()


def good_row(i):
    return {"id": 900_000 + i, "customer_id": 1, "amount": 1.5, "currency": "EUR", "status": "new",
            "order_date": 19000, "attributes": "{}", "is_gift": False, "updated_at": 1_700_000_000_000}


def corpus():
    """(reason expected, key, value) of each bad message; values are bytes exactly as produced."""
    nested = b'{"op":"c","source":{"ts_ms":1},"after":{"id":1,"attributes":' + b"[" * 300 + b"]" * 300 + b"}}"
    whole = envelope(good_row(1))
    return [
        ("invalid_json", b"k1", b'{"op": "c", "after": {"id": 1,'),                      # malformed
        ("invalid_json", b"k2", whole[: len(whole) // 2]),                                 # truncated
        ("invalid_json", b"k3", b""),                                                       # empty value
        ("invalid_json", b"k4", whole.replace(b'"EUR"', b'"\xff\xfeUR"')),                 # invalid UTF-8
        ("invalid_json", b"k5", nested),                                                    # nested too deep
        ("not_an_object", b"k6", b"[1, 2, 3]"),                                             # wrong shape
        ("bad_op", b"k7", b'{"hello": "world"}'),                                           # not an envelope
        ("bad_op", b"k8", envelope(good_row(2), op="x")),                                   # unknown op
        ("bad_envelope", b"k9", b'{"op": "c", "after": "text"}'),                           # row not an object
        ("bad_envelope", b"k10", b'{"op": "u"}'),                                           # missing row
        ("type_mismatch", b"k11", envelope({**good_row(3), "customer_id": "abc"})),        # wrong type
        ("type_mismatch", b"k12", envelope({**good_row(4), "id": 10**20})),                # out of int64 range
        ("type_mismatch", b"k13", envelope({**good_row(5), "is_gift": "maybe"})),          # wrong bool
        ("type_mismatch", b"k14", envelope({**good_row(6), "amount": "1,5"})),  # decimal comma
        ("missing_value", b"k15", envelope({k: v for k, v in good_row(7).items() if k != "id"})),
        ("oversized", b"k16", envelope({**good_row(8), "status": "x" * (MAX_BYTES + 10)})),
        ("null_key", None, envelope(good_row(9))),                                          # key required
        ("type_mismatch", b"k18", envelope({**good_row(10), "updated_at": 253_402_300_800_000})),  # year 10000
        ("type_mismatch", b"k19", envelope({**good_row(11), "order_date": -719_163})),     # year 0
    ]


def setup(tmp_path, name):
    orders_topic, customers_topic = h.unique(f"{name}.orders"), h.unique(f"{name}.customers")
    dlq_topic = h.unique(f"{name}.orders.dlq")
    h.create_topics({orders_topic: 2, customers_topic: 1, dlq_topic: 3})
    plan = cdc.generate(3_000, seed=21)
    good = [e for e in plan.events if e.table == "orders"]
    customers = h.produce([e for e in plan.events if e.table == "customers"], {"customers": customers_topic})
    producer = Producer({"bootstrap.servers": h.bootstrap(), "message.max.bytes": 4 * MAX_BYTES})
    bad = []
    produced = []

    def record(reason):
        def cb(err, msg):
            assert err is None, err
            # Delivery reports do not carry headers: bad messages all have HEADERS.
            produced.append((reason, msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                             HEADERS if reason else None))
        return cb

    cases = corpus()
    step = len(good) // (len(cases) + 1)
    for i, e in enumerate(good):
        producer.produce(orders_topic, key=e.key, value=e.value, partition=i % 2, on_delivery=record(None))
        if i % step == step - 1 and cases:
            reason, key, value = cases.pop(0)
            producer.produce(orders_topic, key=key, value=value, partition=(i + 1) % 2,
                             headers=HEADERS, on_delivery=record(reason))
        producer.poll(0)
    assert not cases and producer.flush(30) == 0
    bad = [p for p in produced if p[0] is not None]
    datasets = [
        {**h.keyless_orders(orders_topic)[0],
         "dead_letters": f'{{ max_message_bytes = {MAX_BYTES}, require_key = true, topic = "{dlq_topic}" }}'},
        {"name": '"customers"', "topics": f'["{customers_topic}"]', "format": '"debezium-json"',
         "schema": '"customers.toml"', "partitioning": '{ by = "date" }'},
    ]
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique(name), root=str(root), datasets=datasets, flush_age="300ms",
                         max_rows=500)
    return cfg, root, produced, bad, customers, dlq_topic


def read_topic(topic, isolation="read_committed"):
    """Every message of `topic` as (key, value, headers), read by an independent consumer."""
    c = Consumer({"bootstrap.servers": h.bootstrap(), "group.id": h.unique("dlq-reader"),
                  "isolation.level": isolation, "enable.auto.commit": False})
    parts = c.list_topics(topic, timeout=10).topics[topic].partitions
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    c.assign([TopicPartition(topic, p, 0) for p in parts])
    out, done = [], {p for p, end in ends.items() if end == 0}
    deadline = time.time() + 60
    while len(done) < len(parts):
        assert time.time() < deadline, f"{topic}: not read to the end (an open transaction?)"
        m = c.poll(5)
        if m is None:
            # Transaction markers take offsets but are never delivered: stop at the last position.
            done |= {tp.partition for tp in c.position([TopicPartition(topic, p) for p in parts])
                     if tp.offset >= ends[tp.partition] - 1}
            continue
        assert not m.error(), m.error()
        out.append((m.key(), m.value(), m.headers() or []))
        if m.offset() >= ends[m.partition()] - 1:
            done.add(m.partition())
    c.close()
    return out


def check_topic(topic, bad):
    """The dead-letter topic holds every dead letter once, bytes and headers as produced, plus bronze's."""
    published = read_topic(topic)
    assert len(published) == len(bad), f"{len(published)} published for {len(bad)} dead letters"
    by_source = {}
    for key, value, headers in published:
        hs = dict((k, v) for k, v in headers if k.startswith("bronze."))
        by_source[(hs["bronze.source.topic"].decode(), int(hs["bronze.source.partition"]),
                   int(hs["bronze.source.offset"]))] = (key, value, headers, hs)
    assert len(by_source) == len(bad), "a dead letter was published twice"
    for reason, topic_, partition, offset, key, value, headers in bad:
        k, v, hs_all, hs = by_source[(topic_, partition, offset)]
        assert (k, v) == (key, value), f"{reason}: bytes changed on the topic"
        assert [h_ for h_ in hs_all if not h_[0].startswith("bronze.")] == headers
        assert hs["bronze.error.kind"].decode() == reason and hs["bronze.dataset"] == b"orders"
        assert hs["bronze.error.message"] and hs["bronze.dead_lettered_at"]
    return published


def check(root, produced, bad, customers):
    table = h.read_delta(str(root / "orders"))
    dlq = h.read_delta(str(root / "_dead_letters" / "orders")).to_pylist()
    rows = h.offsets_of(table)
    assert len(rows) == len(set(rows)), "a row was stored twice"
    dead = [(r["topic"], r["partition"], r["offset"]) for r in dlq]
    assert len(dead) == len(set(dead)) == len(bad), f"{len(dead)} dead letters for {len(bad)} bad messages"
    by_offset = {(r["topic"], r["partition"], r["offset"]): r for r in dlq}
    for reason, topic, partition, offset, key, value, headers in bad:
        r = by_offset[(topic, partition, offset)]
        assert r["reason"] == reason, (reason, r["reason"], r["error"])
        assert r["error"] and r["dataset"] == "orders"
        assert r["key"] == key and r["value"] == value, f"{reason}: bytes changed"
        assert [(x["key"], x["value"]) for x in r["headers"]] == headers
    tombstones = [p for p in produced if p[0] is None and p[5] is None]
    good = {(p[1], p[2], p[3]) for p in produced if p[0] is None and p[5] is not None}
    assert set(rows) == good
    # Nothing lost, nothing doubled: every produced message is a row, a dead letter or a counted tombstone.
    assert len(produced) == len(rows) + len(dead) + len(tombstones)
    # The other dataset went on untouched.
    assert set(h.stored_offsets(str(root / "customers"))) == h.data_offsets(customers)
    return dlq


def test_bad_input_corpus_is_dead_lettered_and_the_pipeline_goes_on(tmp_path):
    cfg, root, produced, bad, customers, dlq_topic = setup(tmp_path, "dlq")
    assert len(bad) >= 15
    out = h.run_bronze(cfg, "run", "--until-caught-up").stdout
    check(root, produced, bad, customers)
    check_topic(dlq_topic, bad)
    assert "orders" in out
    # The ledger and the status view report the dead letters.
    ledger = [r for r in h.ledger(str(root)) if r["kind"] == "dead_letters"]
    assert sum(r["rows_dead_lettered"] for r in ledger) == len(bad)
    assert all("_dead_letters/orders" in r["table_uri"] for r in ledger)
    status = {d["dataset"]: d for d in map(json.loads, h.run_bronze(cfg, "status", "--json").stdout.splitlines())}
    assert status["orders"]["dead_letters_1h"] == len(bad) and status["orders"]["lag_messages"] == 0
    finished = [r for r in h.ledger(str(root)) if r["kind"] == "run_finished"]
    assert finished[0]["rows_dead_lettered"] == len(bad)
    # A rerun changes nothing, on the topic either.
    h.run_bronze(cfg, "run", "--until-caught-up")
    check(root, produced, bad, customers)
    check_topic(dlq_topic, bad)
    listing = h.run_bronze(cfg, "dlq", "list", "--dataset", "orders").stdout
    assert f"{len(bad)} dead letters" in listing and "oversized" in listing

    # The fix: larger messages allowed, no key required, and three columns that may be null when bad.
    contract = (h.SCHEMAS / "orders.toml").read_text()
    contract = contract.replace('name = "customer_id"\ntype = "int64"\nnullable = false',
                                'name = "customer_id"\ntype = "int64"\non_error = "null"')
    for column, ty in (("amount", "float64"), ("is_gift", "bool")):
        contract = contract.replace(f'name = "{column}"\ntype = "{ty}"',
                                    f'name = "{column}"\ntype = "{ty}"\non_error = "null"')
    assert contract.count('on_error = "null"') == 3
    (tmp_path / "fixed").mkdir()
    (tmp_path / "fixed" / "orders.toml").write_text(contract)
    fixed = cfg.read_text().replace('schema = "orders.toml"', f'schema = "{tmp_path / "fixed" / "orders.toml"}"')
    fixed = fixed.replace(f"max_message_bytes = {MAX_BYTES}, require_key = true", "max_message_bytes = 1048576")
    (tmp_path / "fixed" / "bronze.toml").write_text(fixed)
    fixed_cfg = tmp_path / "fixed" / "bronze.toml"
    passing = {"oversized", "null_key"} | {"type_mismatch:k11", "type_mismatch:k13", "type_mismatch:k14"}
    expected = [b for b in bad if b[0] in passing or f"{b[0]}:{(b[4] or b'').decode()}" in passing]
    assert len(expected) == 5

    dry = json.loads(h.run_bronze(fixed_cfg, "dlq", "replay", "--dataset", "orders", "--dry-run", "--json").stdout)
    assert (dry["rows_written"], dry["table_version"]) == (5, None)
    before = h.read_delta(str(root / "orders")).num_rows
    assert before == len(rows_of(root))
    summary = json.loads(h.run_bronze(fixed_cfg, "dlq", "replay", "--dataset", "orders", "--json").stdout)
    assert summary["rows_written"] == 5 and summary["already_in_table"] == 0, summary
    assert sum(summary["still_failing"].values()) == len(bad) - 5, summary
    assert summary["still_failing"]["invalid_json"] == 5
    rows = rows_of(root)
    assert len(rows) == len(set(rows)) == before + 5
    assert {(b[1], b[2], b[3]) for b in expected} <= set(rows)
    # Replayed rows keep their original coordinates; the bad values are null where the contract allows.
    table = h.read_delta(str(root / "orders")).to_pylist()
    k11 = next(b for b in bad if b[4] == b"k11")
    row = next(r for r in table if (r["_topic"], r["_partition"], r["_offset"]) == k11[1:4])
    assert row["customer_id"] is None and row["id"] == 900_003
    # Idempotent: a second replay finds them in the table.
    again = json.loads(h.run_bronze(fixed_cfg, "dlq", "replay", "--dataset", "orders", "--json").stdout)
    assert (again["rows_written"], again["already_in_table"]) == (0, 5), again
    assert len(rows_of(root)) == before + 5
    kinds = [r["kind"] for r in h.ledger(str(root)) if r["dataset"] == "orders"]
    # The ledger transcribes on the next run's sync; the replay is in the table's history already.
    assert any(c.get("bronze", {}).get("kind") == "dlq_replay" for c in h.delta_history(str(root / "orders")))
    assert "dead_letters" in kinds


def rows_of(root):
    return h.offsets_of(h.read_delta(str(root / "orders")))


def test_crash_between_dead_letter_and_data_commit_keeps_each_message_once(tmp_path):
    cfg, root, produced, bad, customers, dlq_topic = setup(tmp_path, "dlqcrash")
    proc = h.start_bronze(cfg, env={"BRONZE_FAILPOINT": "after_dead_letters"}, log=tmp_path / "bronze.log")
    assert proc.wait(timeout=120) == -signal.SIGABRT
    first = h.read_delta(str(root / "_dead_letters" / "orders")).num_rows
    assert first >= 1, "the failpoint fires after a dead-letter commit"
    # The rows of that flush were not committed; the restart re-reads them and finds their dead letters
    # already recorded.
    out = h.run_bronze(cfg, "run", "--until-caught-up")
    check(root, produced, bad, customers)
    log = (tmp_path / "bronze.log").read_text() + out.stderr
    assert "already_recorded" in log
    check_topic(dlq_topic, bad)


def test_crash_inside_a_dead_letter_topic_transaction_publishes_each_letter_once(tmp_path):
    cfg, root, produced, bad, customers, dlq_topic = setup(tmp_path, "dlqtxn")
    proc = h.start_bronze(cfg, env={"BRONZE_FAILPOINT": "dead_letter_topic_before_commit"},
                          log=tmp_path / "bronze.log")
    assert proc.wait(timeout=120) == -signal.SIGABRT
    # The open transaction's messages are in the log; the restart fences the dead publisher, aborting them.
    assert len(read_topic(dlq_topic, "read_uncommitted")) >= 1
    h.run_bronze(cfg, "run", "--until-caught-up")
    check(root, produced, bad, customers)
    check_topic(dlq_topic, bad)
    assert len(read_topic(dlq_topic, "read_uncommitted")) > len(bad)
