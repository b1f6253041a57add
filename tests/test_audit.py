"""The audit ledger and the read-only views over it: `bronze status` (lag from Kafka and the tables) and
`bronze runs` (the ledger, filtered), checked against what was produced and an independent reader."""

import json
import time

import harness as h
from harness import cdc


def status(cfg) -> dict:
    out = h.run_bronze(cfg, "status", "--json").stdout
    return {d["dataset"]: d for d in map(json.loads, out.splitlines())}


def test_status_and_runs_follow_lag_commits_and_the_ledger(tmp_path):
    topic = h.unique("audit.orders")
    h.create_topics({topic: 2})
    plan = cdc.generate(1_500, seed=9)
    produced = h.produce([e for e in plan.events if e.table == "orders"], {"orders": topic})
    root = tmp_path / "lake"
    cfg = h.write_config(tmp_path, group=h.unique("audit"), root=str(root), datasets=h.keyless_orders(topic))

    # Nothing ingested yet: all of it is lag, as old as the first message.
    time.sleep(2)
    before = status(cfg)["orders"]
    assert before["version"] is None and before["rows"] == 0
    assert before["lag_messages"] == len(produced)
    assert before["lag_seconds"] >= 2, before
    assert sorted(p["partition"] for p in before["partitions"]) == [0, 1]
    assert "no audit ledger" in h.run_bronze(cfg, "runs").stderr

    h.run_bronze(cfg, "run", "--until-caught-up")
    after = status(cfg)["orders"]
    assert after["lag_messages"] == 0 and after["lag_seconds"] == 0
    table = h.read_delta(str(root / "orders"))
    assert after["rows"] == table.num_rows == len(h.data_offsets(produced))
    assert after["version"] >= 1 and after["files"] >= 1 and after["small_files"] == after["files"]
    assert time.time() * 1000 - after["last_commit_ms"] < 60_000
    assert all(p["position"] == p["high_watermark"] for p in after["partitions"])

    # The ledger: every table version once, and the run's start and end.
    commits = h.assert_ledger_complete(str(root), "orders")
    rows = h.ledger(str(root))
    run_ids = {c["run_id"] for c in commits}
    assert len(run_ids) == 1
    finished = [r for r in rows if r["kind"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["status"] == "succeeded"
    assert finished[0]["run_id"] in run_ids and finished[0]["rows_in"] == len(produced)
    assert [r["kind"] for r in rows if r["kind"] == "run_started"] == ["run_started"]

    # `bronze runs` reads the same ledger, with filters.
    out = h.run_bronze(cfg, "runs", "--dataset", "orders", "--kind", "commit", "--since", "1h", "--json").stdout
    listed = [json.loads(l) for l in out.splitlines()]
    assert sorted(r["table_version"] for r in listed) == sorted(c["table_version"] for c in commits)
    assert h.run_bronze(cfg, "runs", "--status", "failed", "--json").stdout == ""
    text = h.run_bronze(cfg, "runs", "--limit", "3").stdout
    assert "run_finished" in text and text.count("\n") == 3 + 4, text
    future = h.run_bronze(cfg, "runs", "--since", "2099-01-01T00:00:00Z", "--json").stdout
    assert future == ""
    bad = h.run_bronze(cfg, "runs", "--since", "yesterday-ish", check=False)
    assert bad.returncode == 2 and "neither a duration" in bad.stderr

    # A second run over the same data adds no commits, and the ledger still has each version once.
    h.run_bronze(cfg, "run", "--until-caught-up")
    h.assert_ledger_complete(str(root), "orders")
    assert len([r for r in h.ledger(str(root)) if r["kind"] == "run_finished"]) == 2


def test_ledger_can_be_disabled_or_moved(tmp_path):
    topic = h.unique("audit.off")
    h.create_topics({topic: 1})
    produced = h.produce([e for e in cdc.generate(200, seed=3).events if e.table == "orders"], {"orders": topic})
    root = tmp_path / "lake"
    group = h.unique("off")
    off = h.write_config(tmp_path / "off", group=group, root=str(root),
                         datasets=h.keyless_orders(topic), extra="\n[audit]\nenabled = false\n")
    h.run_bronze(off, "run", "--until-caught-up")
    assert not (root / "_bronze_runs").exists()
    assert len(h.stored_offsets(str(root / "orders"))) == len(h.data_offsets(produced))
    # A ledger configured elsewhere, switched on later, transcribes the table's whole history.
    moved = h.write_config(tmp_path / "moved", group=group, root=str(root),
                           datasets=h.keyless_orders(topic),
                           extra=f'\n[audit]\ntable = "file://{tmp_path}/audit/ledger"\ninterval = "1s"\n')
    h.run_bronze(moved, "run", "--until-caught-up")
    ledger = h.read_delta(f"{tmp_path}/audit/ledger").to_pylist()
    versions = sorted(r["table_version"] for r in ledger if r["dataset"] == "orders")
    assert versions == list(range(len(versions))) and len(versions) >= 2
