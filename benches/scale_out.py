"""The scale-out cells of the bench (`e2e_throughput.py --members 1,2,4`): bronze members as separate
processes on this machine, writing S3 tables on moto behind the latency proxy (25 ms per request by
default), so commits pay what a remote store charges.

- One table: N members of one consumer group share a 6-partition topic and write one Delta table with
  small flushes (5,000 rows / 100 ms), so the table's commit rate is the limit: events/s, commits/s the
  table took, and the conflicts and stale batches Delta's optimistic concurrency cost.
- Separate tables: N members, each its own group, topic and table, the same events split between them:
  what more members give when they do not share a table.

On two cores the members also share the CPU; the commits/s of the one-table cell are what a table takes
from N writers, which is the part that does not grow with hosts.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import harness as h
from harness.moto import CREDENTIALS, running_moto
from harness.store_proxy import StoreProxy
from object_store import config, ingest_seconds

MAX_ROWS, MAX_AGE = 5_000, "100ms"


def cells(binary: str, work: Path, events: list, schema: Path, members: list[int], latency: int = 25) -> None:
    with running_moto(work / "moto-scale.log") as moto:
        saved = dict(os.environ)
        os.environ.update({"AWS_ENDPOINT_URL": moto, **CREDENTIALS})
        try:
            shared = h.unique("bench.scale")
            h.create_topics({shared: 6})
            h.produce(events, {"orders": shared})
            print(f"  scale-out (members as processes, moto behind the proxy at {latency} ms), {len(events)} events,"
                  f" flush {MAX_ROWS} rows / {MAX_AGE}")
            print(f"    {'tables':>9} {'members':>7} {'events/s':>10} {'commits':>8} {'commits/s':>10} {'conflicts':>9}"
                  f" {'stale':>6} {'CPU s':>7}")
            for n in members:
                r = one_table(binary, work, shared, len(events), schema, moto, latency, n)
                print(f"    {'one':>9} {n:>7} {r['events_s']:>10.0f} {r['commits']:>8} {r['commits_s']:>10.2f}"
                      f" {r['conflicts']:>9} {r['stale']:>6} {r['cpu']:>7.1f}")
            for n in members:
                r = separate_tables(binary, work, events, schema, moto, latency, n)
                print(f"    {'separate':>9} {n:>7} {r['events_s']:>10.0f} {r['commits']:>8} {r['commits_s']:>10.2f}"
                      f" {r['conflicts']:>9} {r['stale']:>6} {r['cpu']:>7.1f}")
        finally:
            os.environ.clear()
            os.environ.update(saved)


def run_members(binary: str, configs: list[Path]) -> tuple[list[str], float]:
    """Start one `bronze run --until-caught-up` per config at once; their logs and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([binary, "run", "--until-caught-up", "--config", str(c)],
                              env=dict(os.environ, RUST_LOG="info"), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in configs]
    logs = [p.communicate(timeout=900)[1] for p in procs]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            sys.exit(f"a bronze member failed ({p.returncode}):\n{log[-4000:]}")
    cpu = (usage.ru_utime + usage.ru_stime) - (before.ru_utime + before.ru_stime)
    return logs, cpu


def counts(logs: list[str]) -> dict:
    text = "\n".join(logs)
    return {"conflicts": text.count("commit conflict; re-reading"),
            "stale": text.count("another member already committed")}


def one_table(binary: str, work: Path, topic: str, n: int, schema: Path, moto: str, latency: int,
              members: int) -> dict:
    with StoreProxy(moto) as proxy:
        proxy.latency_ms = latency
        group, prefix = h.unique("bench-scale"), h.unique("scale-one")
        configs, uri = [], None
        for i in range(members):
            cfg, uri = config(work, f"scale-one-{members}-{i}", schema, topic, proxy.endpoint, MAX_ROWS, MAX_AGE, 2,
                              group=group, prefix=prefix)
            configs.append(cfg)
        logs, cpu = run_members(binary, configs)
    ingest = ingest_seconds(*logs)
    assert h.read_delta(uri).num_rows == n
    commits = len([c for c in h.delta_history(uri) if c.get("bronze", {}).get("offsets")])
    return {"events_s": n / ingest, "commits": commits, "commits_s": commits / ingest, "cpu": cpu, **counts(logs)}


def separate_tables(binary: str, work: Path, events: list, schema: Path, moto: str, latency: int,
                    members: int) -> dict:
    share = len(events) // members
    with StoreProxy(moto) as proxy:
        proxy.latency_ms = latency
        configs, uris = [], []
        for i in range(members):
            topic = h.unique("bench.scale-sep")
            h.create_topics({topic: max(1, 6 // members)})
            h.produce(events[i * share:(i + 1) * share], {"orders": topic})
            cfg, uri = config(work, f"scale-sep-{members}-{i}", schema, topic, proxy.endpoint, MAX_ROWS, MAX_AGE, 2)
            configs.append(cfg)
            uris.append(uri)
        logs, cpu = run_members(binary, configs)
    ingest = ingest_seconds(*logs)
    assert sum(h.read_delta(u).num_rows for u in uris) == share * members
    commits = sum(len([c for c in h.delta_history(u) if c.get("bronze", {}).get("offsets")]) for u in uris)
    return {"events_s": share * members / ingest, "commits": commits, "commits_s": commits / ingest, "cpu": cpu,
            **counts(logs)}
