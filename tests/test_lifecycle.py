"""Run-time behaviour of a long-running `bronze run`: age flushes without new traffic, SIGTERM flushes
and exits 0, topic patterns, and a message that cannot be ingested stops only its partition, loudly."""

import json
import signal
import time

import pytest

from confluent_kafka import Producer

import harness as h
from harness import cdc



def metrics_config(tmp_path, topic_line: str, dead_letters: str | None = None, **kw):
    port = h.free_port()
    datasets = h.keyless_orders("unused")
    del datasets[0]["topics"]
    key, value = topic_line.split(" = ", 1)
    datasets[0][key] = value
    if dead_letters:
        datasets[0]["dead_letters"] = dead_letters
    extra = f'\n[metrics]\naddress = "127.0.0.1:{port}"\n\n[kafka.properties]\n"statistics.interval.ms" = "1000"\n'
    cfg = h.write_config(tmp_path, group=h.unique("life"), root=str(tmp_path / "lake"), datasets=datasets,
                         extra=extra, **kw)
    return cfg, f"http://127.0.0.1:{port}/metrics"




def orders(n: int, seed: int):
    return [e for e in cdc.generate(n, seed=seed).events if e.table == "orders" and e.value is not None]


def test_age_flush_without_new_messages_and_sigterm_commits(tmp_path):
    prefix = h.unique("life.age")
    topic = f"{prefix}.orders"
    h.create_topics({topic: 2})
    # A regex subscription; rows, bytes limits far away: only age (2 s) can flush.
    cfg, url = metrics_config(tmp_path, f'topic_pattern = "^{prefix}\\\\..*"', flush_age="2s", max_rows=1_000_000)
    log = tmp_path / "bronze.log"
    proc = h.start_bronze(cfg, log=log, env={"BRONZE_LOG_FORMAT": "json"})
    try:
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_assigned_partitions") >= 2, 60, what="assignment")
        base = url.rsplit("/", 1)[0]
        assert h.http_json(f"{base}/healthz") == (200, {"status": "alive"})
        status, body = h.http_json(f"{base}/readyz")
        assert (status, body["status"], body["reasons"]) == (200, "ready", []), body
        first = h.produce(orders(300, 1), {"orders": topic})
        # Buffered but not committed: the oldest event's age is the lag in seconds, and it grows.
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_consumer_lag_seconds", dataset="orders") > 0.5, 10,
                     what="lag seconds while buffered")
        # No further message arrives, yet the age limit commits the rows.
        h.wait_until(lambda: len(h.stored_offsets(str(tmp_path / "lake" / "orders"))) == len(first), 30,
                     what="age flush")
        # The counters move right after the commit becomes visible.
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_rows_written_total", dataset="orders") == len(first),
                     10, what="rows metric")
        assert h.metric(h.scrape(url), "bronze_flushes_total", reason="age") >= 1
        # Everything produced is committed: the lag of both partitions drops to 0 (statistics every 1 s).
        h.wait_until(lambda: [l for l in h.scrape(url).splitlines() if l.startswith("bronze_consumer_lag_messages")
                              and l.endswith(" 0")].__len__() == 2, 30, what="lag 0 on both partitions")
        assert h.metric(h.scrape(url), "bronze_consumer_lag_seconds", dataset="orders") == 0
        # Rows still buffered at SIGTERM are committed before exit 0.
        cfg_age_long = h.produce(orders(200, 2), {"orders": topic})
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_events_consumed_total") >= len(first) + len(cfg_age_long),
                     30, what="second batch consumed")
        assert h.stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    rows = h.stored_offsets(str(tmp_path / "lake" / "orders"))
    assert len(rows) == len(set(rows)) == len(first) + len(cfg_age_long)
    # JSON logs: one object per line; the run's lines carry its id and commits name their dataset.
    lines = [json.loads(l) for l in log.read_text().splitlines() if l.startswith("{")]
    commits = [l for l in lines if l.get("message") == "committed"]
    assert commits and all(l["dataset"] == "orders" for l in commits), lines[-5:]
    run_ids = {s["run_id"] for l in commits for s in l.get("spans", []) if "run_id" in s}
    assert len(run_ids) == 1, commits[:2]


@pytest.mark.parametrize("bad_at", [50, 0])
def test_undecodable_message_stops_only_its_partition(tmp_path, bad_at):
    """Also when the bad message is the first of its partition in a poll the lanes take (301 messages of
    partition 0 in the first poll): nothing of the partition may be committed, not even the bad message's
    offset."""
    topic = h.unique("life.bad")
    h.create_topics({topic: 2})
    good = orders(3000, 3)[:600]
    assert len(good) == 600
    p = Producer({"bootstrap.servers": h.bootstrap()})
    before = 2 * bad_at
    for i, e in enumerate(good[:before]):
        p.produce(topic, key=e.key, value=e.value, partition=i % 2)
    p.produce(topic, key=b"bad", value=b'{"op": "c", "after": {"id": "not-a-number"', partition=0)
    for i, e in enumerate(good[before:]):
        p.produce(topic, key=e.key, value=e.value, partition=i % 2)
    assert p.flush(30) == 0
    # `on_invalid = "fail"`: a message that cannot be decoded stops its partition instead of being
    # dead-lettered (the default; see test_dead_letters.py).
    cfg, url = metrics_config(tmp_path, f'topics = ["{topic}"]', flush_age="500ms",
                              dead_letters='{ on_invalid = "fail" }')
    log = tmp_path / "bronze.log"
    proc = h.start_bronze(cfg, log=log)
    try:
        uri = str(tmp_path / "lake" / "orders")
        # Partition 1 gets all its 300 rows; partition 0 stops at the bad message, after `bad_at` rows.
        h.wait_until(lambda: len(h.stored_offsets(uri)) == 300 + bad_at, 60, what="good rows")
        time.sleep(2)
        assert len(h.stored_offsets(uri)) == 300 + bad_at, "nothing after the bad message may be ingested"
        text = h.scrape(url)
        assert h.metric(text, "bronze_lane_messages_total", dataset="orders") > 0, "the lanes took no poll"
        assert h.metric(text, "bronze_lane_handed_back_total", dataset="orders") >= 1
        assert h.metric(text, "bronze_decode_errors_total", dataset="orders", kind="invalid_json") == 1
        assert h.metric(text, "bronze_stopped_partitions", dataset="orders") == 1
        assert h.metric(text, "bronze_paused_partitions") == 0
        # The stopped message is the oldest uncommitted event: its age keeps growing; partition 1 is done.
        age = h.metric(text, "bronze_consumer_lag_seconds", dataset="orders", partition="0")
        assert age >= 2, text
        time.sleep(1.5)
        assert h.metric(h.scrape(url), "bronze_consumer_lag_seconds", dataset="orders", partition="0") >= age + 1
        assert h.metric(h.scrape(url), "bronze_consumer_lag_seconds", dataset="orders", partition="1") == 0
        # Loud, not just lagging: readiness fails and names the partition.
        status, body = h.http_json(url.replace("/metrics", "/readyz"))
        assert status == 503 and body["status"] == "not_ready", body
        assert any(f"{topic}[0]" in r for r in body["reasons"]), body
        assert h.http_json(url.replace("/metrics", "/healthz"))[0] == 200
        rows = h.stored_offsets(uri)
        by_part = {p: max((o for t, pp, o in rows if pp == p), default=None) for p in (0, 1)}
        assert by_part == {0: bad_at - 1 if bad_at else None, 1: 299}, by_part
        assert h.stop(proc, signal.SIGTERM) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "cannot ingest message" in text and "partition=0" in text and f"offset={bad_at}" in text, text[-3000:]
    # A catch-up run cannot finish past the bad message and says so.
    out = h.run_bronze(cfg, "run", "--until-caught-up", check=False)
    assert out.returncode == 1
    assert "stopped on a message it cannot ingest" in out.stderr


def test_unreachable_broker_makes_readiness_fail(tmp_path):
    cfg, url = metrics_config(tmp_path, 'topics = ["nowhere"]')
    dead = h.free_port()  # nothing listens there
    proc = h.start_bronze(cfg, env={"BRONZE__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{dead}"},
                          log=tmp_path / "bronze.log")
    readyz = url.replace("/metrics", "/readyz")
    try:
        status, body = h.wait_until(lambda: (lambda r: r if r[0] == 503 else None)(h.http_json(readyz))
                                    if h.scrape(url) else None, 60, what="not ready")
        assert any("broker unreachable" in r for r in body["reasons"]), body
        assert h.http_json(url.replace("/metrics", "/healthz"))[0] == 200
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
