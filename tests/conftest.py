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


class Postgres:
    """A throwaway PostgreSQL server (Debian's packages) and a psql runner for it."""

    def __init__(self, port: int, bin_dir: Path, as_user: list[str]):
        self.port = port
        self.bin_dir = bin_dir
        self.as_user = as_user
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def sql(self, text: str) -> str:
        """Run `text` with psql (one session, stop at the first error); the output, unaligned."""
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.dsn],
                             input=text, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise AssertionError(f"psql failed: {out.stderr}")
        return out.stdout

    def session(self) -> subprocess.Popen:
        """A psql session fed through its stdin, for concurrent writers."""
        return subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def postgres():
    """PostgreSQL from Debian's `postgresql` package (scripts/setup.sh installs it), in a fresh data
    directory on a free port. initdb refuses root, so as root it runs as the `postgres` user."""
    import getpass
    import shutil
    import tempfile
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert bins, "PostgreSQL server binaries missing: run scripts/setup.sh"
    bin_dir = bins[-1].parent
    as_user = ["runuser", "-u", "postgres", "--"] if getpass.getuser() == "root" else []
    data = Path(tempfile.mkdtemp(prefix="bronze-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    port = harness.free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield Postgres(port, bin_dir, as_user)
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
