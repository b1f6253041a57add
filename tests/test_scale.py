"""Scale-out: two bronze processes in one group, a third joining mid-stream (rebalance), one killed with
SIGKILL; traffic keeps flowing the whole time. At the end every event is stored exactly once."""

import signal
import threading
import time

import harness as h
from harness import cdc
from test_crash import data_offsets, keyless_orders, stored_offsets


def test_three_members_rebalance_and_a_crash(tmp_path):
    topic = h.unique("scale.orders")
    h.create_topics({topic: 6})
    root = tmp_path / "lake"
    uri = str(root / "orders")
    cfg = h.write_config(tmp_path, group=h.unique("scale"), root=str(root), datasets=keyless_orders(topic),
                         flush_age="300ms", max_rows=2000)
    produced = []
    stop = threading.Event()

    def producer():
        seed = 0
        while not stop.is_set():
            seed += 1
            plan = cdc.generate(1_500, seed=seed)
            produced.extend(h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic}))
            time.sleep(0.3)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    a = h.start_bronze(cfg, log=tmp_path / "a.log")
    b = h.start_bronze(cfg, log=tmp_path / "b.log")
    try:
        h.wait_until(lambda: (root / "orders" / "_delta_log").exists() and len(stored_offsets(uri)) > 2000, 120,
                     what="first commits")
        c = h.start_bronze(cfg, log=tmp_path / "c.log")
        time.sleep(6)  # c joins: a cooperative rebalance moves partitions to it
        b.send_signal(signal.SIGKILL)
        assert b.wait(timeout=30) == -signal.SIGKILL
        time.sleep(14)  # b's partitions move to a and c once its session times out (10 s)
    finally:
        stop.set()
        t.join(timeout=60)
    expected = data_offsets(produced)
    # The survivors drain everything that was produced.
    h.wait_until(lambda: len(stored_offsets(uri)) >= len(expected), 180, interval=1, what="survivors to catch up")
    assert h.stop(a) == 0
    assert h.stop(c) == 0
    rows = stored_offsets(uri)
    assert len(rows) == len(set(rows)), "an offset was stored twice"
    assert set(rows) == expected
    # Three different runs committed to the table.
    runs = {c["bronze"]["run_id"] for c in h.delta_history(uri) if c.get("bronze")}
    assert len(runs) >= 3, runs
    assert h.read_polars(uri).height == len(expected)
