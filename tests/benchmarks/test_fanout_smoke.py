"""benchmarks/fanout.py in small: it drives rtlab's transports beside their floors and reports what it measured.
A smoke run, not a timing: the figures' sizes are the benchmark's business (docs/metrics.md), not a test's."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from conftest import ROOT, UNIT, require_packages

SMALL = ["--rooms", "2", "--members", "4", "--rate", "4", "--warmup", "0.5", "--duration", "1.5"]


def run(tmp_path, *args: str) -> dict:
    out = tmp_path / "fanout.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fanout", *args, *SMALL, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120 * UNIT, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_transport_with_a_floor_is_compared_with_it_and_nothing_is_lost(tmp_path):
    pairs = run(tmp_path, "--rounds", "1")["pairs"]
    assert set(pairs) == {"websocket", "long-polling", "sse", "short-polling"}
    for transport, result in pairs.items():
        assert result["floor"] == f"floor-{transport}"
        assert math.isfinite(result["ratio_median"]) and result["ratio_median"] > 0
        # Short polling is compared per poll answered (its cost is the polls), the others per delivered message.
        assert result["unit"] == ("request" if transport == "short-polling" else "delivered")
        for server in result["rounds"][0].values():
            assert server["delivered"] > 0 and server["lost"] == 0
            # Every member got what was sent in the window, but for messages in flight at its two edges (for short
            # polling, up to a poll interval's worth: 4 msg/s, 4 members, 1 s).
            slack = 2 * 2 * 4 + (2 * 4 * 4 if transport == "short-polling" else 0)
            assert abs(server["delivered"] - server["due"]) <= slack
            if transport in ("short-polling", "long-polling"):
                assert server["requests"] > 0 and server["cpu_us_per_request"] > 0


def test_the_highest_rate_search_steps_up_and_says_what_bound_it(tmp_path):
    highest = run(tmp_path, "--max", "floor-websocket", "--max-steps", "2")["highest"]["floor-websocket"]
    assert highest["bound"] in {"server", "generator", "steps"}
    assert [step["rate_per_room"] for step in highest["steps"]][:2] == [4.0, 6.0]


def test_rtlab_is_paired_with_any_peer_it_is_compared_with(tmp_path):
    """--against: rtlab's transport beside a peer of another stack (its registry compare_with), same load."""
    require_packages("websockets-broadcast")
    pairs = run(tmp_path, "--rounds", "1", "--against", "websockets-broadcast")["pairs"]
    result = pairs["websockets-broadcast"]
    assert (result["transport"], result["floor"]) == ("websocket", "websockets-broadcast")
    for server in result["rounds"][0].values():
        assert server["delivered"] > 0 and server["lost"] == 0
