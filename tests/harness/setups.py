"""The preamble most tests share: a topic, one dataset with its contract, a config under `tmp_path`, and
Debezium change events sent to the topic. Tests with several datasets use `write_config` directly."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from confluent_kafka import Producer

from . import bootstrap, create_topics, unique, write_config

# The key column most test contracts start with.
ID_COLUMN = """
[[columns]]
name = "id"
type = "int64"
nullable = false
"""


@dataclass
class OneDataset:
    topic: str
    config: Path
    schema: Path
    table: Path


def one_dataset(tmp_path: Path, name: str, contract: str, *, dataset: str = "events", partitions: int = 1,
                partitioning: str = "date", keys: list[str] | None = None, **config) -> OneDataset:
    """A fresh topic `<name>.<dataset>` with `partitions`, the dataset `dataset` reading it with
    `contract` (written beside the config, so a test can rewrite it), its table under `tmp_path/lake`.
    `config` goes to `write_config` (flush_age, max_rows, extra, ...)."""
    topic = unique(f"{name}.{dataset}")
    create_topics({topic: partitions})
    schema = tmp_path / f"{dataset}.toml"
    schema.write_text(contract)
    root = tmp_path / "lake"
    entry = {"name": f'"{dataset}"', "topics": f'["{topic}"]', "format": '"debezium-json"',
             "schema": f'"{schema}"', "partitioning": f'{{ by = "{partitioning}" }}'}
    if keys is not None:
        entry["key_columns"] = json.dumps(keys)
    cfg = write_config(tmp_path, group=unique(name), root=str(root), datasets=[entry], **config)
    return OneDataset(topic, cfg, schema, root / dataset)


def change(i: int, after: dict | None, *, op: str = "c", ts_ms: int = 1_700_000_000_000,
           ts_step_ms: int = 1000, before: dict | None = None) -> bytes:
    """A Debezium envelope (no schema wrapper) of the `i`-th change: source time `ts_ms + i * ts_step_ms`,
    LSN `i`."""
    return json.dumps({"op": op, "source": {"ts_ms": ts_ms + i * ts_step_ms, "lsn": i},
                       "before": before, "after": after}).encode()


def send(topic: str, messages: Iterable[tuple], linger_ms: int = 5) -> None:
    """Produce `(key, value)` or `(key, value, partition)` messages (str keys are encoded) and wait for
    every delivery."""
    p = Producer({"bootstrap.servers": bootstrap(), "linger.ms": linger_ms})
    for m in messages:
        key, value = m[0], m[1]
        kwargs = {"partition": m[2]} if len(m) > 2 and m[2] is not None else {}
        p.produce(topic, key=key.encode() if isinstance(key, str) else key, value=value, **kwargs)
        p.poll(0)
    assert p.flush(30) == 0
