"""Schedules on the real broker: the owner of the control topic posts each cron slot as a request whose
id is derived from the slot's time, so a slot runs once across a kill -9 and a restart (a second post of
it is a no-op), slots missed while no member ran follow `missed` (`run_once` runs the latest once, `skip`
records it as skipped), and `bronze status` shows the last and the next slot."""

import json
import signal
import time
from datetime import datetime, timezone

import harness as h
from harness.setups import ID_COLUMN, change, send
from test_control import post, statuses

CONTRACT = ID_COLUMN + """
[[columns]]
name = "v"
type = "string"
"""


def slot_time(request_id):
    """`schedule:<dataset>:<job>:<slot>` -> the slot."""
    return datetime.fromisoformat(request_id.split(":", 3)[3])


def scheduled(seen, dataset):
    """Statuses of `dataset`'s scheduled compactions, by request id, in order."""
    out = {}
    for s in seen:
        if s["request_id"].startswith(f"schedule:{dataset}:compact:"):
            out.setdefault(s["request_id"], []).append(s)
    return out


def test_scheduled_compactions_run_once_per_slot_across_a_restart(tmp_path):
    events, quiet = h.unique("sched.events"), h.unique("sched.quiet")
    control, status = h.unique("sched.requests"), h.unique("sched.status")
    h.create_topics({events: 1, quiet: 1, control: 1, status: 1})
    (tmp_path / "events.toml").write_text(CONTRACT)
    root = tmp_path / "lake"
    table = root / "events"
    cfg = h.write_config(
        tmp_path, group=h.unique("sched"), root=str(root), flush_age="300ms",
        extra=f'[control]\ntopic = "{control}"\nstatus_topic = "{status}"\n',
        datasets=[{"name": '"events"', "topics": f'["{events}"]', "format": '"debezium-json"',
                   "schema": f'"{tmp_path / "events.toml"}"', "partitioning": '{ by = "date" }',
                   "schedule": '{ compact = "*/2 * * * * *", missed = "run_once" }'},
                  {"name": '"quiet"', "topics": f'["{quiet}"]', "format": '"debezium-json"',
                   "schema": f'"{tmp_path / "events.toml"}"',
                   "schedule": '{ compact = "*/3 * * * * *", missed = "skip", timezone = "Europe/Amsterdam" }'}])
    proc = h.start_bronze(cfg, log=tmp_path / "a.log")
    try:
        # Small files in a sealed (2023) partition, one flush at a time, for the schedule to compact.
        for batch in range(4):
            send(events, [(str(i), change(i, {"id": i, "v": f"v{i}"})) for i in range(batch * 10, batch * 10 + 10)])
            h.wait_until(lambda: len(h.stored_offsets(str(table))) == batch * 10 + 10, 60, what="a flush")

        def compacted():
            runs = scheduled(statuses(status), "events")
            return any(s[-1]["status"] == "succeeded" and (s[-1].get("result") or {}).get("files_removed", 0) >= 2
                       for s in runs.values())
        h.wait_until(compacted, 60, interval=1, what="a scheduled compaction that compacts")
        # A slot may have compacted before the last flush landed; a later slot takes the rest.
        h.wait_until(lambda: len(h.referenced_files(table)) == 1, 30, interval=1, what="one file left")
        h.wait_until(lambda: len(scheduled(statuses(status), "quiet")) >= 2, 30, interval=1,
                     what="two slots of the quiet schedule")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    down_from = datetime.now(timezone.utc)
    before = statuses(status)
    ran = [i for i, s in scheduled(before, "events").items() if s[-1]["status"] == "succeeded"]
    # Slots the dead member posted (run or not): any later one was posted by the new member.
    posted = {r["request_id"] for r in statuses(control)}
    # A slot posted again (as by an owner that died before the handler took its post): a no-op.
    post(control, {"request_id": ran[0], "dataset": "events", "kind": "compact", "requested_by": "schedule"})
    time.sleep(4)
    restart_at = datetime.now(timezone.utc)
    proc = h.start_bronze(cfg, log=tmp_path / "b.log")
    try:
        def after_restart():
            seen = statuses(status)
            fresh = [i for i in scheduled(seen, "events") if i not in posted]
            skipped = [s for s in seen if s["status"] == "skipped"]
            return (seen, fresh) if len(fresh) >= 2 and skipped else None
        seen, fresh = h.wait_until(after_restart, 90, interval=1, what="slots after the restart")
        out = h.run_bronze(cfg, "status", "--json").stdout
    finally:
        h.stop(proc)

    for dataset in ("events", "quiet"):
        for request_id, steps in scheduled(seen, dataset).items():
            runs = [s for s in steps if s["status"] == "running"]
            assert len(runs) <= 1, (request_id, steps)
            assert all(s["requested_by"] == "schedule" for s in steps)
    again = scheduled(seen, "events")[ran[0]]
    assert again[-1]["no_op"] and again[-1]["status"] == "succeeded", again
    assert sum(s["status"] == "running" for s in again) == 1

    # run_once: no backlog. The dead member held the control partition until its session timed out
    # (10 s, after the restart): of the slots missed meanwhile only the latest ran, none before the
    # restart.
    assert not [f for f in fresh if slot_time(f) < restart_at], (restart_at, sorted(fresh))
    assert min(slot_time(f) for f in fresh) > down_from
    # skip: the latest slot missed while down is recorded, not run.
    skipped = [s for s in seen if s["status"] == "skipped"]
    assert all(s["request_id"].startswith("schedule:quiet:compact:") for s in skipped), skipped
    assert all(not any(x["status"] == "running" for x in scheduled(seen, "quiet")[s["request_id"]]) for s in skipped)

    report = {d["dataset"]: d for d in map(json.loads, out.strip().splitlines())}
    events_schedule = report["events"]["schedules"][0]
    assert events_schedule["job"] == "compact" and events_schedule["cron"] == "*/2 * * * * *"
    assert events_schedule["last_status"] in ("succeeded", "running", "accepted") and events_schedule["next_slot"]
    assert report["quiet"]["schedules"][0]["timezone"] == "Europe/Amsterdam"
    assert h.read_delta(str(table)).num_rows == 40


def test_schedule_settings_are_checked(tmp_path):
    def load(schedule, control=True, allow=None):
        extra = '[control]\ntopic = "c"\nstatus_topic = "s"\n' if control else ""
        dataset = {"name": '"events"', "topics": '["t"]', "format": '"debezium-json"',
                   "schema": f'"{tmp_path / "events.toml"}"', "schedule": schedule}
        if allow is not None:
            dataset["control"] = "{ allow = [%s] }" % ", ".join(f'"{k}"' for k in allow)
        cfg = h.write_config(tmp_path, group="g", root=str(tmp_path / "lake"), extra=extra, datasets=[dataset])
        return h.run_bronze(cfg, "validate", check=False)
    (tmp_path / "events.toml").write_text(CONTRACT)
    assert load('{ compact = "0 3 * * *", vacuum = "@weekly" }', allow=["compact", "vacuum"]).returncode == 0
    # Scheduled jobs are requests on the control topic: a kind the dataset does not allow is refused.
    r = load('{ compact = "0 3 * * *", vacuum = "@weekly" }')
    assert r.returncode != 0 and 'add "vacuum" to `control.allow`' in r.stderr, r.stderr
    cases = {
        '{ compact = "every night" }': "datasets[0].schedule.compact",
        '{ extract = "0 * * * *" }': "needs a database source",
        '{ compact = "0 3 * * *", timezone = "Mars/Olympus" }': "not an IANA time zone",
        '{ missed = "skip" }': "at least one of",
    }
    for schedule, expected in cases.items():
        r = load(schedule)
        assert r.returncode != 0 and expected in r.stderr, (schedule, r.stderr)
    r = load('{ compact = "0 3 * * *" }', control=False)
    assert r.returncode != 0 and "[control]" in r.stderr, r.stderr
