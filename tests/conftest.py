"""Shared fixtures. The broker is started by scripts/test.sh (scripts/kafka.sh), once per run."""

import os
import sys
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
