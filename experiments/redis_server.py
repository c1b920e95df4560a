"""`redis-server` for the cluster: on a loopback port, no persistence while it runs, its dump kept so a
planned restart keeps ids and history (docs/scaling.md)."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from .supervisor import Process, ProcessError, free_port


class ClusterError(ProcessError):
    """A cluster process did not start or a command to it failed; the message says which and why."""


def _with_free_port(start, attempts: int = 3):
    """Call `start()` (which picks free ports) again when it fails: a port found free may be taken before
    the process binds it."""
    for attempt in range(attempts):
        try:
            return start()
        except ClusterError:
            if attempt == attempts - 1:
                raise


class RedisServer:
    """`redis-server` on 127.0.0.1:`port`, no persistence while it runs, its dump kept in `directory`.

    `restart()` is a planned restart: SHUTDOWN SAVE writes the dump, and the new process loads it, so
    ids and history survive (a crash without AOF would lose them: docs/scaling.md).
    """

    def __init__(self, directory: Path, *, port: int | None = None, binary: str = "redis-server",
                 cpus: list[int] | None = None, label: str = "redis") -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.binary = binary
        self.cpus = cpus
        self.label = label
        self.process: Process | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--dbfilename", f"{self.label}.rdb", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
        ]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = Process(self.label, self.command(), self.directory / f"{self.label}.log", self.cpus).start()
        try:
            self.wait_ready(timeout_s)
        except ClusterError:
            self.process.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ping():
                return
            if not self.process.alive:
                raise ClusterError(f"redis-server exited at start:\n{self.process.log()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"redis-server did not answer PING within {timeout_s} s:\n{self.process.log()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            return self.command_line("PING") == "+PONG"
        except OSError:
            return False

    def command_line(self, *words: str, timeout_s: float = 2.0) -> str:
        """Send one inline command and return the first line of the answer (no client library needed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.decode(errors="replace").strip()

    def restart(self, down_s: float = 0.0, timeout_s: float = 10.0) -> float:
        """Save, stop, stay down `down_s`, start again on the same port with the same data; return the
        seconds Redis was unreachable."""
        started = time.monotonic()
        with contextlib.suppress(OSError):
            self.command_line("SHUTDOWN", "SAVE")
        if self.process.wait(timeout_s) is None:
            self.process.kill()
        if down_s > 0:
            time.sleep(down_s)
        self.restarts += 1
        self.start(timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
