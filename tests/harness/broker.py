"""A broker of a test's own (`scripts/kafka.sh` on ports and a state directory of its own), for the
faults a shared broker cannot take: killed, restarted on its state, down when bronze starts.

    with PrivateBroker(tmp_path) as broker:       # formatted and started; BRONZE_KAFKA_BOOTSTRAP points at it
        broker.kill()                              # SIGKILL, as a crashed host would
        broker.resume()                            # the same log dirs: topics, data, group offsets
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import harness as h

SCRIPT = h.REPO / "scripts" / "kafka.sh"


class PrivateBroker:
    def __init__(self, tmp_path: Path):
        self.port, self.controller_port = h.free_port(), h.free_port()
        self.state = tmp_path / "kafka-private"
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, BRONZE_KAFKA_STATE=str(self.state), BRONZE_KAFKA_PORT=str(self.port),
                        BRONZE_KAFKA_CONTROLLER_PORT=str(self.controller_port))
        self._saved: str | None = None

    def __enter__(self) -> PrivateBroker:
        self._run("start")
        self._saved = os.environ.get("BRONZE_KAFKA_BOOTSTRAP")
        os.environ["BRONZE_KAFKA_BOOTSTRAP"] = self.bootstrap
        return self

    def __exit__(self, *exc) -> None:
        if self._saved is None:
            os.environ.pop("BRONZE_KAFKA_BOOTSTRAP", None)
        else:
            os.environ["BRONZE_KAFKA_BOOTSTRAP"] = self._saved
        self._run("stop")

    def _run(self, command: str) -> None:
        out = subprocess.run(["bash", str(SCRIPT), command], env=self.env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, f"kafka.sh {command}: {out.stderr[-2000:]}"

    def pid(self) -> int:
        return int((self.state / "kafka.pid").read_text())

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, nothing flushed beyond what the OS has."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise AssertionError(f"broker pid {pid} still alive after SIGKILL")

    def resume(self) -> None:
        self._run("resume")
