"""Debezium re-emits events after a connector restart: the same key and source position again, later in the
topic. bronze drops those exact redeliveries across flushes (a window of committed source events), counts
them, and keeps genuine updates; with the window off they land twice."""

import json
import signal
from collections import Counter

from confluent_kafka import Producer

import pytest

import harness as h


def event(i, lsn):
    return json.dumps({"op": "u", "source": {"ts_ms": 1_700_000_000_000 + lsn, "lsn": lsn},
                       "after": {"id": i, "first_name": f"n{i}-{lsn}"}}).encode()


def produce(topics, events):
    p = Producer({"bootstrap.servers": h.bootstrap()})
    for topic in topics:
        for i, lsn in events:
            p.produce(topic, key=json.dumps({"id": i}).encode(), value=event(i, lsn))
    assert p.flush(30) == 0


def test_redeliveries_are_dropped_across_flushes(tmp_path):
    topics = {"windowed": h.unique("redeliver.on"), "unwindowed": h.unique("redeliver.off")}
    h.create_topics({t: 1 for t in topics.values()})
    port = h.free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    datasets = [{"name": f'"{name}"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                 "schema": '"customers.toml"', "key_columns": '["id"]', "partitioning": '{ by = "none" }',
                 "redelivery_window": "1000" if name == "windowed" else "0"}
                for name, topic in topics.items()]
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("redeliver"), root=str(root), datasets=datasets,
                         flush_age="200ms", extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n')
    originals = [(i, 1000 + i) for i in range(200)]
    produce(topics.values(), originals)
    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_rows_written_total") == 400, 60, what="originals")
        # The connector restarts: the last 120 events again; then 30 genuine updates of other keys.
        produce(topics.values(), originals[80:] + [(i, 5000 + i) for i in range(0, 30)])
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_events_consumed_total") == 2 * 350, 60,
                     what="redeliveries consumed")
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_rows_written_total", dataset="unwindowed") == 350,
                     30, what="unwindowed rows")
        text = h.scrape(url)
        assert h.metric(text, "bronze_redeliveries_dropped_total", dataset="windowed") == 120
        assert h.metric(text, "bronze_redeliveries_dropped_total", dataset="unwindowed") == 0
        assert h.stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    windowed = h.read_delta(str(root / "windowed")).to_pylist()
    pairs = [(r["id"], r["_source_pos"]) for r in windowed]
    assert len(pairs) == len(set(pairs)) == 230, "each source event once, genuine updates kept"
    unwindowed = h.read_delta(str(root / "unwindowed")).to_pylist()
    assert len(unwindowed) == 350
    # Positions still move past the dropped messages: a restart re-reads nothing.
    out = h.run_bronze(cfg, "run", "--until-caught-up")
    assert len(h.read_delta(str(root / "windowed")).to_pylist()) == 230, out.stderr[-2000:]


@pytest.mark.parametrize("threads", [1, 2])
def test_the_window_survives_a_restart(tmp_path, threads):
    """A restarted bronze seeds its window from the table: redeliveries of events committed before the
    restart are still dropped, and a window smaller than the history keeps the newest events only —
    also when the messages were mapped on two threads (their rows share one ingest time per poll)."""
    topic = h.unique("redeliver.restart")
    h.create_topics({topic: 1})
    datasets = [{"name": '"customers"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                 "schema": '"customers.toml"', "key_columns": '["id"]', "partitioning": '{ by = "none" }',
                 "redelivery_window": "150"}]
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("redeliver-restart"), root=str(root), datasets=datasets,
                         flush_age="200ms", extra=f"\n[pipeline]\ndecode_threads = {threads}\n")
    originals = [(i, 1000 + i) for i in range(200)]
    produce([topic], originals)
    h.run_bronze(cfg, "run", "--until-caught-up")
    assert len(h.read_delta(str(root / "customers")).to_pylist()) == 200
    # After the restart of both: the connector re-emits its last 120 events and 30 earlier ones.
    produce([topic], originals[80:] + originals[:30])
    out = h.run_bronze(cfg, "run", "--until-caught-up")
    assert "redelivery window seeded from the table" in out.stderr
    rows = h.read_delta(str(root / "customers")).to_pylist()
    pairs = [(r["id"], r["_source_pos"]) for r in rows]
    # The window holds the newest 150 committed events (ids 50..199): the 120 re-emitted ones are dropped;
    # the 30 oldest fell out of it and land again (counted in the summary as rows, not lost).
    assert len(pairs) == 200 + 30
    assert len(set(pairs)) == 200
    assert {i for (i, _), n in Counter(pairs).items() if n > 1} == set(range(30))
