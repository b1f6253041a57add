"""A real Prometheus (Debian's package) scrapes a running bronze and evaluates config/prometheus/alerts.yml:
lag in messages and seconds rises while bronze cannot commit (storage outage injected) and falls after;
every alert rule evaluates without error against the real metrics."""

import shutil
import subprocess
import time
import urllib.parse

import pytest

import harness as h
from harness import cdc

ALERTS = h.REPO / "config" / "prometheus" / "alerts.yml"


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "scripts/setup.sh installs Debian's prometheus package"
    bronze_port, port = h.free_port(), h.free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{ALERTS}"]
scrape_configs:
  - job_name: bronze
    static_configs:
      - targets: ["127.0.0.1:{bronze_port}"]
""")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        h.wait_until(lambda: h.scrape(f"{api}/status/runtimeinfo") != "", 60, what="prometheus up")
        yield api, bronze_port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(api: str, expr: str) -> float | None:
    status, body = h.http_json(f"{api}/query?query={urllib.parse.quote(expr)}")
    assert status == 200 and body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_sees_lag_rise_during_an_outage_and_fall_after(tmp_path, prometheus):
    api, port = prometheus
    topic = h.unique("prom.orders")
    h.create_topics({topic: 2})
    cfg = h.write_config(tmp_path, group=h.unique("prom"), root=str(tmp_path / "lake"),
                         datasets=h.keyless_orders(topic), flush_age="300ms",
                         extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n'
                               '\n[kafka.properties]\n"statistics.interval.ms" = "1000"\n')
    outage = tmp_path / "storage-down"
    outage.touch()
    proc = h.start_bronze(cfg, env={"BRONZE_FAIL_COMMITS_WHILE": str(outage)}, log=tmp_path / "bronze.log")
    try:
        h.wait_until(lambda: query(api, 'up{job="bronze"}') == 1, 60, what="first scrape")
        h.wait_until(lambda: query(api, "bronze_assigned_partitions") == 2, 60, what="assignment")
        produced = h.produce([e for e in cdc.generate(1_200, seed=5).events if e.table == "orders"],
                             {"orders": topic})
        lag = f'sum(bronze_consumer_lag_messages{{dataset="orders",topic="{topic}"}})'
        age = 'max(bronze_consumer_lag_seconds{dataset="orders"})'
        # Storage is down: everything produced is lag, and its age keeps growing.
        h.wait_until(lambda: query(api, lag) == len(produced), 60, what="lag = produced")
        h.wait_until(lambda: (query(api, age) or 0) >= 3, 30, what="lag seconds growing")
        first_age = query(api, age)
        time.sleep(2.5)
        assert query(api, age) >= first_age + 1.5
        assert query(api, 'increase(bronze_commit_errors_total{dataset="orders"}[1m])') > 0
        assert query(api, "bronze_ready") == 0
        assert query(api, 'bronze_rows_written_total{dataset="orders"}') in (None, 0)
        # Every rule evaluates cleanly against the real series.
        status, rules = h.http_json(f"{api}/rules")
        groups = rules["data"]["groups"]
        assert sum(len(g["rules"]) for g in groups) == 12
        bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
        assert not bad, bad

        outage.unlink()
        h.wait_until(lambda: query(api, lag) == 0, 60, what="lag back to 0")
        h.wait_until(lambda: query(api, age) == 0, 30, what="lag seconds back to 0")
        assert query(api, 'bronze_rows_written_total{dataset="orders"}') == len(h.data_offsets(produced))
        h.wait_until(lambda: query(api, "bronze_ready") == 1, 30, what="ready again")
        assert query(api, 'sum(bronze_file_size_bytes_count{dataset="orders"})') >= 1
        assert query(api, 'bronze_table_files{dataset="orders"}') >= 1
        assert h.stop(proc) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
