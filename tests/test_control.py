"""The control topic on the real broker: requests posted as JSON messages are validated (every bad kind
rejected with its code on the status topic), run by one member of the group with accepted / running /
succeeded statuses, not run twice under one id, resumed by the next run when their member dies mid-way,
and posted by `bronze ... --submit`, which follows the status to the end."""

import json
import signal
import time

from confluent_kafka import Consumer, Producer, TopicPartition

import harness as h
from test_backfill import CONTRACT, DAYS, produce

FIXED = CONTRACT.format(formats='formats = ["%d.%m.%Y %H:%M"]')


def statuses(topic):
    """Every status message so far, in order."""
    c = Consumer({"bootstrap.servers": h.bootstrap(), "group.id": h.unique("status-reader"),
                  "enable.auto.commit": False})
    high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    out = []
    if high > 0:
        c.assign([TopicPartition(topic, 0, 0)])
        while len(out) < high:
            m = c.poll(5)
            if m is None:
                break
            out.append(json.loads(m.value()))
    c.close()
    return out


def final(topic, request_id, timeout=90):
    def done():
        mine = [s for s in statuses(topic) if s["request_id"] == request_id]
        return mine if mine and mine[-1]["status"] in ("succeeded", "failed", "rejected") else None
    return h.wait_until(done, timeout, interval=1, what=f"a final status of {request_id}")


def post(topic, request):
    p = Producer({"bootstrap.servers": h.bootstrap()})
    p.produce(topic, value=request if isinstance(request, bytes) else json.dumps(request).encode())
    assert p.flush(10) == 0


def backfill_request(request_id, **extra):
    return {"request_id": request_id, "dataset": "events", "kind": "backfill", "source": "kafka",
            "range": {"from": DAYS[1], "to": DAYS[4]}, "requested_by": "test", **extra}


def test_requests_on_the_control_topic(tmp_path):
    topic, control, status = h.unique("ctl.events"), h.unique("ctl.requests"), h.unique("ctl.status")
    flat = h.unique("ctl.flat")
    h.create_topics({topic: 2, control: 1, status: 1, flat: 1})
    schema = tmp_path / "events.toml"
    schema.write_text(CONTRACT.format(formats=""))
    (tmp_path / "flat.toml").write_text(CONTRACT.format(formats=""))
    root = tmp_path / "lake"
    table = root / "events"
    cfg = h.write_config(
        tmp_path, group=h.unique("ctl"), root=str(root), flush_age="300ms", max_rows=40,
        extra=f'[control]\ntopic = "{control}"\nstatus_topic = "{status}"\n',
        datasets=[{"name": '"events"', "topics": f'["{topic}"]', "format": '"debezium-json"',
                   "schema": f'"{schema}"', "partitioning": '{ by = "date" }',
                   "control": '{ allow = ["backfill", "extract", "compact", "vacuum"] }'},
                  {"name": '"flat"', "topics": f'["{flat}"]', "format": '"debezium-json"',
                   "schema": f'"{tmp_path / "flat.toml"}"', "partitioning": '{ by = "none" }'}])
    produce(topic, [(i, i % 5) for i in range(500)])
    proc = h.start_bronze(cfg, log=tmp_path / "a.log")
    try:
        h.wait_until(lambda: len(h.stored_offsets(str(table))) == 500, 90, what="streaming")
        schema.write_text(FIXED)

        # Bad requests: each rejected with its code, nothing run.
        bad = {
            "bad_json": b'{"request_id": "x", "kind": ',
            "missing_id": {"dataset": "events", "kind": "compact"},
            "unknown_kind": {"request_id": "b2", "dataset": "events", "kind": "rebuild"},
            "unknown_dataset": {"request_id": "b3", "dataset": "nope", "kind": "compact"},
            "inverted_range": backfill_request("b4", range={"from": DAYS[3], "to": DAYS[1]}),
            "range_too_large": backfill_request("b5", range={"from": "2020-01-01", "to": "2025-01-01"}),
            "source_not_configured": backfill_request("b6", source="postgres"),
            "unknown_source": backfill_request("b7", source="ftp"),
            "not_partitioned": {**backfill_request("b8"), "dataset": "flat"},
            "missing_range": {k: v for k, v in backfill_request("b9").items() if k != "range"},
            "bad_option": {"request_id": "b10", "dataset": "events", "kind": "vacuum",
                           "options": {"retention": "soon"}},
            # What the control topic may ask is the dataset's to say: `flat` takes no vacuums, and
            # neither dataset lets a request `force`, whoever it says it is from.
            "not_allowed": {"request_id": "b11", "dataset": "flat", "kind": "vacuum", "requested_by": "admin"},
            "force_not_allowed": {**backfill_request("b12"), "options": {"force": True}},
        }
        for request in bad.values():
            post(control, request)
        post(control, backfill_request("good-1"))
        steps = final(status, "good-1")
        seen = statuses(status)
        rejected = [s for s in seen if s["status"] == "rejected"]
        assert sorted(s["code"] for s in rejected) == sorted(bad), rejected
        assert all(s["reason"] for s in rejected)

        # The backfill ran once, reporting as it went.
        assert [s["status"] for s in steps][:2] == ["accepted", "running"] and steps[-1]["status"] == "succeeded"
        result = steps[-1]["result"]
        assert result["rows_written"] == 300 and len(result["partitions"]) == 3
        rows = h.read_delta(str(table)).to_pylist()
        assert len(rows) == 500 and sum(r["seen_at"] is not None for r in rows) == 300

        # Explicit partitions instead of a range: only those two (not the day between) are replaced.
        before = {f for f in h.referenced_files(table) if f.startswith(f"event_date={DAYS[1]}/")}
        post(control, backfill_request("parts-1", range={"partitions": [DAYS[0], DAYS[2]]}))
        parts = final(status, "parts-1")[-1]
        assert parts["status"] == "succeeded", parts
        assert parts["result"]["partitions"] == [f"event_date={DAYS[0]}", f"event_date={DAYS[2]}"]
        assert {f for f in h.referenced_files(table) if f.startswith(f"event_date={DAYS[1]}/")} == before
        assert sum(r["seen_at"] is not None for r in h.read_delta(str(table)).to_pylist()) == 400
        post(control, backfill_request("parts-bad", range={"partitions": ["2025-11-01/07"]}))
        assert final(status, "parts-bad")[-1]["code"] == "bad_range"

        # Same id again: a no-op that says so; a different request under that id: rejected.
        post(control, backfill_request("good-1"))
        post(control, backfill_request("good-1", range={"from": DAYS[0], "to": DAYS[1]}))
        # The CLI posts a request and follows it to the end (requests run in order: the two above first).
        out = h.run_bronze(cfg, "compact", "--dataset", "events", "--submit", "--json")
        last = json.loads(out.stdout)
        # Only the last day still has its streamed small files: the others were rebuilt into one each.
        assert last["status"] == "succeeded" and last["result"]["partitions_compacted"] == 1, last
        assert last["result"]["files_after"] < last["result"]["files_before"]
        assert h.read_polars(str(table)).height == 500
        again = [s for s in statuses(status) if s["request_id"] == "good-1"][len(steps):]
        assert again[0]["status"] == "succeeded" and again[0]["no_op"] is True
        assert again[1]["status"] == "rejected" and again[1]["code"] == "duplicate_id"
        replaces = [c for c in h.delta_history(str(table)) if c.get("bronze", {}).get("request_id") == "good-1"]
        assert len(replaces) == 1

    finally:
        assert h.stop(proc) == 0

    # Every finished request is in the audit ledger too.
    requests = [r for r in h.ledger(str(root)) if r["kind"] == "request"]
    by_id = {}
    for r in requests:
        by_id.setdefault(r["request_id"], []).append(r)
    assert [r["status"] for r in by_id["good-1"]].count("succeeded") == 2
    assert json.loads(next(r for r in by_id["good-1"] if r["detail"])["detail"])["rows_written"] == 300
    assert sum(r["status"] == "rejected" for r in requests) == len(bad) + 2
    assert all(r["error"] for r in requests if r["status"] == "rejected")

    # A request whose member dies before finishing is resumed by the next run, not forgotten.
    crash = h.start_bronze(cfg, env={"BRONZE_FAILPOINT": "backfill_before_commit"}, log=tmp_path / "b.log")
    post(control, backfill_request("crash-1", range={"from": DAYS[0], "to": DAYS[2]}))
    assert crash.wait(timeout=120) == -signal.SIGABRT
    cut_short = [s["status"] for s in statuses(status) if s["request_id"] == "crash-1"]
    assert cut_short[:2] == ["accepted", "running"] and set(cut_short) == {"accepted", "running"}, cut_short
    proc = h.start_bronze(cfg, log=tmp_path / "c.log")
    try:
        steps = final(status, "crash-1")
    finally:
        assert h.stop(proc) == 0
    resumed = [s for s in steps if s["status"] == "accepted"][-1]
    assert "resumed" in resumed["reason"] and steps[-1]["status"] == "succeeded"
    rows = h.read_delta(str(table)).to_pylist()
    assert len(rows) == 500 and sum(r["seen_at"] is not None for r in rows) == 400
    h.assert_no_duplicate_offsets(h.read_delta(str(table)))
