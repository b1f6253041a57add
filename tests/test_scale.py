"""Scale-out: two bronze processes in one group, a third joining mid-stream (rebalance), one killed with
SIGKILL; traffic keeps flowing the whole time. At the end every event is stored exactly once. Also: a member
whose batch turned stale while its partition moved, and `--until-caught-up` members stopping together."""

import json
import signal
import threading
import time

import harness as h
from harness import cdc


def orders_topic(prefix: str, partitions: int, n_events: int, seed: int):
    """A new topic with the orders of `n_events` generated change events: (topic, produced, offsets)."""
    topic = h.unique(prefix)
    h.create_topics({topic: partitions})
    plan = cdc.generate(n_events, seed=seed)
    produced = h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic})
    return topic, produced, h.data_offsets(produced)


def two_members(tmp_path, group: str, root, topic: str, **config):
    """Configs of members A and B of `group` and their metrics URLs."""
    (a, url_a), (b, url_b) = (h.orders_member(tmp_path / name, group, root, topic, **config) for name in ("a", "b"))
    return [a, b], [url_a, url_b]


def kill_survivors(*procs) -> None:
    for p in procs:
        if p is not None and p.poll() is None:
            p.kill()


def test_three_members_rebalance_and_a_crash(tmp_path):
    topic = h.unique("scale.orders")
    h.create_topics({topic: 6})
    root = tmp_path / "lake"
    uri = str(root / "orders")
    cfg = h.write_config(tmp_path, group=h.unique("scale"), root=str(root), datasets=h.keyless_orders(topic),
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
        h.wait_until(lambda: (root / "orders" / "_delta_log").exists() and len(h.stored_offsets(uri)) > 2000, 120,
                     what="first commits")
        c = h.start_bronze(cfg, log=tmp_path / "c.log")
        time.sleep(6)  # c joins: a cooperative rebalance moves partitions to it
        b.send_signal(signal.SIGKILL)
        assert b.wait(timeout=30) == -signal.SIGKILL
        time.sleep(14)  # b's partitions move to a and c once its session times out (10 s)
    finally:
        stop.set()
        t.join(timeout=60)
    expected = h.data_offsets(produced)
    # The survivors drain everything that was produced.
    h.wait_until(lambda: len(h.stored_offsets(uri)) >= len(expected), 180, interval=1, what="survivors to catch up")
    assert h.stop(a) == 0
    assert h.stop(c) == 0
    h.assert_exactly_once(uri, expected)
    # Three different runs committed to the table.
    runs = {c["bronze"]["run_id"] for c in h.delta_history(uri) if c.get("bronze")}
    assert len(runs) >= 3, runs
    assert h.read_polars(uri).height == len(expected)
    # Three processes followed the same table into one ledger: each version is in it once.
    h.assert_ledger_complete(str(root), "orders")


def test_zombie_batch_after_rebalance_is_dropped_not_doubled(tmp_path):
    """A holds a batch it cannot commit (storage outage) while its partition moves to B, which commits
    the same offsets. When A's storage comes back, A must find its batch stale, drop it, delete its files
    and re-read the partitions it still owns from the table: every event exactly once."""
    topic, produced, expected = orders_topic("zombie.orders", 2, 6_000, seed=77)
    root = tmp_path / "lake"
    uri = str(root / "orders")
    # A long flush age: A's first (failing) batch then holds both partitions, whichever moves to B.
    cfgs, (url_a, url_b) = two_members(tmp_path, h.unique("zombie"), root, topic, flush_age="4s")
    outage = tmp_path / "a-storage-down"
    outage.touch()
    a = h.start_bronze(cfgs[0], env={"BRONZE_FAIL_COMMITS_WHILE": str(outage)}, log=tmp_path / "a.log")
    b = None
    try:
        # A reads everything but cannot commit: its batch covers both partitions.
        h.wait_until(lambda: h.metric(h.scrape(url_a), "bronze_events_consumed_total") >= len(produced)
                     and h.metric(h.scrape(url_a), "bronze_commit_errors_total") >= 1, 60, what="A holding a batch")
        b = h.start_bronze(cfgs[1], log=tmp_path / "b.log")
        # B takes one partition over and commits it.
        h.wait_until(lambda: h.metric(h.scrape(url_b), "bronze_rows_written_total") > 0, 60, what="B commits")
        outage.unlink()
        h.wait_until(lambda: h.metric(h.scrape(url_a), "bronze_stale_batches_total") >= 1, 60, what="A's stale batch")
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= len(expected), 60, what="all rows")
        time.sleep(1)
        assert h.stop(a) == 0
        assert h.stop(b) == 0
    finally:
        kill_survivors(a, b)
    h.assert_exactly_once(uri, expected)
    assert "already committed some of these offsets" in (tmp_path / "a.log").read_text()
    # The stale batch's files were deleted.
    assert h.parquet_files_on_disk(root / "orders") == h.referenced_files(root / "orders")
    # The ledger has every commit once, and A's failed commits and dropped batch, also through `bronze runs`.
    h.assert_ledger_complete(str(root), "orders")
    out = h.run_bronze(cfgs[0], "runs", "--status", "failed", "--json").stdout
    failed = [json.loads(l) for l in out.splitlines()]
    assert {r["kind"] for r in failed} == {"commit_failed", "batch_dropped"}, failed
    assert all(r["dataset"] == "orders" and r["error"] for r in failed)
    assert any("outage injected" in r["error"] for r in failed if r["kind"] == "commit_failed")


def test_commit_running_across_a_rebalance_goes_stale_not_double(tmp_path):
    """A's first batch (both partitions) is being committed in the background, held between its upload and
    its log write, while A reads on and B joins: one partition moves to B, which commits it first. When A's
    commit goes on, it must find that partition taken, drop the batch with its files, and re-read the
    partition it still owns from the table: every event exactly once."""
    topic, produced, expected = orders_topic("inflight.orders", 2, 6_000, seed=78)
    root = tmp_path / "lake"
    uri = str(root / "orders")
    group = h.unique("inflight")
    # A flushes once, at two thirds of the rows, and then only when stopped: its one commit is the held one.
    cfg_a, url_a = h.orders_member(tmp_path / "a", group, root, topic, flush_age="10m", max_rows=len(expected) * 2 // 3)
    cfg_b, url_b = h.orders_member(tmp_path / "b", group, root, topic, flush_age="500ms")
    hold = tmp_path / "hold-a"
    hold.touch()
    a = h.start_bronze(cfg_a, env={"BRONZE_HOLD_COMMITS_WHILE": str(hold)}, log=tmp_path / "a.log")
    b = None
    try:
        h.wait_until(lambda: h.metric(h.scrape(url_a), "bronze_events_consumed_total") == len(produced), 60,
                     what="A reading everything while its first commit is held")
        b = h.start_bronze(cfg_b, log=tmp_path / "b.log")
        h.wait_until(lambda: h.metric(h.scrape(url_b), "bronze_rows_written_total") > 0, 60, what="B commits")
        assert h.metric(h.scrape(url_a), "bronze_rows_written_total") == 0, "A's commit is still held"
        hold.unlink()
        h.wait_until(lambda: h.metric(h.scrape(url_a), "bronze_stale_batches_total") >= 1, 60,
                     what="A's running commit found stale")
        assert h.stop(a) == 0  # commits what A re-read of the partition it kept
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= len(expected), 60, what="all rows")
        assert h.stop(b) == 0
    finally:
        kill_survivors(a, b)
    h.assert_exactly_once(uri, expected)
    assert h.parquet_files_on_disk(root / "orders") == h.referenced_files(root / "orders")


def test_until_caught_up_members_stop_only_when_the_group_is_done(tmp_path):
    """`bronze run --until-caught-up` with two members. A member that joins is first assigned nothing
    (cooperative rebalance), and partitions moving between members belong to neither for a while: each
    member must keep running until the table holds every event produced before it started, whoever
    commits them. A cannot commit (storage outage) and stops reading at its memory budget; B joins, takes
    half the partitions and commits them, and must wait for A's half."""
    topic, produced, expected = orders_topic("catchup.orders", 12, 40_000, seed=12)
    root = tmp_path / "lake"
    uri = str(root / "orders")
    # No flush by age: a member commits what it read as soon as its own partitions are caught up, for
    # the members waiting for them.
    cfgs, (url_a, url_b) = two_members(tmp_path, h.unique("catchup"), root, topic, flush_age="10m",
                                       budget=2 * 1024 * 1024)
    outage = tmp_path / "a-storage-down"
    outage.touch()
    a = h.start_bronze(cfgs[0], "--until-caught-up", env={"BRONZE_FAIL_COMMITS_WHILE": str(outage)},
                       log=tmp_path / "a.log")
    b = None
    try:
        h.wait_until(lambda: h.metric(h.scrape(url_a), "bronze_commit_errors_total") >= 1
                     and h.metric(h.scrape(url_a), "bronze_paused_partitions") > 0, 60, what="A paused at its budget")
        assert h.metric(h.scrape(url_a), "bronze_events_consumed_total") < len(produced)
        b = h.start_bronze(cfgs[1], "--until-caught-up", log=tmp_path / "b.log")
        h.wait_until(lambda: h.metric(h.scrape(url_b), "bronze_rows_written_total") > 0, 60, what="B commits")

        # B's half is in the table once the table stops growing (A commits nothing).
        seen = [-1]

        def settled():
            n = len(h.stored_offsets(uri))
            done, seen[0] = n == seen[0], n
            return done
        h.wait_until(settled, 90, interval=3, what="B's commits to settle")
        assert b.poll() is None, "B stopped while A's partitions were not in the table"
        assert len(h.stored_offsets(uri)) < len(expected)
        outage.unlink()
        assert b.wait(timeout=120) == 0
        assert len(h.stored_offsets(uri)) >= len(expected), "B stopped before the table had every event"
        assert a.wait(timeout=120) == 0
    finally:
        kill_survivors(a, b)
    h.assert_exactly_once(uri, expected)


def test_group_churn_under_load_for_a_minute(tmp_path):
    """Three members under a steady load for 60 s; every 5 s one of them goes (SIGKILL and SIGTERM in
    turn) and a new one joins in its place, so the group rebalances a dozen times while commits run."""
    import random
    topic = h.unique("scale.churn")
    h.create_topics({topic: 6})
    root = tmp_path / "lake"
    uri = str(root / "orders")
    cfg = h.write_config(tmp_path, group=h.unique("churn"), root=str(root), datasets=h.keyless_orders(topic),
                         flush_age="300ms", max_rows=1000)
    produced = []
    stop = threading.Event()

    def producer():
        seed = 100
        while not stop.is_set():
            seed += 1
            plan = cdc.generate(600, seed=seed)
            produced.extend(h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic}))
            time.sleep(0.3)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    members = [h.start_bronze(cfg, log=tmp_path / f"m{i}.log") for i in range(3)]
    rng = random.Random(5)
    exits = []
    try:
        end = time.time() + 60
        while time.time() < end:
            time.sleep(5)
            i = rng.randrange(len(members))
            sig = signal.SIGKILL if len(exits) % 2 == 0 else signal.SIGTERM
            members[i].send_signal(sig)
            exits.append((sig.name, members[i].wait(timeout=90)))
            members[i] = h.start_bronze(cfg, log=tmp_path / f"m{len(exits) + 2}.log")
    finally:
        stop.set()
        t.join(timeout=60)
    expected = h.data_offsets(produced)
    try:
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= len(expected), 180, interval=1,
                     what="the members to catch up")
    finally:
        final = [h.stop(m) for m in members]
    print(f"{len(expected)} events, {len(exits)} members gone and replaced: {exits}; final exits {final}")
    assert all(code == -signal.SIGKILL for name, code in exits if name == "SIGKILL")
    assert all(code == 0 for name, code in exits if name == "SIGTERM"), exits
    assert final == [0, 0, 0]
    h.assert_exactly_once(uri, expected)
    h.assert_ledger_complete(str(root), "orders")
