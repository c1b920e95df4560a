"""Start helper processes for the client tests and wait for the URL they print (stdlib only, no gevent)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HELPERS = Path(__file__).resolve().parent


class UrlProcess:
    """A subprocess that prints `... on http://HOST:PORT` once it listens; stop() sends SIGTERM."""

    def __init__(self, args: list[str], log_path: Path, timeout_s: float) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w+")  # noqa: SIM115  open for the process's life, closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, text=True)
        self.url = self._wait_for_url(timeout_s)

    def _wait_for_url(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = re.search(r" on (http://\S+)", self.log_path.read_text())
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.proc.args} did not start: {self.log_path.read_text()}")

    def stop(self, timeout_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def dropping_server(transport: str, log_path: Path, timeout_s: float, drop_id: int = 3) -> UrlProcess:
    """Start tests/helpers/dropping_server.py: a server that never shows message `drop_id` of any room."""
    script = str(HELPERS / "dropping_server.py")
    return UrlProcess([sys.executable, script, "--transport", transport, "--drop-id", str(drop_id)], log_path, timeout_s)
