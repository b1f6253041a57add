"""Backfills on the real broker: the partitions of a range are rebuilt from Kafka (here under a fixed
contract) and replaced in one Delta commit; other partitions are untouched; the same request again is a
no-op, forced it rebuilds identical content; streaming into the same partitions while a backfill runs loses
and doubles nothing."""

import json
import threading
import time
from pathlib import Path

import harness as h
from harness.setups import ID_COLUMN, change, one_dataset, send

CONTRACT = ID_COLUMN + """
[[columns]]
name = "seen_at"
type = "timestamp"
on_error = "null"
{formats}
"""

DAY_MS = 86_400_000
D1_MS = 1_761_955_200_000   # 2025-11-01T00:00:00Z
DAYS = ["2025-11-01", "2025-11-02", "2025-11-03", "2025-11-04", "2025-11-05"]


def event(i, day):
    ts = D1_MS + day * DAY_MS + (i % 80_000) * 1000
    return change(i, {"id": i, "seen_at": f"0{1 + day}.11.2025 10:00"}, ts_ms=ts, ts_step_ms=0)


def produce(topic, items):
    send(topic, ((str(i), event(i, day)) for i, day in items))


def setup(tmp_path, name, **kw):
    # v1 of the contract: the source's date format is not understood.
    d = one_dataset(tmp_path, name, CONTRACT.format(formats=""), partitions=2, **kw)
    return d.topic, d.config, d.schema, d.table


def files_of(table: Path, day: str) -> set:
    return {f for f in h.referenced_files(table) if f.startswith(f"event_date={day}/")}


def content(uri):
    rows = h.read_delta(uri).drop_columns(["_batch_id", "_ingested_at"]).to_pylist()
    return sorted(rows, key=lambda r: (r["_partition"], r["_offset"]))


def test_backfill_replaces_three_partitions_in_one_commit(tmp_path):
    topic, cfg, schema, table = setup(tmp_path, "backfill", max_rows=40)
    produce(topic, [(i, i % 5) for i in range(500)])
    h.run_bronze(cfg, "run", "--until-caught-up")
    before = content(str(table))
    assert len(before) == 500 and all(r["seen_at"] is None for r in before)
    untouched = {d: files_of(table, d) for d in (DAYS[0], DAYS[4])}
    replaced = {d: files_of(table, d) for d in DAYS[1:4]}
    version_before = h.delta_history(str(table))[0]["version"]

    # The fix: the contract learns the source's format; the three middle days are rebuilt.
    schema.write_text(CONTRACT.format(formats='formats = ["%d.%m.%Y %H:%M"]'))
    dry = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "events", "--from", DAYS[1], "--to", DAYS[4],
                                  "--request-id", "fix-1", "--dry-run", "--json").stdout)
    assert dry["status"] == "dry_run" and dry["rows_written"] == 300
    assert h.delta_history(str(table))[0]["version"] == version_before
    out = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "events", "--from", DAYS[1], "--to", DAYS[4],
                                  "--request-id", "fix-1", "--json").stdout)
    assert out["status"] == "succeeded", out
    assert out["partitions"] == [f"event_date={d}" for d in DAYS[1:4]]
    assert out["rows_written"] == 300 and out["rows_outside"] == 200 and out["messages_read"] == 500
    assert out["files_removed"] == sum(len(f) for f in replaced.values())

    after = content(str(table))
    assert [(r["_partition"], r["_offset"]) for r in after] == [(r["_partition"], r["_offset"]) for r in before]
    for r in after:
        fixed = r["event_date"] in DAYS[1:4]
        assert (r["seen_at"] is not None) == fixed, r
    for d, files in untouched.items():
        assert files_of(table, d) == files, f"{d} was touched"
    for d, files in replaced.items():
        assert not (files_of(table, d) & files), f"{d} still has old files"
    history = h.delta_history(str(table))
    new = [c for c in history if c["version"] > version_before]
    assert len(new) == 1 and new[0]["operation"] == "WRITE"
    assert new[0]["operationParameters"]["mode"] == "Overwrite"
    assert new[0]["bronze"]["request_id"] == "fix-1"
    assert h.read_polars(str(table)).height == 500

    # The same request again: a no-op. Forced: rebuilt, same content.
    again = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "events", "--from", DAYS[1], "--to", DAYS[4],
                                    "--request-id", "fix-1", "--json").stdout)
    assert again["status"] == "already_done"
    assert h.delta_history(str(table))[0]["version"] == out["table_version"]
    forced = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "events", "--from", DAYS[1], "--to", DAYS[4],
                                     "--request-id", "fix-1", "--force", "--json").stdout)
    assert forced["status"] == "succeeded" and forced["table_version"] == out["table_version"] + 1
    assert content(str(table)) == after

    for bad, reason in ((["--from", DAYS[3], "--to", DAYS[1]], "inverted"),
                        (["--from", "2020-01-01", "--to", "2025-01-01"], "backfill.max_range"),
                        (["--dataset", "nope", "--from", DAYS[1], "--to", DAYS[2]], "unknown dataset")):
        args = ["backfill", *(["--dataset", "events"] if "--dataset" not in bad else []), *bad]
        res = h.run_bronze(cfg, *args, check=False)
        assert res.returncode != 0 and reason in res.stderr, res.stderr


def test_streaming_into_the_replaced_partitions_during_a_backfill_loses_and_doubles_nothing(tmp_path):
    topic, cfg, schema, table = setup(tmp_path, "backfilllive", flush_age="200ms", max_rows=50)
    produce(topic, [(i, i % 5) for i in range(4000)])
    h.run_bronze(cfg, "run", "--until-caught-up")
    schema.write_text(CONTRACT.format(formats='formats = ["%d.%m.%Y %H:%M"]'))
    stop = threading.Event()
    produced = 4000

    def producer():
        nonlocal produced
        while not stop.is_set():
            produce(topic, [(i, 1 + i % 3) for i in range(produced, produced + 25)])   # into replaced days
            produced += 25
            time.sleep(0.05)

    proc = h.start_bronze(cfg, log=tmp_path / "stream.log")
    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        time.sleep(2)
        out = json.loads(h.run_bronze(cfg, "backfill", "--dataset", "events", "--from", DAYS[1], "--to",
                                      DAYS[4], "--request-id", "live-1", "--json").stdout)
        time.sleep(2)
    finally:
        stop.set()
        t.join(timeout=60)
    h.wait_until(lambda: len(h.stored_offsets(str(table))) >= produced, 90, what="streaming to catch up")
    assert h.stop(proc) == 0
    assert out["status"] == "succeeded", out
    rows = h.stored_offsets(str(table))
    assert len(rows) == len(set(rows)) == produced, f"{len(rows)} rows, {len(set(rows))} distinct, {produced} produced"
    print(f"backfill attempts under live streaming: {out['attempts']}, rows {out['rows_written']}, "
          f"{out['duration_ms']} ms")
