"""Shared fixtures. The broker is started by scripts/test.sh (scripts/kafka.sh), once per run."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import harness  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "soak: long-running tests, only with BRONZE_SOAK=1")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BRONZE_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: set BRONZE_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _broker_up():
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": harness.bootstrap()})
    admin.list_topics(timeout=30)


BUCKET = "bronze-lake"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto) with the bucket BUCKET; its endpoint. AWS_* point at it meanwhile."""
    port = harness.free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import boto3
        deadline = time.time() + 30
        while True:
            try:
                client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                      aws_access_key_id="test", aws_secret_access_key="test")
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                if time.time() > deadline or moto.poll() is not None:
                    raise
                time.sleep(0.3)
        yield endpoint
    finally:
        moto.terminate()
        moto.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def postgres():
    """PostgreSQL from Debian's `postgresql` package (scripts/setup.sh installs it), in a fresh data
    directory on a free port."""
    from harness.postgres import running_postgres
    with running_postgres() as pg:
        yield pg


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the end of every bronze log it wrote: a failure seen once in CI can then be
    read from CI's output, not only re-run in the hope it happens again."""
    outcome = yield
    report = outcome.get_result()
    tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or tmp is None:
        return
    for log in sorted(Path(tmp).rglob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        # DEBUG lines drown the story of a run; the last ones are the ones that matter.
        shown = [line for line in lines if " DEBUG " not in line][-60:]
        report.sections.append((f"bronze log {log.relative_to(tmp)} (last {len(shown)} lines)",
                                "\n".join(line[:400] for line in shown)))
