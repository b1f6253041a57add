"""The S3 path against a real S3-compatible server (moto, which honours `If-None-Match: *` on PUT, as
Delta commits need): end to end, and two processes committing to one table at the same time."""

import time

import harness as h
from conftest import BUCKET
from harness import cdc
from harness.moto import s3_storage_block
from test_e2e import check_tables


def s3_config(tmp_path, endpoint, prefix, datasets, **kw):
    cfg = h.write_config(tmp_path, group=h.unique("s3"), root=f"s3://{BUCKET}/{prefix}", datasets=datasets, **kw)
    # [storage.s3] must follow [storage]: insert it right after the storage block.
    text = cfg.read_text().replace("\n[flush]", s3_storage_block(endpoint) + "\n[flush]", 1)
    cfg.write_text(text)
    return cfg


def test_end_to_end_on_s3(tmp_path, s3):
    ct, ot = h.unique("s3.customers"), h.unique("s3.orders")
    h.create_topics({ct: 2, ot: 3})
    produced = h.produce(cdc.generate(12_000, seed=5).events, {"customers": ct, "orders": ot})
    prefix = h.unique("e2e")
    cfg = s3_config(tmp_path, s3, prefix, h.cdc_datasets(ct, ot), max_rows=3000)
    assert "will be created" in h.run_bronze(cfg, "validate").stdout
    run = h.run_bronze(cfg, "run", "--until-caught-up")
    check_tables(f"s3://{BUCKET}/{prefix}", produced, run.stdout)
    assert "at version" in h.run_bronze(cfg, "validate").stdout


def test_two_processes_commit_concurrently_to_one_s3_table(tmp_path, s3):
    topic = h.unique("s3.concurrent")
    h.create_topics({topic: 4})
    prefix = h.unique("conc")
    # Small, frequent flushes so the two writers' commits interleave and race.
    cfg = s3_config(tmp_path, s3, prefix, h.keyless_orders(topic), flush_age="100ms", max_rows=300)
    uri = f"s3://{BUCKET}/{prefix}/orders"
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    a = h.start_bronze(cfg, log=logs[0])
    b = h.start_bronze(cfg, log=logs[1])
    produced = []
    try:
        # Traffic starts once both members own partitions, so both write at the same time.
        h.wait_until(lambda: all(f"partitions assigned partitions=[{topic}[" in l.read_text() for l in logs), 60,
                     what="both members assigned")
        time.sleep(3)
        for seed in range(6):
            plan = cdc.generate(6_000, seed=40 + seed)
            produced += h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic})
            time.sleep(0.5)
        expected = h.data_offsets(produced)
        h.wait_until(lambda: len(h.stored_offsets(uri)) >= len(expected), 240, interval=1, what="both writers")
    finally:
        assert h.stop(a) == 0
        assert h.stop(b) == 0
    rows = h.stored_offsets(uri)
    assert len(rows) == len(set(rows))
    assert set(rows) == expected
    history = [c for c in reversed(h.delta_history(uri)) if c.get("bronze")]
    runs = [c["bronze"]["run_id"] for c in history]
    assert len(set(runs)) == 2, "both processes committed"
    # The writers' commits interleave in the log: they really committed concurrently.
    switches = sum(1 for x, y in zip(runs, runs[1:]) if x != y)
    assert switches >= 5, runs
    # No commit was lost: the rows the commits report add up to the table.
    assert sum(c["bronze"]["rows_written"] for c in history) == len(rows)
    # Both processes transcribe the table's log into one ledger, racing: each version lands once.
    h.assert_ledger_complete(f"s3://{BUCKET}/{prefix}", "orders")
    text = "".join(l.read_text() for l in logs)
    print(f"commits={len(history)} interleavings={switches} conflicts retried={text.count('commit conflict')}")
