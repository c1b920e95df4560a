"""benchmarks/held.py in small: it holds idle members step by step on each push transport and reports the server's
RSS per held connection. A smoke run: the figures' sizes are the benchmark's business (docs/metrics.md)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, UNIT, require_packages


def test_members_are_held_step_by_step_and_the_slope_is_reported(tmp_path):
    out = tmp_path / "held.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.held", "--transports", "websocket", "sse", "long-polling",
         "--steps", "40", "120", "--rooms", "4", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120 * UNIT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"websocket", "sse", "long-polling"}
    for transport, result in results.items():
        # The server held every member of each step (its established sockets counted), then RSS was read.
        assert [p["connections"] >= step for p, step in zip(result["points"], (40, 120))] == [True, True], transport
        assert all(p["rss_bytes"] > result["rss_empty_bytes"] * 0.5 for p in result["points"])
        assert math.isfinite(result["kib_per_connection"])


def test_short_polling_is_refused_it_holds_nothing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.held", "--transports", "short-polling", "--steps", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60 * UNIT, check=False)
    assert proc.returncode != 0 and "holds no connection" in proc.stdout + proc.stderr


def test_a_peer_of_another_stack_is_held_too(tmp_path):
    """Its sockets carry the Origin a page sends: Channels' tutorial refuses one without it."""
    require_packages("channels-websocket")
    out = tmp_path / "held.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.held", "--transports", "channels-websocket", "--steps", "20", "60",
         "--rooms", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120 * UNIT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())["results"]["channels-websocket"]
    assert [p["connections"] >= step for p, step in zip(result["points"], (20, 60))] == [True, True]
