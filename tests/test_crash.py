"""Crash safety: bronze is killed with SIGKILL at random points while it ingests (and once by a failpoint
between the Parquet upload and the Delta commit), restarted each time, and at the end every produced
event is in the table exactly once."""

import random
import signal
import time

import harness as h
from harness import cdc


def events_for(topic_plan_seed: int, n: int):
    plan = cdc.generate(n, seed=topic_plan_seed)
    return [e for e in plan.events if e.table == "orders"]


def test_kill_9_at_random_points_and_between_upload_and_commit(tmp_path):
    rng = random.Random(20261127)
    topic = h.unique("crash.orders")
    h.create_topics({topic: 4})
    produced = h.produce(events_for(1, 24_000), {"orders": topic})
    root = tmp_path / "lake"
    table_dir = root / "orders"
    cfg = h.write_config(tmp_path, group=h.unique("crash"), root=str(root), datasets=h.keyless_orders(topic),
                         flush_age="150ms", max_rows=200)
    log = tmp_path / "bronze.log"
    progress = []
    mid_ingest = []
    kills = 0
    for round_ in range(6):
        if round_ > 0:
            # More traffic arrives while bronze is down: every incarnation has something to commit,
            # even when the one before finished its work before it was killed.
            produced += h.produce(events_for(100 + round_, 3_000), {"orders": topic})
        proc = h.start_bronze(cfg, log=log)
        # Wait until this incarnation has committed something, then kill it at a random moment.
        before = len(h.stored_offsets(str(table_dir))) if (table_dir / "_delta_log").exists() else 0
        h.wait_until(lambda: (table_dir / "_delta_log").exists() and len(h.stored_offsets(str(table_dir))) > before,
                     120, interval=0.1, what="a commit")
        time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        kills += 1
        rows = h.stored_offsets(str(table_dir))
        progress.append(len(rows))
        assert len(rows) == len(set(rows)), f"duplicates after kill {round_}"
        mid_ingest.append(len(rows) < len(h.data_offsets(produced)))
    assert kills >= 5
    expected = h.data_offsets(produced)
    assert any(mid_ingest), f"every kill happened after ingestion finished: {progress}"

    # Failpoint: abort after the Parquet files are written, before the Delta commit.
    proc = h.start_bronze(cfg, env={"BRONZE_FAILPOINT": "after_upload"}, log=log)
    assert proc.wait(timeout=120) == -signal.SIGABRT
    orphans = h.parquet_files_on_disk(table_dir) - h.referenced_files(table_dir)
    assert orphans, "the failpoint should leave uploaded, uncommitted files"
    assert len(h.stored_offsets(str(table_dir))) == progress[-1], "nothing may be committed at the failpoint"

    # Restart after the grace period (1 h by default; the files are aged instead of waiting): every event
    # exactly once, and the orphans of the aborted commit and of the kills are gone.
    h.age_files(table_dir, 2 * 3600)
    out = h.run_bronze(cfg, "run", "--until-caught-up").stdout
    rows = h.stored_offsets(str(table_dir))
    assert len(rows) == len(set(rows)), "an offset was stored twice"
    assert set(rows) == expected, (len(set(rows)), len(expected))
    assert h.parquet_files_on_disk(table_dir) == h.referenced_files(table_dir)
    assert "orders" in out
    # The polars reader agrees.
    assert h.read_polars(str(table_dir)).height == len(expected)
    # Commits of killed runs reach the ledger through later runs, each exactly once.
    h.assert_ledger_complete(str(root), "orders")
    print(f"rows after each kill: {progress}; final {len(rows)}")


def test_reading_goes_on_while_a_commit_runs_and_a_kill_then_loses_nothing(tmp_path):
    """Commits run in the background: with the first batch's commit held between its upload and its log
    write, bronze still consumes what follows (a commit in the loop would stop it at the batch). Killed
    with -9 right then (files uploaded, not committed, later rows buffered), the restart stores every
    event exactly once and sweeps the held commit's files."""
    topic = h.unique("overlap.orders")
    h.create_topics({topic: 2})
    produced = h.produce(events_for(7, 3_000), {"orders": topic})
    expected = h.data_offsets(produced)
    root = tmp_path / "lake"
    table_dir = root / "orders"
    # One flush by rows, at two thirds of the rows: the last third stays below the limit (no age flush).
    cfg, url = h.orders_member(tmp_path, h.unique("overlap"), root, topic, flush_age="10m",
                               max_rows=len(expected) * 2 // 3)
    hold = tmp_path / "hold-commits"
    hold.touch()
    proc = h.start_bronze(cfg, env={"BRONZE_HOLD_COMMITS_WHILE": str(hold)}, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_events_consumed_total") == len(produced), 60,
                     what="every message consumed while the first commit is held")
        assert h.parquet_files_on_disk(table_dir), "the held batch is uploaded"
        assert h.stored_offsets(str(table_dir)) == [], "and not committed"
        assert h.metric(h.scrape(url), "bronze_rows_written_total") == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    hold.unlink()
    h.age_files(table_dir, 2 * 3600)
    h.run_bronze(cfg, "run", "--until-caught-up")
    h.assert_exactly_once(str(table_dir), expected)
    assert h.parquet_files_on_disk(table_dir) == h.referenced_files(table_dir)


def pipelined_member(tmp_path, name: str):
    """A topic of orders and a member that flushes by rows, three batches of them, with its commits
    held between upload and log write while `hold` exists."""
    topic = h.unique(f"{name}.orders")
    # One partition: a partition's first message waits for a running commit (its position is read
    # from the table), so with two the second could wait behind the held commit.
    h.create_topics({topic: 1})
    produced = h.produce(events_for(11, 3_000), {"orders": topic})
    expected = h.data_offsets(produced)
    root = tmp_path / "lake"
    cfg, url = h.orders_member(tmp_path, h.unique(name), root, topic, flush_age="10m",
                               max_rows=len(expected) // 3)
    hold = tmp_path / "hold-commits"
    hold.touch()
    log = tmp_path / "bronze.log"
    env = {"BRONZE_HOLD_COMMITS_WHILE": str(hold),
           "RUST_LOG": "info,bronze::pipeline::upload_ahead=debug,buoyant_kernel=off,delta_kernel=off"}
    proc = h.start_bronze(cfg, env=env, log=log)
    # The first batch's commit is held; the second is uploaded meanwhile.
    try:
        h.wait_until(lambda: "uploaded ahead of the commit before it" in log.read_text(), 60,
                     what="the second batch uploaded while the first commit is held")
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        raise
    return proc, cfg, url, hold, root / "orders", expected


def test_the_next_batch_uploads_while_one_commits_and_both_commit_in_order(tmp_path):
    """`commits_in_flight = 2` (the default): with the first batch's commit held, the second is built
    and uploaded meanwhile, and commits, with the file it uploaded, only after the first landed."""
    proc, cfg, url, hold, table_dir, expected = pipelined_member(tmp_path, "pipelined")
    try:
        time.sleep(1)
        assert h.stored_offsets(str(table_dir)) == [], "neither committed: the second waits for the first"
        uploaded = h.parquet_files_on_disk(table_dir)
        hold.unlink()
        h.wait_until(lambda: len([c for c in h.delta_history(str(table_dir)) if c.get("bronze")]) >= 2, 60,
                     what="both batches committed")
    finally:
        hold.unlink(missing_ok=True)
        # The rest is committed by the shutdown's last flush.
        assert h.stop(proc) == 0
    h.assert_exactly_once(str(table_dir), expected)
    commits = [c["bronze"] for c in reversed(h.delta_history(str(table_dir))) if c.get("bronze")]
    last = {}
    for c in commits:
        for r in c["offsets"]:
            tp = (r["topic"], r["partition"])
            assert r["first_offset"] > last.get(tp, -1), "a later batch committed before an earlier one"
            last[tp] = r["last_offset"]
    # The second commit took the file uploaded ahead: nothing was written twice or left behind.
    assert uploaded <= h.referenced_files(table_dir)
    assert h.parquet_files_on_disk(table_dir) == h.referenced_files(table_dir)


def test_a_kill_with_one_batch_committing_and_the_next_uploaded_loses_nothing(tmp_path):
    proc, cfg, url, hold, table_dir, expected = pipelined_member(tmp_path, "pipekill")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    hold.unlink()
    assert h.stored_offsets(str(table_dir)) == []
    h.age_files(table_dir, 2 * 3600)
    h.run_bronze(cfg, "run", "--until-caught-up")
    h.assert_exactly_once(str(table_dir), expected)
    assert h.parquet_files_on_disk(table_dir) == h.referenced_files(table_dir)


def test_until_caught_up_ends_when_the_table_is_ahead_of_the_group_offsets(tmp_path):
    """A crash between a Delta commit and the group-offset commit leaves the group behind the table. The
    next `--until-caught-up` run either reads the table's position before any message (it is the end of
    the partition: nothing to do) or seeks there on the first message; no message arrives after the seek,
    and either way the run must see that it is caught up and store nothing again."""
    from confluent_kafka import Consumer, TopicPartition
    topic = h.unique("caughtup.orders")
    h.create_topics({topic: 1})
    produced = h.produce(events_for(3, 400), {"orders": topic})
    root = tmp_path / "lake"
    group = h.unique("caughtup")
    cfg = h.write_config(tmp_path, group=group, root=str(root), datasets=h.keyless_orders(topic))
    h.run_bronze(cfg, "run", "--until-caught-up")
    rows = len(h.stored_offsets(str(root / "orders")))
    assert rows == len(h.data_offsets(produced))
    # The group's offsets go back to the start, as if the process died right after the Delta commit.
    c = Consumer({"bootstrap.servers": h.bootstrap(), "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 0)], asynchronous=False)
    c.close()
    out = h.run_bronze(cfg, "run", "--until-caught-up", timeout=120)
    assert "caught up with the high watermarks" in out.stderr
    assert "seeking to the table's position" in out.stderr or "committed dataset" not in out.stderr
    h.assert_no_duplicate_offsets(h.read_delta(str(root / "orders")))
    assert len(h.stored_offsets(str(root / "orders"))) == rows
