"""The Docker files (no Docker engine runs here): the compose file parses, everything it mounts exists,
its parts agree with each other (Kafka version, Debezium topics vs datasets, Postgres columns vs
contracts, Prometheus rules and scrape port), and the bronze config it mounts passes `bronze validate`
against a real S3-compatible server standing in for MinIO."""

import json
import re
import shutil
import tomllib

import yaml

import harness as h

DOCKER = h.REPO / "docker"


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_mounts_exist_and_parts_agree():
    c = compose()
    services = c["services"]
    assert {"kafka", "minio", "postgres", "connect", "bronze", "prometheus"} <= set(services)
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            host = volume.split(":", 1)[0]
            if host.startswith("."):
                assert (DOCKER / host).exists(), f"{name} mounts missing {host}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"
    build = services["bronze"]["build"]
    dockerfile = (DOCKER / build["context"] / build["dockerfile"]).read_text()
    assert re.search(r"^USER\s+(?!0\b|root\b)\S+", dockerfile, re.M), "runtime image must not run as root"
    assert "--bin bronze" in dockerfile and "AS runtime" in dockerfile
    for copied in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M):
        assert (DOCKER / build["context"] / copied).exists(), copied

    pom = (DOCKER / "kafka" / "pom.xml").read_text()
    kafka_version = re.search(r"<kafka.version>(.+)</kafka.version>", pom).group(1)
    assert services["kafka"]["image"] == f"apache/kafka:{kafka_version}", "compose and tests use one Kafka"

    cfg = tomllib.loads((DOCKER / "bronze.toml").read_text())
    connector = json.loads((DOCKER / "debezium" / "postgres-connector.json").read_text())["config"]
    tables = connector["table.include.list"].split(",")
    topics = {f"{connector['topic.prefix']}.{t}" for t in tables}
    assert topics == {t for d in cfg["datasets"] for t in d["topics"]}, "Debezium topics feed the datasets"

    sql = (DOCKER / "postgres" / "init.sql").read_text()
    for d in cfg["datasets"]:
        contract = tomllib.loads((h.SCHEMAS / d["schema"]).read_text())
        body = re.search(rf"CREATE TABLE public\.{d['name']} \((.*?)\n\);", sql, re.S).group(1)
        columns = [line.split()[0] for line in body.strip().splitlines()]
        assert columns == [col["name"] for col in contract["columns"]], d["name"]

    prom = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    assert prom["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert any(v.endswith(":/etc/prometheus/alerts.yml:ro") and "config/prometheus/alerts.yml" in v
               for v in services["prometheus"]["volumes"])
    port = cfg["metrics"]["address"].rsplit(":", 1)[1]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == [f"bronze:{port}"]
    assert prom["scrape_configs"][0]["job_name"] == "bronze", "alerts.yml matches job=\"bronze\""


def test_mounted_config_passes_validate(tmp_path, s3):
    import boto3
    # Laid out as in the image: /etc/bronze/bronze.toml beside /etc/bronze/schemas.
    etc = tmp_path / "etc" / "bronze"
    etc.mkdir(parents=True)
    shutil.copy(DOCKER / "bronze.toml", etc / "bronze.toml")
    shutil.copytree(h.SCHEMAS, etc / "schemas")
    env = {k: str(v) for k, v in compose()["services"]["bronze"]["environment"].items() if k.startswith("AWS_")}
    bucket = tomllib.loads((etc / "bronze.toml").read_text())["storage"]["root"].split("/")[2]
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket=bucket)
    out = h.run_bronze(etc / "bronze.toml", "validate",
                       env={**env, "BRONZE__STORAGE__S3__ENDPOINT": s3})
    assert "bronze.toml: valid" in out.stdout, out.stdout
    assert "customers: ok" in out.stdout and "orders: ok" in out.stdout
