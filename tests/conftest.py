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


from harness.moto import BUCKET, CREDENTIALS, running_moto  # noqa: E402


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A real S3-compatible server (moto) with the bucket BUCKET; its endpoint. AWS_* point at it meanwhile."""
    with running_moto(tmp_path_factory.mktemp("moto") / "moto.log") as endpoint:
        env = {"AWS_ENDPOINT_URL": endpoint, **CREDENTIALS}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield endpoint
        finally:
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
