"""Bounded memory: a burst of large messages far above the memory budget is ingested with peak RSS near
the budget, because the budget forces early flushes. The same burst with a huge budget shows the test can
tell the difference."""

import base64
import json
import random
import re
import time

import harness as h

SCHEMAS = h.REPO / "tests" / "schemas"
MIB = 1024 * 1024


def blobs_dataset(topic: str) -> list[dict]:
    # Only the memory budget can trigger a flush: rows, bytes and age limits are far away.
    return [{"name": '"blobs"', "topics": f'["{topic}"]', "format": '"json"', "schema": f'"{SCHEMAS / "blobs.toml"}"',
             "partitioning": '{ by = "date", time_column = "_ingested_at" }',
             "flush": '{ max_rows = 10000000, max_bytes = 4294967296, max_age = "10m" }'}]


class Blob:
    def __init__(self, i: int, size: int, rng: random.Random):
        self.table = "blobs"
        self.key = str(i).encode()
        # Incompressible text: librdkafka bounds its prefetch queue in compressed bytes, so a highly
        # compressible burst would measure the codec's ratio, not bronze's buffers.
        text = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        self.value = json.dumps({"id": i, "payload": text}).encode()
        self.op = "c"
        self.row_id = i
        self.source_ts_ms = None


def peak_rss(stdout: str) -> float:
    m = re.search(r"peak RSS: ([0-9.]+) MiB", stdout)
    assert m, stdout
    return float(m.group(1))


def ingest(tmp_path, name: str, topic: str, budget: int) -> tuple[float, str]:
    d = tmp_path / name
    cfg = h.write_config(d, group=h.unique(name), root=str(d / "lake"), datasets=blobs_dataset(topic), budget=budget)
    out = h.run_bronze(cfg, "run", "--until-caught-up", timeout=600).stdout
    return peak_rss(out), str(d / "lake" / "blobs")


def test_burst_stays_within_the_memory_budget(tmp_path):
    rng = random.Random(1)
    small, burst = h.unique("mem.small"), h.unique("mem.burst")
    h.create_topics({small: 2, burst: 4})
    h.produce([Blob(i, 1024, rng) for i in range(50)], {"blobs": small})
    n, size = 640, 256 * 1024  # 160 MiB burst, ten times the budget
    produced = h.produce([Blob(i, size, rng) for i in range(n)], {"blobs": burst})
    budget = 16 * MIB

    baseline, _ = ingest(tmp_path, "baseline", small, budget)
    bounded, uri = ingest(tmp_path, "bounded", burst, budget)
    unbounded, _ = ingest(tmp_path, "unbounded", burst, 4096 * MIB)
    print(f"peak RSS MiB: baseline {baseline:.0f}, burst with 16 MiB budget {bounded:.0f}, "
          f"burst with 4 GiB budget {unbounded:.0f}")

    # Every row landed, in several budget-triggered flushes.
    table = h.read_delta(uri)
    assert table.num_rows == n
    assert len(set(h.offsets_of(table))) == len(produced)
    flushes = [c for c in h.delta_history(uri) if c.get("bronze")]
    assert len(flushes) >= 160 // 16, len(flushes)
    # Growth over the idle process stays within a small multiple of the budget (buffer, one batch being
    # encoded, librdkafka's prefetch queue), while without a budget it grows with the burst.
    assert bounded - baseline < 4 * budget / MIB, (baseline, bounded)
    assert unbounded - baseline > 150, (baseline, unbounded)


def test_storage_outage_pauses_partitions_within_budget_then_recovers(tmp_path):
    """Commits fail while an outage is injected: bronze keeps the failed batch, buffers up to the budget,
    then pauses the partitions instead of growing; when storage returns, everything lands exactly once."""
    rng = random.Random(2)
    topic = h.unique("mem.outage")
    h.create_topics({topic: 2})
    budget = 8 * MIB
    port = h.free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    datasets = blobs_dataset(topic)
    datasets[0]["flush"] = '{ max_age = "200ms" }'
    cfg = h.write_config(tmp_path, group=h.unique("outage"), root=str(tmp_path / "lake"), datasets=datasets,
                         budget=budget, extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n'
                         '\n[kafka.properties]\n"statistics.interval.ms" = "1000"\n')
    outage = tmp_path / "storage-down"
    outage.touch()
    produced = h.produce([Blob(i, 64 * 1024, rng) for i in range(400)], {"blobs": topic})  # 25 MiB
    proc = h.start_bronze(cfg, env={"BRONZE_FAIL_COMMITS_WHILE": str(outage)}, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_paused_partitions") == 2, 60, what="partitions paused")
        time.sleep(2)
        text = h.scrape(url)
        assert h.metric(text, "bronze_paused_partitions") == 2
        assert h.metric(text, "bronze_commit_errors_total", dataset="blobs") >= 1
        # Held back, not buffered: memory stays near the budget (plus what librdkafka had already fetched
        # when the pause landed) and most of the burst waits in Kafka.
        assert h.metric(text, "bronze_buffer_bytes") <= budget + budget // 4
        assert h.metric(text, "bronze_events_consumed_total") < len(produced)
        readyz = url.replace("/metrics", "/readyz")
        status, body = h.http_json(readyz)
        assert status == 503 and "commits failing" in " ".join(body["reasons"]), body
        # Nothing committed yet: the lag counts every produced message (watermarks every 1 s).
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_consumer_lag_messages") == len(produced), 30,
                     what="lag while storage is down")
        outage.unlink()
        uri = str(tmp_path / "lake" / "blobs")
        h.wait_until(lambda: len(h.offsets_of(h.read_delta(uri))) >= len(produced), 120, what="recovery")
        h.wait_until(lambda: h.metric(h.scrape(url), "bronze_paused_partitions") == 0, 10, what="resume")
        assert h.http_json(readyz)[0] == 200
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    table = h.read_delta(uri)
    assert sorted(h.offsets_of(table)) == sorted((p.topic, p.partition, p.offset) for p in produced)
    # Files uploaded by the refused commits were deleted, not left behind.
    table_dir = tmp_path / "lake" / "blobs"
    assert h.parquet_files_on_disk(table_dir) == h.referenced_files(table_dir)
