"""Helpers shared by the integration tests, the demo and the benchmarks: a real Kafka broker
(started by scripts/kafka.sh), the `bronze` binary, and independent Delta readers (deltalake, polars).
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "schemas"


def bootstrap() -> str:
    return os.environ.get("BRONZE_KAFKA_BOOTSTRAP", "127.0.0.1:39092")


def bronze_bin() -> str:
    path = os.environ.get("BRONZE_BIN")
    if not path:
        raise RuntimeError("BRONZE_BIN is not set (scripts/test.sh sets it)")
    return path


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_topics(topics: dict[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap()})
    futures = admin.create_topics([NewTopic(t, num_partitions=p, replication_factor=1) for t, p in topics.items()])
    for f in futures.values():
        f.result(timeout=30)
    # Metadata propagates asynchronously even on one broker.
    deadline = time.time() + 30
    while time.time() < deadline:
        md = admin.list_topics(timeout=10)
        if all(t in md.topics and len(md.topics[t].partitions) == p for t, p in topics.items()):
            return
        time.sleep(0.2)
    raise TimeoutError(f"topics {list(topics)} not visible")


def topics() -> list[str]:
    return list(AdminClient({"bootstrap.servers": bootstrap()}).list_topics(timeout=10).topics)


def delete_topics(names: list[str]) -> None:
    """Drop topics (benches: a million-event topic is most of a gigabyte on the broker's disk)."""
    admin = AdminClient({"bootstrap.servers": bootstrap()})
    for f in admin.delete_topics(names).values():
        f.result(timeout=30)


@dataclass(frozen=True)
class Produced:
    topic: str
    partition: int
    offset: int
    table: str
    op: str | None
    row_id: int
    source_ts_ms: int | None
    value_len: int


def produce(events, topic_of: dict[str, str], headers: list | None = None) -> list[Produced]:
    """Produce `events` (harness.cdc.Event) keyed by row id; returns where each one landed."""
    producer = Producer({
        "bootstrap.servers": bootstrap(),
        "linger.ms": 20,
        "batch.num.messages": 10000,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 500000,
    })
    out: list[Produced] = []

    def make_cb(ev):
        def cb(err, msg):
            if err is not None:
                raise RuntimeError(f"produce failed: {err}")
            out.append(Produced(msg.topic(), msg.partition(), msg.offset(), ev.table, ev.op, ev.row_id,
                                ev.source_ts_ms, len(ev.value or b"")))
        return cb

    for ev in events:
        while True:
            try:
                producer.produce(topic_of[ev.table], key=ev.key, value=ev.value, on_delivery=make_cb(ev),
                                 headers=headers)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    remaining = producer.flush(60)
    assert remaining == 0, f"{remaining} messages not delivered"
    return out


def write_config(directory: Path, *, group: str, root: str, datasets: list[dict], extra: str = "",
                 flush_age: str = "1s", max_rows: int = 100000, budget: int = 256 * 1024 * 1024) -> Path:
    """A bronze config for a test; `datasets` are dicts of TOML key -> already-quoted value."""
    blocks = []
    for d in datasets:
        lines = "\n".join(f"{k} = {v}" for k, v in d.items())
        blocks.append(f"[[datasets]]\n{lines}\n")
    text = textwrap.dedent(f"""\
        schema_dir = "{SCHEMAS}"

        [kafka]
        bootstrap_servers = "{bootstrap()}"
        group_id = "{group}"
        auto_offset_reset = "earliest"

        [storage]
        root = "{root}"

        [flush]
        max_rows = {max_rows}
        max_bytes = 67108864
        max_age = "{flush_age}"

        [memory]
        budget_bytes = {budget}
        """) + extra + "\n" + "\n".join(blocks)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bronze.toml"
    path.write_text(text)
    return path


def fan_out_head(*, schema_dir, group: str, root: str, storage: str = "", flush_age: str = "1s",
                 sections: str = "") -> str:
    """The sections before the datasets of a config with a fan-out: the broker (new topics of a pattern
    found within a second, not librdkafka's 5 minutes), the storage (plus `storage`, e.g. `[storage.s3]`),
    the flush limits, then `sections`."""
    return textwrap.dedent(f"""\
        schema_dir = "{schema_dir}"

        [kafka]
        bootstrap_servers = "{bootstrap()}"
        group_id = "{group}"
        auto_offset_reset = "earliest"
        properties = {{ "topic.metadata.refresh.interval.ms" = "1000" }}

        [storage]
        root = "{root}"
        """) + storage + textwrap.dedent(f"""
        [flush]
        max_rows = 100000
        max_bytes = 67108864
        max_age = "{flush_age}"
        """) + textwrap.dedent(sections)


def cdc_datasets(customers_topic: str, orders_topic: str) -> list[dict]:
    return [
        {"name": '"customers"', "topics": f'["{customers_topic}"]', "format": '"debezium-json"',
         "schema": '"customers.toml"', "key_columns": '["id"]', "key_from_message_key": "true"},
        {"name": '"orders"', "topics": f'["{orders_topic}"]', "format": '"debezium-json"',
         "schema": '"orders.toml"', "key_columns": '["id"]', "key_from_message_key": "true",
         "partitioning": '{ by = "date/hour" }'},
    ]


def run_bronze(config: Path, *args: str, env: dict | None = None, timeout: float = 300,
               check: bool = True) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.setdefault("RUST_LOG", "info,buoyant_kernel=off,delta_kernel=off")
    e.update(env or {})
    try:
        proc = subprocess.run([bronze_bin(), *args, "--config", str(config)], env=e, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as t:
        # What it was doing when it was killed is the only clue a hang leaves.
        err = t.stderr.decode(errors="replace") if isinstance(t.stderr, bytes) else (t.stderr or "")
        tail = "\n".join([line for line in err.splitlines() if " DEBUG " not in line][-80:])
        raise AssertionError(f"bronze {args} did not finish in {timeout} s; its last log lines:\n{tail}") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"bronze {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}")
    return proc


def start_bronze(config: Path, *args: str, env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e.setdefault("RUST_LOG", "info,buoyant_kernel=off,delta_kernel=off")
    e.update(env or {})
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([bronze_bin(), "run", *args, "--config", str(config)], env=e, stdout=out,
                            stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


# ---- independent readers ------------------------------------------------------------------------

def storage_options() -> dict | None:
    if os.environ.get("AWS_ENDPOINT_URL"):
        return {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_REGION", "AWS_ALLOW_HTTP") if k in os.environ}
    return None


def read_delta(uri: str):
    """The table as a pyarrow Table, read by the Python deltalake package (delta-rs, not bronze)."""
    from deltalake import DeltaTable
    return DeltaTable(uri, storage_options=storage_options()).to_pyarrow_table()


def read_polars(uri: str):
    import polars as pl
    return pl.read_delta(uri, storage_options=storage_options())


def offsets_of(table) -> list[tuple[str, int, int]]:
    cols = table.select(["_topic", "_partition", "_offset"]).to_pydict()
    return list(zip(cols["_topic"], cols["_partition"], cols["_offset"]))


def assert_no_duplicate_offsets(table) -> None:
    counts = Counter(offsets_of(table))
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"{len(dupes)} offsets stored more than once, e.g. {list(dupes.items())[:5]}"


def delta_history(uri: str) -> list[dict]:
    from deltalake import DeltaTable
    return DeltaTable(uri, storage_options=storage_options()).history()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    """Prometheus text from bronze's metrics endpoint; empty while it is not up."""
    import urllib.request
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return ""


def http_json(url: str) -> tuple[int, dict]:
    """Status and JSON body of a GET, error statuses included."""
    import json
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def keyless_orders(topic: str) -> list[dict]:
    """The orders dataset without key columns: no in-batch dedup, so stored offsets equal produced ones."""
    return [{"name": '"orders"', "topics": f'["{topic}"]', "format": '"debezium-json"', "schema": '"orders.toml"',
             "partitioning": '{ by = "date" }'}]


def orders_member(directory: Path, group: str, root, topic: str, **config) -> tuple[Path, str]:
    """Config of a member of `group` ingesting `topic` as keyless orders, with its own metrics port, and
    its metrics URL; `config` goes to `write_config`."""
    port = free_port()
    cfg = write_config(directory, group=group, root=str(root), datasets=keyless_orders(topic),
                       extra=f'\n[metrics]\naddress = "127.0.0.1:{port}"\n', **config)
    return cfg, f"http://127.0.0.1:{port}/metrics"


def assert_exactly_once(uri: str, expected: set) -> None:
    """Every offset of `expected` is in the table at `uri`, and nothing else, each once."""
    rows = stored_offsets(uri)
    assert len(rows) == len(set(rows)), "an offset was stored twice"
    assert set(rows) == expected, (len(set(rows)), len(expected))


def data_offsets(produced) -> set:
    """Offsets of produced messages that make rows (tombstones make none)."""
    return {(p.topic, p.partition, p.offset) for p in produced if p.op is not None}


def stored_offsets(uri: str) -> list:
    """Offsets in the table; none while the table does not exist yet."""
    from deltalake.exceptions import TableNotFoundError
    try:
        return offsets_of(read_delta(uri))
    except TableNotFoundError:
        return []


def ledger(root: str) -> list[dict]:
    """Rows of the audit ledger (`<root>/_bronze_runs`), read by the Python deltalake package."""
    return read_delta(f"{root.rstrip('/')}/_bronze_runs").to_pylist()


def assert_ledger_complete(root: str, dataset: str) -> list[dict]:
    """The ledger holds every version of the dataset's table exactly once, and its commit rows account
    for every row and offset in the table. Returns the commit rows."""
    from deltalake import DeltaTable
    import json
    uri = f"{root.rstrip('/')}/{dataset}"
    rows = [r for r in ledger(root) if r["dataset"] == dataset and r["table_version"] is not None]
    versions = sorted(r["table_version"] for r in rows)
    table = DeltaTable(uri, storage_options=storage_options())
    assert versions == list(range(table.version() + 1)), f"ledger versions {versions} vs table {table.version()}"
    assert len({r["record_id"] for r in rows}) == len(rows)
    commits = [r for r in rows if r["kind"] == "commit"]
    data = table.to_pyarrow_table()
    assert sum(r["rows_written"] for r in commits) == data.num_rows
    covered = Counter()
    for r in commits:
        for rng in json.loads(r["offsets"]):
            for o in range(rng["first_offset"], rng["last_offset"] + 1):
                covered[(rng["topic"], rng["partition"], o)] += 1
    assert max(covered.values(), default=1) == 1, "an offset range was recorded twice"
    assert set(offsets_of(data)) <= set(covered), "a stored row is not covered by any ledger commit"
    return commits


def age_files(table_dir: Path, seconds: float) -> None:
    """Make every Parquet file under `table_dir` look `seconds` older, as if a crash happened that long
    ago: the start-up sweep only removes uncommitted files older than `storage.orphan_grace`."""
    for p in table_dir.rglob("*.parquet"):
        st = p.stat()
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def parquet_files_on_disk(table_dir: Path) -> set:
    """Data files under the table directory (log checkpoints are Parquet too, and not data)."""
    return {str(p.relative_to(table_dir)) for p in table_dir.rglob("*.parquet")
            if p.relative_to(table_dir).parts[0] != "_delta_log"}


def referenced_files(table_dir: Path) -> set:
    """Data files of the current table version, relative to the table directory."""
    from deltalake import DeltaTable
    return {u.split(str(table_dir) + "/", 1)[-1] for u in DeltaTable(str(table_dir)).file_uris()}


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last})")
