"""The S3 path through a store that behaves like a remote one: latency, a fraction of requests
answered 503 SlowDown or 500, answers lost after the write happened (the hardest case for a commit:
it landed, its writer was told it failed), answers slower than the client's timeout, and the store
gone for 30 s in the middle of a commit and between the upload and the commit. Every case is checked
by an independent reader (Python deltalake, straight to moto): nothing lost, nothing doubled."""

import time
from collections import Counter
from urllib.parse import unquote

import harness as h
from conftest import BUCKET
from harness import cdc
from harness.moto import s3_storage_block
from harness.store_proxy import Fault, StoreProxy


def faulty_s3_config(tmp_path, endpoint: str, prefix: str, topic: str, max_retries: int = 2, **kw):
    """Orders from `topic` into s3://BUCKET/prefix through `endpoint`, with client timeouts and
    retries short enough that the store's faults reach bronze's own commit retries in a test."""
    cfg = h.write_config(tmp_path, group=h.unique("faults"), root=f"s3://{BUCKET}/{prefix}",
                         datasets=h.keyless_orders(topic), **kw)
    block = s3_storage_block(endpoint, request_timeout="2s", connect_timeout="1s", max_retries=max_retries,
                             retry_timeout="5s")
    cfg.write_text(cfg.read_text().replace("\n[flush]", block + "\n[flush]", 1))
    return cfg


def assert_commits_in_order(uri: str) -> int:
    """Each partition's batches were committed in offset order (a later batch never before an earlier
    one, which pipelined commits must keep); how many commits carried rows."""
    last: dict = {}
    commits = [c["bronze"] for c in reversed(h.delta_history(uri)) if c.get("bronze", {}).get("offsets")]
    for c in commits:
        for r in c["offsets"]:
            tp = (r["topic"], r["partition"])
            assert r["first_offset"] > last.get(tp, -1), (tp, r, last.get(tp))
            last[tp] = r["last_offset"]
    return len(commits)


def produce_orders(topic: str, n: int, seed: int):
    return h.produce([e for e in cdc.generate(n, seed=seed).events if e.table == "orders"], {"orders": topic})


def test_exactly_once_through_a_slow_store_that_fails_and_loses_answers(tmp_path, s3):
    topic = h.unique("faults.flaky")
    h.create_topics({topic: 3})
    produced = produce_orders(topic, 8_000, seed=71)
    prefix = h.unique("flaky")
    with StoreProxy(s3) as proxy:
        proxy.latency_ms, proxy.jitter_ms = 20, 10
        proxy.add(Fault(rate=0.05, status=503))
        proxy.add(Fault(methods={"PUT"}, path_contains=".parquet", rate=0.2, status=500))
        # Commits that land and are answered 500, or answered after the client gave up: each must be
        # found in the table by its retry, neither dropped as another member's nor its files deleted.
        lost = proxy.add(Fault(methods={"PUT"}, path_contains="_delta_log/0", forwarded=True,
                               status=500, rate=0.3, count=3))
        late = proxy.add(Fault(methods={"PUT"}, path_contains="_delta_log/0", status=None,
                               stall_s=3, rate=0.3, count=2))
        # Random 503s hit every kind of request, start-up reads included: the client's own retries
        # absorb them (a request failing 4 times in a row is one in 160,000 at this rate).
        cfg = faulty_s3_config(tmp_path, proxy.endpoint, prefix, topic, max_retries=3, max_rows=700,
                               flush_age="200ms")
        run = h.run_bronze(cfg, "run", "--until-caught-up", timeout=240)
        counts = dict(proxy.counts)
    uri = f"s3://{BUCKET}/{prefix}/orders"
    h.assert_exactly_once(uri, h.data_offsets(produced))
    log = run.stderr
    found = log.count("landed although its answer was lost")
    print(f"requests={sum(counts.get(m, 0) for m in ('GET', 'PUT', 'HEAD', 'POST', 'DELETE'))} "
          f"counts={counts} lost_answers={lost.hits} late_answers={late.hits} found_by_retry={found} "
          f"commit_errors={log.count('commit failed; batch kept for retry')}")
    assert counts.get("injected_503", 0) > 0 and counts.get("injected_500", 0) > 0
    # Several commits, in order (fewer than rows / max_rows: while a failed batch waits for its
    # retry, the buffer behind it grows past max_rows and goes as one batch).
    assert assert_commits_in_order(uri) >= 3
    assert lost.hits + late.hits > 0, "no commit lost its answer: the case was not exercised"
    # Every commit the table holds is one bronze reported: the rows of the log add up to the table.
    history = [c for c in h.delta_history(uri) if c.get("bronze")]
    assert sum(c["bronze"]["rows_written"] for c in history) == len(h.stored_offsets(uri))


def test_store_down_for_30s_mid_commit_and_between_upload_and_commit(tmp_path, s3):
    topic = h.unique("faults.down")
    h.create_topics({topic: 2})
    prefix = h.unique("down")
    uri = f"s3://{BUCKET}/{prefix}/orders"
    with StoreProxy(s3) as proxy:
        proxy.latency_ms = 5
        cfg = faulty_s3_config(tmp_path, proxy.endpoint, prefix, topic, max_rows=2000, flush_age="300ms")
        log = tmp_path / "bronze.log"
        proc = h.start_bronze(cfg, log=log)
        produced = []
        try:
            produced += produce_orders(topic, 2_000, seed=72)
            h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 90, interval=1,
                         what="the first rows")
            cases = [
                # The log entry is written, then the store goes away before the answer.
                ("mid-commit", Fault(methods={"PUT"}, path_contains="_delta_log/0", forwarded=True,
                                     outage_s=30, count=1)),
                # A data file is uploaded, then the store goes away before the commit.
                ("after-upload", Fault(methods={"PUT"}, path_contains=".parquet", forwarded=True,
                                       outage_s=30, count=1)),
            ]
            for seed, (name, fault) in enumerate(cases, start=73):
                proxy.add(fault)
                produced += produce_orders(topic, 3_000, seed=seed)
                h.wait_until(lambda: fault.hits == 1, 60, what=f"{name}: the outage")
                h.wait_until(lambda: not proxy.is_down(), 40, what=f"{name}: the store back")
                back = time.time()
                # Rows produced after the store came back are committed too: the pipeline recovered.
                produced += produce_orders(topic, 500, seed=seed + 10)
                h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 120, interval=1,
                             what=f"{name}: every row after the outage")
                print(f"{name}: every row in {time.time() - back:.1f} s after the store came back, "
                      f"requests refused while down {proxy.counts['refused']}")
                assert proc.poll() is None, "bronze kept running through the outage"
        finally:
            assert h.stop(proc) == 0
    h.assert_exactly_once(uri, h.data_offsets(produced))
    assert_commits_in_order(uri)
    text = log.read_text()
    assert "commit failed; batch kept for retry" in text, "the outage reached bronze's own retries"
    h.assert_ledger_complete(f"s3://{BUCKET}/{prefix}", "orders")


def test_a_steady_commit_costs_a_handful_of_log_requests(tmp_path, s3):
    """Against a remote store each request is a round trip, so what a commit asks of the table's log
    bounds its latency: after its own commit a sink goes ahead unread, finds txn versions it knows
    without a log replay, keeps the post-commit snapshot instead of reading the entry again, and
    leaves log cleanup to the commits that write a checkpoint."""
    topic = h.unique("faults.requests")
    h.create_topics({topic: 1})
    produced = produce_orders(topic, 6_000, seed=75)
    prefix = h.unique("requests")
    with StoreProxy(s3) as proxy:
        proxy.trace = []
        cfg = faulty_s3_config(tmp_path, proxy.endpoint, prefix, topic, max_rows=250, flush_age="200ms")
        h.run_bronze(cfg, "run", "--until-caught-up", timeout=180)
        trace = list(proxy.trace)
    uri = f"s3://{BUCKET}/{prefix}/orders"
    h.assert_exactly_once(uri, h.data_offsets(produced))
    commits = assert_commits_in_order(uri)
    assert commits >= 8
    log = f"{prefix}/orders/_delta_log/"
    entries = [(start, unquote(path)) for start, _s, method, path, _st in trace
               if method == "PUT" and unquote(path).startswith(f"/{BUCKET}/{log}0")]
    # Steady state: from the first streaming commit's entry (version 1) to the last one's, so start-up
    # (creating and loading the table) is not counted.
    first, last = entries[1][0], entries[-1][0]
    kinds = Counter()
    for start, _seconds, method, path, _status in trace:
        path = unquote(path)
        if first < start <= last and log in path:
            kinds["LIST" if "list-type=2" in path else method] += 1
    per_commit = sum(kinds.values()) / (len(entries) - 2)
    print(f"{commits} commits, log requests between the first and the last: {dict(kinds)}, "
          f"{per_commit:.2f} per commit")
    # A commit: delta-rs's check for a newer version (a LIST), the conditional PUT of its entry, and
    # its post-commit read of it (a LIST and two GETs); the ledger reads each entry once more. Before:
    # a re-read of the table, a log replay per partition and the whole log listed for cleanup, 21.
    assert per_commit <= 6.5, (per_commit, dict(kinds))
