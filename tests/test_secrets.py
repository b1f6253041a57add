"""Secrets never leave through an output. bronze runs with known secret values (the S3 secret key, the
schema registry's password, a Kafka SASL password), at debug level, in JSON and in text logs, on the
working path and on failing ones (a SASL handshake the broker does not speak, a registry lookup); then
every output is searched for them: logs, `bronze status` and `bronze validate`, `/metrics`, `/readyz`,
the ledger's rows, the dead-letter table and each table's Delta log."""

import os
import signal
import struct
import time

import boto3

import harness as h
from conftest import BUCKET
from harness import cdc
from harness.moto import s3_storage_block
from harness.registry import Registry

SECRETS = {"AWS_SECRET_ACCESS_KEY": "s3-Secret-7f3a9c0e", "REGISTRY_PASSWORD": "reg-Secret-41be77",
           "KAFKA_SASL_PASSWORD": "sasl-Secret-9d20aa"}


def leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


def config(tmp_path, endpoint: str, registry: Registry, prefix: str, topics: tuple[str, str], port: int,
           kafka_extra: str = "") -> str:
    orders, avro = topics
    datasets = [*h.keyless_orders(orders),
                {"name": '"events"', "topics": f'["{avro}"]', "format": '"avro"', "schema": '"orders.toml"',
                 "partitioning": '{ by = "date" }'}]
    sections = f"""
[metrics]
address = "127.0.0.1:{port}"

[schema_registry]
url = "{registry.url}"
username = "bronze"
password = "${{env:REGISTRY_PASSWORD}}"

[kafka.properties]
"sasl.username" = "bronze"
"sasl.password" = "${{env:KAFKA_SASL_PASSWORD}}"
{kafka_extra}
"""
    cfg = h.write_config(tmp_path, group=h.unique("secrets"), root=f"s3://{BUCKET}/{prefix}", datasets=datasets,
                         flush_age="300ms", extra=sections)
    cfg.write_text(cfg.read_text().replace("\n[flush]", s3_storage_block(endpoint) + "\n[flush]", 1))
    return cfg


def test_secrets_never_appear_in_any_output(tmp_path, s3):
    registry = Registry(h.free_port(), auth=f"bronze:{SECRETS['REGISTRY_PASSWORD']}").start()
    outputs: dict[str, str] = {}
    try:
        orders, avro = h.unique("secrets.orders"), h.unique("secrets.avro")
        h.create_topics({orders: 2, avro: 1})
        produced = h.produce([e for e in cdc.generate(800, seed=95).events if e.table == "orders"],
                             {"orders": orders})
        # A framed Avro message naming a schema id the registry does not have: looked up with the
        # password, then dead-lettered with the registry's answer as its reason.
        from confluent_kafka import Producer
        p = Producer({"bootstrap.servers": h.bootstrap()})
        p.produce(avro, key=b"k", value=b"\0" + struct.pack(">I", 4242) + b"\x02\x04")
        assert p.flush(10) == 0
        prefix = h.unique("secrets")
        port = h.free_port()
        cfg = config(tmp_path, s3, registry, prefix, (orders, avro), port)
        env = {**SECRETS, "RUST_LOG": "debug"}
        for fmt in ("json", "text"):
            log = tmp_path / f"run-{fmt}.log"
            proc = h.start_bronze(cfg, env={**env, "BRONZE_LOG_FORMAT": fmt}, log=log)
            try:
                uri = f"s3://{BUCKET}/{prefix}/orders"
                h.wait_until(lambda: set(h.stored_offsets(uri)) == h.data_offsets(produced), 120, interval=1,
                             what="the orders")
                outputs[f"/metrics ({fmt} run)"] = h.scrape(f"http://127.0.0.1:{port}/metrics")
                outputs[f"/readyz ({fmt} run)"] = str(h.http_json(f"http://127.0.0.1:{port}/readyz"))
            finally:
                assert h.stop(proc) == 0
            outputs[f"{fmt} log"] = log.read_text(errors="replace")
        for args in (("status",), ("status", "--json"), ("validate",)):
            run = h.run_bronze(cfg, *args, env=env, check=False)
            outputs[f"bronze {' '.join(args)}"] = run.stdout + run.stderr
        # A SASL handshake the broker does not speak: librdkafka's own errors, at debug level.
        failing = config(tmp_path / "sasl", s3, registry, h.unique("secrets-sasl"), (orders, avro), h.free_port(),
                         kafka_extra='"security.protocol" = "SASL_PLAINTEXT"\n"sasl.mechanism" = "SCRAM-SHA-256"\n'
                                     '"debug" = "security,broker"\n')
        log = tmp_path / "sasl.log"
        proc = h.start_bronze(failing, env=env, log=log)
        time.sleep(10)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        outputs["failing SASL run log"] = log.read_text(errors="replace")
        assert "SASL" in outputs["failing SASL run log"], "the SASL path was exercised"
    finally:
        registry.stop()
    outputs["ledger rows"] = str(h.ledger(f"s3://{BUCKET}/{prefix}"))
    outputs["dead letters"] = str(h.read_delta(f"s3://{BUCKET}/{prefix}/_dead_letters/events").to_pylist())
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1")
    for obj in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]:
        if "/_delta_log/" in obj["Key"] and obj["Key"].endswith(".json"):
            body = client.get_object(Bucket=BUCKET, Key=obj["Key"])["Body"].read().decode()
            outputs[f"log entry {obj['Key']}"] = body
    # The searches meant something: the lookup was made with the password, debug lines were written.
    assert registry.lookups(4242) >= 1 and "4242" in outputs["dead letters"]
    assert '"level":"DEBUG"' in outputs["json log"] and " DEBUG " in outputs["text log"]
    found = {where: leaks(text) for where, text in outputs.items() if leaks(text)}
    assert not found, f"secrets in outputs: {found}"
    print(f"{len(outputs)} outputs, {sum(len(t) for t in outputs.values())} characters searched: no secret")
