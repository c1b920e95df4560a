"""End to end: `experiments/peers.toml --quick`, rtlab's transports beside the peers under one load, nothing
lost, every peer's figures as ratios to its rtlab transport, the peers' versions in the manifest, the peers
notebook drawing them."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT, UNIT, require_packages

from experiments import analysis, notebooks
from experiments.spec import load_experiment
from servers import registry

# The peers experiments/peers.toml runs (floor-sse is measured beside rtlab's SSE by benchmarks/fanout.py).
IN_RUN = [t for t in load_experiment(ROOT / "experiments" / "peers.toml").transports
          if t in registry.names(registry.PEER)]


# peers.toml as it is, on a lighter and shorter load: twelve servers in turn in about two minutes, every one of them
# (Channels' in-memory layer among them) well inside its capacity, so a message that never arrived is a fault.
LIGHT = {"users": "60", "rooms": "6", "duration_s": "5", "warmup_s": "1.5"}


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    for name in IN_RUN:
        require_packages(name)
    out = tmp_path_factory.mktemp("results")
    spec = out.parent / "peers.toml"
    lines = (ROOT / "experiments" / "peers.toml").read_text().splitlines()
    spec.write_text("\n".join(f"{line.split('=')[0].strip()} = {LIGHT[line.split('=')[0].strip()]}"
                               if line.split("=")[0].strip() in LIGHT else line for line in lines) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(spec), "--out", str(out), "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=400 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (out / "latest").resolve()
    with (run / "summary.csv").open() as f:
        rows = {row["transport"]: row for row in csv.DictReader(f)}
    return run, rows, proc.stdout


def test_every_peer_runs_beside_its_rtlab_transport_and_loses_nothing(peers_run):
    _, rows, _ = peers_run
    assert set(rows) == {"websocket", "sse", "long-polling", *IN_RUN}
    for transport, row in rows.items():
        assert int(row["delivered"]) > 100, transport
        assert [float(row[k]) for k in ("lost", "duplicates", "never_arrived")] == [0, 0, 0], transport
        assert float(row["bytes_per_delivered"]) > 0 and float(row["server_cpu_us_per_delivered"]) > 0, transport


def test_each_peers_figures_are_ratios_to_its_rtlab_transport(peers_run):
    _, rows, stdout = peers_run
    for transport, row in rows.items():
        vs = registry.get(transport).compare_with or transport
        assert row["vs"] == vs
        for ratio, column in (("cpu_ratio", "server_cpu_us_per_delivered"), ("p99_ratio", "latency_p99_ms"),
                              ("bytes_ratio", "bytes_per_delivered"), ("rss_per_member_ratio", "rss_per_member_kb")):
            expected = float(row[column]) / float(rows[vs][column])
            assert float(row[ratio]) == pytest.approx(expected, rel=1e-3, abs=1e-3), (transport, ratio)
        if vs != transport:
            assert f"{transport} against rtlab's {vs}" in stdout



def test_a_figure_a_peer_cannot_report_is_absent_not_estimated(peers_run):
    run, _, _ = peers_run
    points = analysis.load_run(run).points.set_index("transport")["payload_bytes_out_per_delivered_message"]
    assert points["websocket"] > 0 and points["long-polling"] > 0  # rtlab's servers count the payload
    for peer in IN_RUN:
        assert math.isnan(points[peer]), peer


def test_the_manifest_records_the_peers_versions(peers_run):
    run, _, _ = peers_run
    manifest = json.loads((run / "manifest.json").read_text())
    for package in ("python-socketio", "python-engineio", "aiohttp", "fastapi", "uvicorn", "websockets", "channels",
                    "daphne", "django", "sse-starlette", "starlette"):
        assert manifest["versions"].get(package), package
    health = {p["transport"]: p["healthz_end"] for p in manifest["points"]}
    # What uvicorn negotiated with the members (rtlab's client offers no compression) and what it runs on.
    fastapi = health["fastapi-websocket"]
    assert fastapi["server"]["ws"] and fastapi["server"]["loop"] and fastapi["server"]["http"]
    assert fastapi["compression"]["negotiated"] == 0 and fastapi["compression"]["offered_by_members"]["none"] > 0
    assert health["websockets-broadcast"]["compression"]["compression"] is None


def test_every_row_is_counted_by_the_capture(peers_run):
    _, rows, _ = peers_run
    for transport, row in rows.items():
        assert float(row["tcp_payload_out"]) == float(row["wire_bytes_out"]) > 0, transport
        assert float(row["tcp_dropped"]) == 0, transport
        has_meter = not registry.get(transport).process
        assert (row["meter_over_capture"] != "") == has_meter, transport
        if has_meter:
            assert float(row["meter_over_capture"]) == pytest.approx(1.0, abs=0.03), transport


def test_the_peers_notebook_draws_the_run(peers_run):
    run, _, _ = peers_run
    _, results = notebooks.build_report(run, [p for p in notebooks.notebook_paths() if p.stem == "07-peers"])
    (result,) = results
    assert result.error is None, result.error
    assert result.figures == ["07-peers.png"]
    assert (run / "report" / "07-peers.png").stat().st_size > 10_000
