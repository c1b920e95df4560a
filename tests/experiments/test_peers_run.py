"""End to end: `experiments/peers.toml` on a short light load, rtlab's transports beside the peers, nothing lost,
every peer's figures as ratios to its rtlab transport, the peers' versions in the manifest, the peers notebook
drawing them."""

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
IN_FILE = [t for t in load_experiment(ROOT / "experiments" / "peers.toml").transports
           if t in registry.names(registry.PEER)]
# Run here: every peer that is a process of its own (its stack's server: no meter, its bytes only from the capture), one
# peer in rtlab's server process (a meter, no payload count), and the rtlab transports they are compared with. The other
# in-process peers go through the same runner path as floor-websocket; their clients are checked against their servers
# in tests/clients/test_clients_transports.py.
PEERS = [t for t in IN_FILE if registry.get(t).process] + ["floor-websocket"]
IN_RUN = [*dict.fromkeys(registry.get(t).compare_with for t in PEERS), *PEERS]


# peers.toml as it is (changed with --set, as a user shortens a run), on a lighter and shorter load: seven servers in
# turn, every one of them (Channels' in-memory layer among them) well inside its capacity, so a message that never
# arrived is a fault.
LIGHT = {"transports": json.dumps(IN_RUN, separators=(",", ":")), "profile.users": "60", "profile.rooms": "6",
         "profile.duration_s": "5", "profile.warmup_s": "1.5"}


@pytest.fixture(scope="module")
def peers_run(tmp_path_factory):
    for name in IN_RUN:
        require_packages(name)
    out = tmp_path_factory.mktemp("results")
    sets = [arg for key, value in LIGHT.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(ROOT / "experiments" / "peers.toml"), *sets, "--out", str(out),
         "--quiet"],
        capture_output=True, text=True, cwd=ROOT, timeout=400 * UNIT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (out / "latest").resolve()
    with (run / "summary.csv").open() as f:
        rows = {row["transport"]: row for row in csv.DictReader(f)}
    return run, rows, proc.stdout


def test_the_run_has_both_kinds_of_peer_and_what_they_are_compared_with():
    assert set(IN_RUN) <= set(load_experiment(ROOT / "experiments" / "peers.toml").transports)
    kinds = {bool(registry.get(t).process) for t in IN_RUN if t in IN_FILE}
    assert kinds == {True, False}
    assert {registry.get(t).compare_with for t in PEERS} <= set(IN_RUN) - set(PEERS)


def test_every_peer_runs_beside_its_rtlab_transport_and_loses_nothing(peers_run):
    _, rows, _ = peers_run
    assert set(rows) == set(IN_RUN)
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
    assert points["websocket"] > 0 and points["sse"] > 0  # rtlab's servers count the payload
    for peer in PEERS:
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
