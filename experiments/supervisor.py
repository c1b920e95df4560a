"""One supervisor for every child process the lab starts: start it (a session of its own, pinned to CPUs,
logged to a file), wait until it is ready (a machine-readable signal, a deadline), stop it (SIGTERM to its
process group, then SIGKILL), always in `finally`. The runner, the cluster, the Locust launcher, the
benchmark and the tests all start processes through here; nothing else calls subprocess.Popen.

A server says it is ready by writing `--ready-file` (JSON: url, pid, transports) once it listens, so no
caller parses its log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02

T = TypeVar("T")


class ProcessError(RuntimeError):
    """A child process did not start, or stopped before it was ready; the message carries its log's tail."""


@dataclass
class Process:
    """One child process. Use `start()`, then `wait_ready(...)`, and `stop()` in `finally` (or `with`)."""

    label: str
    command: list[str]
    log_path: Path | None = None  # stdout and stderr go here; None: the caller's (a foreground Locust)
    cpus: list[int] | None = None  # pinned to these, from before it runs its first instruction
    env: Mapping[str, str] | None = None
    cwd: Path = ROOT
    session: bool = True  # a session of its own: Ctrl-C in the terminal reaches only the caller
    stdin: Any = subprocess.DEVNULL  # subprocess.PIPE for the few that talk over pipes
    stdout: Any = None  # subprocess.PIPE to read it (then log_path holds stderr only)
    # An experiments.cgroup.Cgroup (its CPU limit): the child moves itself in between fork and exec, so the program
    # and every process it starts are limited from their first instruction.
    cgroup: Any = None
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def start(self) -> Process:
        cpus, cgroup = self.cpus, self.cgroup

        def pin() -> None:
            if cgroup is not None:
                cgroup.enter()
            if cpus:
                os.sched_setaffinity(0, cpus)

        log = open(self.log_path, "a") if self.log_path is not None else None  # noqa: SIM115  closed below
        try:
            self.proc = subprocess.Popen(
                self.command, stdin=self.stdin,
                stdout=self.stdout if self.stdout is not None else log,
                stderr=subprocess.STDOUT if log is not None and self.stdout is None else log,
                preexec_fn=pin if cpus or cgroup is not None else None, start_new_session=self.session, cwd=self.cwd,
                env=dict(self.env) if self.env is not None else None,
                text=True,
            )
        except OSError as error:
            raise ProcessError(f"{self.label}: cannot start {self.command[0]}: {error}") from None
        finally:
            if log is not None:
                log.close()
        return self

    def __enter__(self) -> Process:
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def log(self) -> str:
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, ready: Callable[[], T | None], timeout_s: float, what: str = "be ready") -> T:
        """Poll `ready()` until it returns something other than None and return that; raise ProcessError (and
        stop the process) when it exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = ready()
            if value is not None:
                return value
            if not self.alive:
                raise ProcessError(f"{self.label} exited ({self.returncode}) before it could {what}:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise ProcessError(f"{self.label} did not {what} within {timeout_s:g} s:\n{self.log()[-4000:]}")
            time.sleep(POLL_S)

    def wait(self, timeout_s: float | None = None) -> int | None:
        """Wait for it to exit on its own; return its status, or None when still running after `timeout_s`."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM its process group (or it, without a session of its own), wait, then SIGKILL what is left;
        return its exit status. Safe to call more than once."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        # The whole group even when the leader exited: a child of it (a Locust worker) may have outlived it.
        self._kill(signal.SIGKILL)
        return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL it at once, as a crash would end it."""
        if self.alive:
            self._kill(signal.SIGKILL)
            self.proc.wait()

    def _kill(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.session:
                os.killpg(self.proc.pid, signum)
            elif self.proc.poll() is None:
                self.proc.send_signal(signum)


@dataclass
class Group:
    """Processes stopped together, the last started first: `group.start(...)`, then `group.stop_all()`."""

    processes: list[Process] = field(default_factory=list)

    def start(self, label: str, command: list[str], log_path: Path | None, **options: Any) -> Process:
        process = Process(label, command, log_path, **options).start()
        self.processes.append(process)
        return process

    def adopt(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM every one at once, then wait for each (SIGKILL past the shared deadline)."""
        for process in reversed(self.processes):
            if process.alive:
                process._kill(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in reversed(self.processes):
            process.stop(max(0.1, deadline - time.monotonic()))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block is done, then deliver the first that came (main thread only): for a
    teardown (a namespace, a cgroup) that a second Ctrl-C must not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: came.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if came:
            signal.raise_signal(came[0])


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now (bind to 0, read it, close). Only for processes that
    cannot bind port 0 themselves and report it (Redis, HAProxy); rtlab servers do (start_server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- rtlab servers -----------------------------------------------------------------------------------------------


def read_ready_file(path: Path) -> dict | None:
    """The JSON a server wrote once listening, or None while it has not (a half-written file is never seen:
    the server renames it into place)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class ServerProcess:
    """A `python -m servers` process that said it was ready: its process, its URL and what it said."""

    process: Process
    ready: dict

    @property
    def url(self) -> str:
        return self.ready["url"]

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def proc(self) -> subprocess.Popen:
        return self.process.proc

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        return self.process.stop(timeout_s)


@dataclass
class StartingServer:
    """A `python -m servers` process started but not yet ready (start several, then wait for each)."""

    process: Process
    ready_file: Path

    def wait(self, timeout_s: float = 20.0) -> ServerProcess:
        """Wait until it says it listens (its ready file); stop it and raise ProcessError when it does not."""
        try:
            ready = self.process.wait_ready(lambda: read_ready_file(self.ready_file), timeout_s, "say it listens")
        except BaseException:
            self.process.stop()
            raise
        finally:
            with contextlib.suppress(OSError):
                self.ready_file.unlink()
                self.ready_file.parent.rmdir()
        return ServerProcess(self.process, ready)


def launch_server(args: list[str], log_path: Path | None = None, *, label: str = "server",
                  cpus: list[int] | None = None, env: Mapping[str, str] | None = None, group: Group | None = None,
                  python: str = sys.executable, entry: list[str] | None = None, cgroup: Any = None) -> StartingServer:
    """Start `python -m servers ARGS --ready-file F` (on port 0 unless ARGS give one); `wait()` for it next.
    Give a `group` to have it stopped with the others, a `cgroup` (experiments.cgroup) to start it limited in one;
    `entry` replaces `python -m servers` (a test's own server script that takes the same --port and --ready-file)."""
    ready_file = Path(tempfile.mkdtemp(prefix="rtlab-ready-")) / "ready.json"
    command = [*(entry or [python, "-m", "servers"]), *args, "--ready-file", str(ready_file)]
    if "--port" not in args:
        command += ["--port", "0"]
    process = Process(label, command, log_path, cpus=cpus, env=env, cgroup=cgroup).start()
    if group is not None:
        group.adopt(process)
    return StartingServer(process, ready_file)


def start_server(args: list[str], log_path: Path | None = None, *, timeout_s: float = 20.0,
                 **options: Any) -> ServerProcess:
    """Start a server (launch_server's options) and wait until it listens."""
    return launch_server(args, log_path, **options).wait(timeout_s)
