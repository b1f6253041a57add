"""The local disk fills up while bronze writes: the table root is on a small tmpfs of the test's own,
filled to the last byte by a ballast file after the first commits. Commits fail with the system's
reason, readiness goes false, nothing half-committed is visible to a reader, and once space returns
every row lands exactly once (independent reader: Python deltalake)."""

import subprocess
import time

import harness as h
from harness import cdc


def produce_orders(topic: str, n: int, seed: int):
    return h.produce([e for e in cdc.generate(n, seed=seed).events if e.table == "orders"], {"orders": topic})


def readiness(url: str):
    try:
        return h.http_json(url.replace("/metrics", "/readyz"))
    except OSError:
        return None, {}


def fill(path) -> None:
    """Write zeros to `path` until the file system is full."""
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64k"], capture_output=True)


def test_disk_full_while_writing_fails_clearly_and_recovers_when_space_returns(tmp_path):
    disk = tmp_path / "small-disk"
    disk.mkdir()
    # Root in the test machines (and CI): a tmpfs of the test's own, so nothing else fills up.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], check=True)
    try:
        topic = h.unique("disk.full")
        h.create_topics({topic: 2})
        root = disk / "lake"
        uri = str(root / "orders")
        cfg, url = h.orders_member(tmp_path, h.unique("diskfull"), root, topic, flush_age="300ms", max_rows=500)
        log = tmp_path / "bronze.log"
        proc = h.start_bronze(cfg, log=log)
        try:
            produced = produce_orders(topic, 1_000, seed=91)
            h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 90, interval=1,
                         what="the first rows")
            ballast = disk / "ballast"
            fill(ballast)
            produced += produce_orders(topic, 2_000, seed=92)
            status, body = h.wait_until(lambda: (lambda r: r if r[0] == 503 else None)(readiness(url)), 60,
                                        what="readiness false with the disk full")
            h.wait_until(lambda: "No space left on device" in log.read_text(errors="replace"), 30,
                         what="the system's reason in the log")
            # What a reader sees meanwhile: only whole commits, each row once.
            rows = h.stored_offsets(uri)
            assert len(rows) == len(set(rows)) and set(rows) <= h.data_offsets(produced)
            time.sleep(3)
            assert proc.poll() is None, "bronze keeps running with the disk full"
            print(f"readiness while full: {status} {body}")
            ballast.unlink()
            freed = time.time()
            h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 120, interval=1,
                         what="every row once space returned")
            print(f"every row in {time.time() - freed:.1f} s after space returned")
            h.wait_until(lambda: readiness(url)[0] == 200, 60, what="ready again")
        finally:
            assert h.stop(proc) == 0
        h.assert_exactly_once(uri, h.data_offsets(produced))
        h.assert_ledger_complete(str(root), "orders")
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
