"""The one supervisor: a process is ready when it says so, is stopped with SIGTERM then SIGKILL (its whole
group), and one that dies before it is ready is reported with its log."""

from __future__ import annotations

import sys
import time

import psutil
import pytest
from conftest import UNIT

from experiments.supervisor import Group, Process, ProcessError, start_server

STUBBORN = """
import signal, sys, time, subprocess
signal.signal(signal.SIGTERM, lambda *a: print("ignoring SIGTERM", flush=True))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_process_that_ignores_sigterm_is_killed_with_its_children(tmp_path):
    log = tmp_path / "stubborn.log"
    process = Process("stubborn", [sys.executable, "-c", STUBBORN], log).start()
    child = process.wait_ready(lambda: int(text) if (text := log.read_text().strip()).isdigit() else None,
                               10 * UNIT, "say its child's pid")
    started = time.monotonic()
    assert process.stop(timeout_s=0.5) == -9  # SIGTERM ignored, then SIGKILL
    assert time.monotonic() - started < 5 * UNIT
    assert "ignoring SIGTERM" in process.log()
    time.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert process.stop() == -9  # stopping again is harmless


def test_a_process_that_exits_before_it_is_ready_is_reported_with_its_log(tmp_path):
    process = Process("quitter", [sys.executable, "-c", "print('no such luck'); raise SystemExit(3)"],
                      tmp_path / "quitter.log").start()
    with pytest.raises(ProcessError, match=r"quitter exited \(3\) before it could listen:\nno such luck"):
        process.wait_ready(lambda: None, 10 * UNIT, "listen")


def test_a_server_is_ready_when_it_says_so_and_a_group_stops_it(tmp_path):
    group = Group()
    server = start_server(["--transport", "websocket"], tmp_path / "server.log", group=group, timeout_s=20 * UNIT)
    assert server.url == f"http://127.0.0.1:{server.port}" and server.ready["transports"] == ["websocket"]
    assert server.ready["pid"] == server.process.pid
    group.stop_all()
    assert server.process.returncode == 0  # SIGTERM: a clean stop
    with pytest.raises(ProcessError, match="before it could say it listens"):
        start_server(["--transport", "no-such-transport"], tmp_path / "bad.log", timeout_s=20 * UNIT)
