"""The broker as production loses it: killed in the middle of a stream and started again on its
state, and not there yet when bronze starts. Each test runs a broker of its own
(`harness/broker.py`), so the shared one the other tests use is never touched. The table is read back
by an independent reader (Python deltalake): every produced offset once, nothing else."""

import time

import harness as h
from harness import cdc
from harness.broker import PrivateBroker


def produce_orders(topic: str, n: int, seed: int):
    return h.produce([e for e in cdc.generate(n, seed=seed).events if e.table == "orders"], {"orders": topic})


def ready(url: str):
    try:
        return h.http_json(url.replace("/metrics", "/readyz"))[0]
    except OSError:
        return None


def test_broker_killed_mid_stream_and_restarted_loses_and_doubles_nothing(tmp_path):
    with PrivateBroker(tmp_path) as broker:
        topic = h.unique("broker.restart")
        h.create_topics({topic: 3})
        root = tmp_path / "lake"
        uri = str(root / "orders")
        cfg, url = h.orders_member(tmp_path, h.unique("restart"), root, topic, flush_age="300ms", max_rows=400)
        proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
        try:
            produced = produce_orders(topic, 3_000, seed=81)
            # Some of it committed, the rest still streaming in when the broker goes.
            h.wait_until(lambda: len(h.stored_offsets(uri)) > 0, 90, what="the first commits")
            broker.kill()
            killed = time.time()
            h.wait_until(lambda: ready(url) == 503, 60, what="readiness false with the broker gone")
            time.sleep(5)
            assert proc.poll() is None, "bronze kept running without a broker"
            broker.resume()
            back = time.time()
            produced += produce_orders(topic, 2_000, seed=82)
            h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 120, interval=1,
                         what="every row after the restart")
            print(f"broker down {back - killed:.1f} s; every row in {time.time() - back:.1f} s after it was back")
            h.wait_until(lambda: ready(url) == 200, 60, what="ready again")
        finally:
            assert h.stop(proc) == 0
        h.assert_exactly_once(uri, h.data_offsets(produced))
        h.assert_ledger_complete(str(root), "orders")


def test_bronze_started_while_the_broker_is_down_waits_then_ingests(tmp_path):
    with PrivateBroker(tmp_path) as broker:
        topic = h.unique("broker.late")
        h.create_topics({topic: 2})
        produced = produce_orders(topic, 2_000, seed=83)
        broker.kill()
        root = tmp_path / "lake"
        uri = str(root / "orders")
        cfg, url = h.orders_member(tmp_path, h.unique("late"), root, topic, flush_age="300ms", max_rows=400)
        proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
        try:
            h.wait_until(lambda: ready(url) == 503, 60, what="readiness false before any broker")
            time.sleep(5)
            assert proc.poll() is None, "bronze waits for the broker rather than exit"
            broker.resume()
            back = time.time()
            h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 120, interval=1,
                         what="every row once the broker is there")
            print(f"every row in {time.time() - back:.1f} s after the broker came up")
        finally:
            assert h.stop(proc) == 0
        h.assert_exactly_once(uri, h.data_offsets(produced))
