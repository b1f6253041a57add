"""Compaction and vacuum on real Delta tables: 200 small files of a sealed partition become
≤ ceil(bytes / target) + 1 files with identical content in one `dataChange=false` commit; unsealed
partitions are left to live appends unless asked; background compaction meets concurrent streaming
without a failed commit; vacuum deletes only files removed longer ago than the retention, behind a guard."""

import json
import math
import threading
import time
from pathlib import Path

import harness as h
from harness.setups import ID_COLUMN, change, one_dataset, send

CONTRACT = ID_COLUMN + """
[[columns]]
name = "payload"
type = "string"
"""

OLD_DAY_MS = 1_600_000_000_000   # 2020-09-13: a sealed partition
TODAY_MS = int(time.time() * 1000)


def produce(topic, ids, ts_ms):
    send(topic, ((str(i), change(i, {"id": i, "payload": f"p{i}" * 5}, ts_ms=ts_ms, ts_step_ms=1))
                 for i in ids))


def setup(tmp_path, name, extra=""):
    d = one_dataset(tmp_path, name, CONTRACT, max_rows=5, flush_age="200ms", extra=extra)
    return d.topic, d.config, d.table


def files_by_partition(table_dir: Path) -> dict:
    out = {}
    for f in h.referenced_files(table_dir):
        out.setdefault(f.split("/")[0], []).append(f)
    return out


def content(uri):
    rows = h.read_delta(uri).drop_columns(["_batch_id", "_ingested_at"]).to_pylist()
    return sorted(rows, key=lambda r: r["_offset"])


def dictionary_columns(path: Path) -> dict:
    """Column name -> whether every row group of the Parquet file at `path` dictionary-encodes it."""
    import pyarrow.parquet as pq
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    return {name: all("DICTIONARY" in " ".join(meta.row_group(r).column(i).encodings)
                      for r in range(meta.num_row_groups))
            for i, name in enumerate(names)}


def last_commit_actions(table_dir: Path) -> list[dict]:
    last = sorted((table_dir / "_delta_log").glob("*.json"))[-1]
    return [json.loads(line) for line in last.read_text().splitlines() if line]


def test_small_files_of_sealed_partitions_are_compacted_and_vacuumed(tmp_path):
    extra = '[vacuum]\nretention = "1h"\nmin_retention = "2s"\n'
    topic, cfg, table = setup(tmp_path, "compact", extra)
    produce(topic, range(1000), OLD_DAY_MS)
    produce(topic, range(1000, 1100), TODAY_MS)
    h.run_bronze(cfg, "run", "--until-caught-up")
    parts = files_by_partition(table)
    old, today = "event_date=2020-09-13", next(p for p in parts if p != "event_date=2020-09-13")
    assert len(parts[old]) >= 150, f"{len(parts[old])} files: the test needs many small ones"
    before = content(str(table))
    assert len(before) == 1100

    dry = json.loads(h.run_bronze(cfg, "compact", "--dry-run", "--json").stdout)
    assert (dry["partitions_compacted"], dry["partitions_skipped_unsealed"]) == (1, 1)
    report = json.loads(h.run_bronze(cfg, "compact", "--json").stdout)
    assert report["partitions_compacted"] == 1 and report["files_removed"] == len(parts[old])
    after = files_by_partition(table)
    total = sum((table / f).stat().st_size for f in after[old])
    assert len(after[old]) <= math.ceil(total / (128 * 1024 * 1024)) + 1
    assert len(after[today]) == len(parts[today]), "an unsealed partition is left to live appends"
    assert content(str(table)) == before, "compaction changed the content"
    actions = last_commit_actions(table)
    ops = [a["commitInfo"]["operation"] for a in actions if "commitInfo" in a]
    assert ops == ["OPTIMIZE"]
    assert all(not a[k]["dataChange"] for a in actions for k in ("add", "remove") if k in a)
    assert h.read_polars(str(table)).height == 1100
    # The rewrite chooses dictionaries from a sample of the partition, as the sink does per flush:
    # none for the unique key, one for a column whose values repeat.
    encodings = dictionary_columns(table / after[old][0])
    assert encodings["id"] is False and encodings["_op"] is True, encodings
    removed_old = set(parts[old])

    # Vacuum: the guard first, then only files removed longer ago than the retention go.
    out = h.run_bronze(cfg, "vacuum", "--retention", "1s", check=False)
    assert out.returncode != 0 and "below vacuum.min_retention" in out.stderr
    assert json.loads(h.run_bronze(cfg, "vacuum", "--json").stdout)["files_deleted"] == 0
    time.sleep(5)
    report = json.loads(h.run_bronze(cfg, "compact", "--all-partitions", "--json").stdout)
    assert report["partitions_compacted"] == 1
    removed_today = set(parts[today])
    vac = json.loads(h.run_bronze(cfg, "vacuum", "--retention", "4s", "--json").stdout)
    on_disk = h.parquet_files_on_disk(table)
    assert vac["files_deleted"] == len(removed_old)
    assert not (removed_old & on_disk), "files removed 5 s ago should be gone"
    assert removed_today <= on_disk, "files removed just now must stay"
    assert h.referenced_files(table) <= on_disk
    assert content(str(table)) == before


def test_background_compaction_meets_live_appends_without_failed_commits(tmp_path):
    port = h.free_port()
    extra = (f'[metrics]\naddress = "127.0.0.1:{port}"\n'
             '[compaction]\ninterval = "1s"\nsealed_after = "0s"\n')
    topic, cfg, table = setup(tmp_path, "compactlive", extra)
    stop = threading.Event()
    produced = []

    def producer():
        n = 0
        # Bounded, and about what 5-row flushes commit: the backlog drains at the commit rate, and a
        # compaction that keeps losing to the streaming commits (it retries) must not grow it without end.
        while not stop.is_set() and n < 3_000:
            produce(topic, range(n, n + 20), OLD_DAY_MS)
            produced.extend(range(n, n + 20))
            n += 20
            time.sleep(0.25)

    proc = h.start_bronze(cfg, log=tmp_path / "bronze.log")
    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        h.wait_until(lambda: sum(c.get("operation") == "OPTIMIZE" for c in h.delta_history(str(table))) >= 3
                     if (table / "_delta_log").exists() else False, 90, interval=1, what="three compactions")
    finally:
        stop.set()
        t.join(timeout=60)
    h.wait_until(lambda: len(h.stored_offsets(str(table))) >= len(produced), 180, interval=1, what="catching up")
    metrics = h.scrape(f"http://127.0.0.1:{port}/metrics")
    assert h.metric(metrics, "bronze_commit_errors_total", dataset="events") == 0
    assert h.metric(metrics, "bronze_compaction_files_removed_total", dataset="events") > 0
    assert "bronze_table_small_files" in metrics
    assert h.stop(proc) == 0
    rows = h.stored_offsets(str(table))
    assert len(rows) == len(set(rows)) == len(produced), "a row was lost or doubled"
    history = h.delta_history(str(table))
    ops = [c.get("operation") for c in reversed(history)]
    first, last = ops.index("OPTIMIZE"), len(ops) - 1 - ops[::-1].index("OPTIMIZE")
    assert "WRITE" in ops[first:last], "appends went on between compactions"
