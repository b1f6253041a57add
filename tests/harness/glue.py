"""AWS Glue for the tests: a moto server of its own (so it can go down while S3 stays up) and what a
Glue client reads back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import wait_until


def start(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    wait_until(lambda: tables(port, "probe") is not None, 30, interval=0.3, what="moto's Glue")
    return proc


def client(port: int):
    import boto3
    return boto3.client("glue", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def tables(port: int, database: str) -> dict | None:
    """Name -> table of `database`; {} without it, None while the server does not answer."""
    try:
        c = client(port)
        try:
            pages = c.get_paginator("get_tables").paginate(DatabaseName=database)
            return {t["Name"]: t for p in pages for t in p["TableList"]}
        except c.exceptions.EntityNotFoundException:
            return {}
    except Exception:
        return None


def columns(table: dict | None) -> dict:
    """Column name -> Hive type of a Glue table (none for no table)."""
    if not table:
        return {}
    return {c["Name"]: c["Type"] for c in table["StorageDescriptor"]["Columns"]}
