"""Bounded memory: a burst of large messages far above the memory budget is ingested with peak RSS near
the budget, because the budget forces early flushes. The same burst with a huge budget shows the test can
tell the difference."""

import json
import base64
import random
import re

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
