"""The runner's packet-capture step (experiments/capture.py) on a short captured run of rtlab's WebSocket and SSE:
the capture's TCP payload over the whole point equals the server's own meter byte for byte (the two methods
agree), the window's counts reach the summary, and every row's wire bytes are the capture's."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
from conftest import REQUIRE_ALL, ROOT, UNIT

from experiments import capture
from experiments.figures import metric_total, parse_metrics

CAPTURED = """
name = "captured"
description = "two transports, a captured point each"
transports = ["websocket", "sse"]
capture = true

[profile]
users = 8
spawn_rate = 8
rooms = 2
messages_per_second = 2.0
message_bytes = 50
arrival = "poisson"
duration_s = 5
warmup_s = 1.5
"""


@pytest.fixture(scope="module")
def captured_run(tmp_path_factory):
    if os.geteuid() != 0:
        reason = "a packet capture needs CAP_NET_RAW (root)"
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {reason}")
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("captured")
    spec = tmp / "captured.toml"
    spec.write_text(CAPTURED)
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(spec), "--out", str(tmp / "results"), "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=120 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (tmp / "results" / "latest").resolve()
    with (run / "summary.csv").open() as f:
        rows = {row["transport"]: row for row in csv.DictReader(f)}
    return run, rows


# A leaving member's WebSocket client says goodbye as a closing tab does (a close frame, code 1000 and "bye": 2 + 4 mask
# + 2 + 3 bytes) and closes at once; with frames still unread in its socket its kernel answers with a reset, and a
# close frame the server had not read yet is lost to it while it was on the wire.
CLOSE_FRAME_BYTES = 11


@pytest.mark.parametrize("transport", ["websocket", "sse"])
def test_the_capture_equals_the_servers_meter_over_the_whole_point(captured_run, transport):
    run, _ = captured_run
    manifest = json.loads((run / "manifest.json").read_text())
    (entry,) = [p for p in manifest["points"] if p["transport"] == transport]
    point = run / entry["dir"]
    counts = capture.read(point)
    assert counts is not None and counts["dropped"] == 0
    start = parse_metrics((point / "metrics_start.txt").read_text())
    end = parse_metrics((point / "metrics_end.txt").read_text())

    def moved(name: str) -> float:
        return metric_total(end, name) - metric_total(start, name)

    members = counts["to_server"]["syn"]  # every connection the members opened, inside the capture
    assert members > 0 and counts["to_server"]["payload_bytes"] > 10_000
    assert counts["from_server"]["payload_bytes"] == moved("rtlab_wire_sent_bytes_total")
    unread = counts["to_server"]["payload_bytes"] - moved("rtlab_wire_received_bytes_total")
    if transport == "sse":  # no goodbye: the streams and the posts' connections just close
        assert unread == 0
    else:
        assert unread % CLOSE_FRAME_BYTES == 0 and 0 <= unread <= members * CLOSE_FRAME_BYTES, unread


def test_the_window_reaches_the_summary_as_every_rows_wire_bytes(captured_run):
    run, rows = captured_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"]["capture"] is True
    for transport, row in rows.items():
        (entry,) = [p for p in manifest["points"] if p["transport"] == transport]
        assert entry["capture"]["why_not"] is None and entry["capture"]["ports"]["front"] > 0
        window = capture.window(run / entry["dir"])
        assert float(row["tcp_payload_in"]) == window["to_server"]["payload_bytes"] == float(row["wire_bytes_in"])
        assert float(row["tcp_payload_out"]) == window["from_server"]["payload_bytes"] == float(row["wire_bytes_out"])
        assert float(row["tcp_dropped"]) == 0
        assert float(row["tcp_packets_per_delivered"]) > 0
        assert float(row["ip_bytes_per_delivered"]) > float(row["bytes_per_delivered"])  # headers on top
        # The meter read its counters a few ms from the capture's marks: the same bytes to within that traffic.
        assert float(row["meter_over_capture"]) == pytest.approx(1.0, abs=0.03), transport


def test_the_capture_is_an_observer_not_part_of_the_servers_cpu(captured_run):
    from experiments.figures import NOT_SERVER, read_samples

    run, _ = captured_run
    manifest = json.loads((run / "manifest.json").read_text())
    point = run / manifest["points"][0]["dir"]
    assert capture.LABEL in read_samples(point / "resources.csv")
    assert capture.LABEL in NOT_SERVER
