"""A real S3-compatible server (moto) on a free port, for the tests (`conftest.s3`) and the benches."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from pathlib import Path

from . import free_port

BUCKET = "bronze-lake"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}


@contextlib.contextmanager
def running_moto(log: Path):
    """moto serving on loopback with the bucket BUCKET; yields its endpoint."""
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
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


def s3_storage_block(endpoint: str, **client) -> str:
    """The `[storage.s3]` block of a config writing through `endpoint` (credentials from the
    environment, as production secrets would be); `client` adds keys such as request_timeout."""
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in client.items())
    return f"""
[storage.s3]
endpoint = "{endpoint}"
region = "us-east-1"
access_key_id = "${{env:AWS_ACCESS_KEY_ID}}"
secret_access_key = "${{env:AWS_SECRET_ACCESS_KEY}}"
allow_http = true
{extra}"""
