"""End to end: a --quick run of a tiny experiment over every transport, and Ctrl-C mid-run."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import psutil
from conftest import ROOT, TRANSPORTS, UNIT
from helpers.processes import from_a_terminal

from experiments.supervisor import Process

TINY = """
name = "tiny"
description = "every transport, six members in two rooms"
transports = "all"

[profile]
users = 6
spawn_rate = 6
rooms = 2
messages_per_second = 1.0
message_bytes = 50
arrival = "poisson"
poll_interval_s = 0.5
long_poll_wait_s = 5
duration_s = 30
warmup_s = 1
"""
POINT_FILES = (
    "profile.toml", "server.log", "locust.log", "resources.csv", "metrics_before.txt", "metrics_after.txt",
    "locust_stats.csv", "locust_failures.csv", "completeness.json", "generator.json",
)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_quick_run_writes_every_file_and_leaves_no_process(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(spec), "--quick", "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=300 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (out / "latest").resolve()
    assert run.parent == out and run.name.endswith("-tiny")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"]["profile"]["duration_s"] <= 8  # --quick
    for key in ("git_commit", "git_dirty", "versions", "machine", "pinning", "started_at", "ended_at"):
        assert key in manifest
    assert manifest["versions"]["aiohttp"] and manifest["versions"]["locust"]
    assert len(manifest["points"]) == len(TRANSPORTS)
    assert manifest["experiment"]["transports"] == list(TRANSPORTS)  # "all", resolved from the registry
    for point in manifest["points"]:
        folder = run / point["dir"]
        for name in POINT_FILES:
            assert (folder / name).is_file(), f"{point['dir']}/{name} missing"
        assert (folder / f"deliver_latency_{point['transport']}.hdr").is_file()
        assert not any(alive(pid) for pid in point["pids"].values()), point["pids"]
        # How the server was configured, limits included (docs/security.md), as it said at start.
        settings = point["healthz"]["settings"]
        assert settings["send_rate_per_s"] == 20.0 and settings["request_head_timeout_s"] == 5.0
    with open(run / "summary.csv", newline="") as f:
        rows = {row["transport"]: row for row in csv.DictReader(f)}
    assert set(rows) == set(TRANSPORTS)
    for transport, row in rows.items():
        assert float(row["delivered"]) > 0, transport
        assert float(row["lost"]) == 0 and float(row["duplicates"]) == 0, transport
        assert float(row["wire_bytes_in"]) > 0 and float(row["wire_bytes_out"]) > 0, transport
        assert float(row["server_cpu_us_per_delivered"]) > 0, transport
    assert "websocket" in proc.stdout and "results:" in proc.stdout  # the comparison table was printed


def test_interrupt_mid_run_stops_every_process(tmp_path):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY.replace('transports = "all"', 'transports = ["websocket"]'))
    out = tmp_path / "results"
    runner = Process("runner", from_a_terminal([sys.executable, "-m", "experiments", "run", str(spec), "--out", str(out),
                                                "--quiet"]), tmp_path / "runner.log", session=False).start()
    try:
        deadline = time.monotonic() + 30 * UNIT
        started = None
        while time.monotonic() < deadline and started is None:
            started = next(out.glob("*/websocket-r1/started.json"), None)
            time.sleep(0.1)
        assert started is not None, "the run never started Locust"
        # Everything the runner started so far: its descendants.
        descendants = [p.pid for p in psutil.Process(runner.pid).children(recursive=True)]
        assert descendants
        runner.signal(signal.SIGINT)
        code = runner.wait(30 * UNIT)
    finally:
        runner.stop()
    output = runner.log()
    assert code == 130, output
    time.sleep(0.5)
    assert not [pid for pid in descendants if alive(pid)]
