"""A throwaway PostgreSQL server from Debian's packages, for the extract tests and benchmarks."""

import contextlib
import getpass
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import free_port


class Postgres:
    """A running server and a psql runner for it."""

    def __init__(self, port: int):
        self.port = port
        self.dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def sql(self, text: str) -> str:
        """Run `text` with psql (one session, stop at the first error); the output, unaligned."""
        out = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.dsn],
                             input=text, capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise AssertionError(f"psql failed: {out.stderr}")
        return out.stdout

    def session(self) -> subprocess.Popen:
        """A psql session fed through its stdin, for concurrent writers."""
        return subprocess.Popen(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", self.dsn], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@contextlib.contextmanager
def running_postgres():
    """initdb + pg_ctl start in a fresh directory on a free port; stopped and removed afterwards. initdb
    refuses root, so as root the server runs as the `postgres` user the Debian package creates."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert bins, "PostgreSQL server binaries missing: run scripts/setup.sh"
    bin_dir = bins[-1].parent
    as_user = ["runuser", "-u", "postgres", "--"] if getpass.getuser() == "root" else []
    data = Path(tempfile.mkdtemp(prefix="bronze-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    port = free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w",
                    "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield Postgres(port)
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)
