"""Transactional source topics (Kafka Connect exactly-once sources, any transactional producer): the
records of aborted transactions never reach a table, `--until-caught-up` ends although every partition
ends in a commit marker (an offset no consumer is handed), the table's position reaches the end of the
partition (lag 0), and a crash between upload and commit, or a kill -9, changes none of that."""

import json
import random
import signal
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import harness as h
from harness.setups import ID_COLUMN, change, one_dataset

CONTRACT = ID_COLUMN + '\n[[columns]]\nname = "kind"\ntype = "string"\n'
ABORTED = 1_000_000


class Transactions:
    """A transactional producer writing Debezium changes of ids, committing or aborting each batch."""

    def __init__(self, topic: str, partitions: int):
        self.topic, self.partitions = topic, partitions
        self.producer = Producer({"bootstrap.servers": h.bootstrap(), "transactional.id": h.unique("txn"),
                                  "linger.ms": 5})
        self.producer.init_transactions(30)
        self.committed: set[int] = set()
        self.aborted: set[int] = set()

    def begin(self, ids, kind: str) -> None:
        self.producer.begin_transaction()
        for i in ids:
            value = change(i, {"id": i, "kind": kind})
            self.producer.produce(self.topic, key=json.dumps({"id": i}).encode(), value=value,
                                  partition=i % self.partitions)
        self.producer.flush(30)

    def commit(self, ids) -> None:
        self.begin(ids, "committed")
        self.producer.commit_transaction(30)
        self.committed |= set(ids)

    def abort(self, ids) -> None:
        self.begin(ids, "aborted")
        self.producer.abort_transaction(30)
        self.aborted |= set(ids)


def stable_ends(topic: str, partitions: int) -> dict[int, int]:
    """Each partition's last stable offset, as a read_committed consumer sees its end."""
    c = Consumer({"bootstrap.servers": h.bootstrap(), "group.id": h.unique("ends"),
                  "isolation.level": "read_committed"})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def ids_in(table) -> list[int]:
    return h.read_delta(str(table)).column("id").to_pylist()


def table_positions(table, group_prefix: str) -> dict[int, int]:
    """The streaming txn version of each partition in the table's log (the last offset it covers)."""
    out: dict[int, int] = {}
    for f in sorted((table / "_delta_log").glob("*.json")):
        for line in f.read_text().splitlines():
            txn = json.loads(line).get("txn")
            if txn and txn["appId"].startswith(group_prefix) and txn["appId"].count(":") == 2:
                out[int(txn["appId"].rsplit(":", 1)[1])] = txn["version"]
    return out


def test_aborted_transactions_never_land_and_catch_up_ends_on_commit_markers(tmp_path):
    ds = one_dataset(tmp_path, "txn", CONTRACT, partitions=2, keys=["id"], flush_age="300ms")
    group = ds.config.read_text().split('group_id = "', 1)[1].split('"', 1)[0]
    tx = Transactions(ds.topic, 2)
    tx.commit(range(0, 40))
    tx.abort(range(ABORTED, ABORTED + 30))
    tx.commit(range(40, 80))
    tx.abort(range(ABORTED + 30, ABORTED + 60))
    # The last record of each partition is a commit marker.
    tx.commit(range(80, 100))
    ends = stable_ends(ds.topic, 2)

    started = time.monotonic()
    out = h.run_bronze(ds.config, "run", "--until-caught-up", timeout=120).stdout
    elapsed = time.monotonic() - started
    ids = ids_in(ds.table)
    assert sorted(ids) == sorted(tx.committed), "exactly the committed records"
    assert not set(ids) & tx.aborted
    # The table covers every offset up to the end, markers included: nothing left to read.
    assert table_positions(ds.table, f"{group}:") == {p: end - 1 for p, end in ends.items()}, out
    status = [json.loads(line) for line in h.run_bronze(ds.config, "status", "--json").stdout.splitlines()]
    partitions = [p for d in status for p in d["partitions"]]
    assert [p["lag_messages"] for p in partitions] == [0, 0], partitions
    assert all(p["high_watermark"] == ends[p["partition"]] for p in partitions)

    # A second catch-up finds the table at the end and ends at once, adding nothing.
    versions = len(h.delta_history(str(ds.table)))
    started = time.monotonic()
    h.run_bronze(ds.config, "run", "--until-caught-up", timeout=60)
    again = time.monotonic() - started
    assert len(h.delta_history(str(ds.table))) == versions
    # A backfill of the day reads each partition to its end, where only markers are left, and rebuilds
    # exactly the committed records.
    out = json.loads(h.run_bronze(ds.config, "backfill", "--dataset", "events", "--from", "2023-11-14",
                                  "--to", "2023-11-15", "--json", timeout=60).stdout)
    assert out["status"] == "succeeded" and out["rows_written"] == len(tx.committed), out
    assert sorted(ids_in(ds.table)) == sorted(tx.committed)
    print(f"catch-up over {sum(ends.values())} offsets ({len(tx.committed)} committed, {len(tx.aborted)} aborted): "
          f"{elapsed:.1f} s; again {again:.1f} s")


def test_a_crash_between_upload_and_commit_and_kills_keep_aborted_records_out(tmp_path):
    rng = random.Random(20261207)
    ds = one_dataset(tmp_path, "txncrash", CONTRACT, partitions=2, keys=["id"], flush_age="200ms")
    tx = Transactions(ds.topic, 2)
    tx.commit(range(0, 50))
    # An open transaction: its records are on the log, after the last stable offset.
    open_tx = Transactions(ds.topic, 2)
    open_tx.begin(range(ABORTED, ABORTED + 25), "aborted")

    # The first batch is uploaded, and the process dies before its commit.
    log = tmp_path / "bronze.log"
    proc = h.start_bronze(ds.config, env={"BRONZE_FAILPOINT": "after_upload"}, log=log)
    assert proc.wait(timeout=120) == -signal.SIGABRT
    assert h.stored_offsets(str(ds.table)) == []
    open_tx.producer.abort_transaction(30)
    open_tx.aborted |= set(range(ABORTED, ABORTED + 25))

    # More of both while members are killed with -9 at random moments.
    next_id = 50
    for round_ in range(3):
        tx.commit(range(next_id, next_id + 30))
        tx.abort(range(ABORTED + 100 * (round_ + 1), ABORTED + 100 * (round_ + 1) + 20))
        next_id += 30
        proc = h.start_bronze(ds.config, log=log)
        before = len(h.stored_offsets(str(ds.table)))
        h.wait_until(lambda: len(h.stored_offsets(str(ds.table))) > before, 60, interval=0.1, what="a commit")
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        h.assert_no_duplicate_offsets(h.read_delta(str(ds.table)))

    h.age_files(ds.table, 2 * 3600)
    h.run_bronze(ds.config, "run", "--until-caught-up", timeout=120)
    ids = ids_in(ds.table)
    assert len(ids) == len(set(ids)), "a record stored twice"
    assert set(ids) == tx.committed
    assert not set(ids) & (tx.aborted | open_tx.aborted)
    assert h.parquet_files_on_disk(ds.table) == h.referenced_files(ds.table), "orphans swept"
