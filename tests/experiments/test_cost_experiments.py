"""The cost experiments in small: idle.toml (nobody talks: what holding a member costs), connections.toml
(members held on one process by Locust's worker processes) and capacity.toml (rooms of ten, "auto" processes),
each shrunk to a smoke run of the shipped file."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

from conftest import ROOT, UNIT


def shrink(name: str, tmp_path, **changes: str) -> str:
    """The shipped experiment `name` with some top-level or [profile] lines replaced (`key = value` text)."""
    text = (ROOT / "experiments" / f"{name}.toml").read_text()
    for key, value in changes.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, f"{name}.toml has no line {key} = ..."
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def run(spec: str, tmp_path) -> tuple[list[dict], dict]:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", spec, "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300 * UNIT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f)), json.loads((run_dir / "manifest.json").read_text())


def test_idle_members_cost_polls_and_heartbeats_and_polling_costs_the_most_bytes(tmp_path):
    rows, manifest = run(shrink("idle", tmp_path, users="200", spawn_rate="200",
                                transports='["short-polling", "websocket"]'), tmp_path)
    by = {row["transport"]: row for row in rows}
    assert manifest["experiment"]["profile"]["messages_per_second"] == 0
    for row in rows:
        assert float(row["sent"]) == 0 and float(row["lost"]) == 0
        # Counted in the kernel's 10 ms ticks: an idle server over a quick window may well read 0, never less.
        assert float(row["server_cpu_us_per_member_s"]) >= 0
        assert 0 <= float(row["sampler_cpu_percent"]) < 100
    # A short-polling member asks every second whatever happens; an idle WebSocket says nothing until its ping.
    # 200 members: their polls (~20 ms of CPU a second) stand well above the 10 ms ticks and the fixed costs.
    assert float(by["short-polling"]["bytes_per_member_s"]) > 10 * max(float(by["websocket"]["bytes_per_member_s"]), 1)
    assert float(by["short-polling"]["server_cpu_us_per_member_s"]) >= float(by["websocket"]["server_cpu_us_per_member_s"])
    for point in manifest["points"]:
        assert point["observer"]["cpus"] == manifest["pinning"]["generator_cpus"]
        assert manifest["pinning"]["sampler_cpus"] == manifest["pinning"]["generator_cpus"]


def test_members_held_by_locust_worker_processes_are_counted_per_connection(tmp_path):
    rows, manifest = run(shrink("connections", tmp_path, users="60", spawn_rate="60", rooms="6",
                                       transports='["websocket"]'),
                         tmp_path)
    assert manifest["experiment"]["processes"] == 2
    (row,) = rows
    assert float(row["lost"]) == 0 and float(row["rss_per_member_kb"]) > 0
    point = manifest["points"][0]
    with open((tmp_path / "results" / "latest").resolve() / point["dir"] / "resources.csv", newline="") as f:
        server = [r for r in csv.DictReader(f) if r["label"] == "server"]
    assert max(int(r["tcp_connections"]) for r in server) >= 60  # every member held its connection


def test_the_capacity_experiment_in_small_grows_rooms_of_ten_and_says_what_bound_it(tmp_path):
    spec = shrink("capacity", tmp_path, transports='["websocket"]', spawn_rate="40")
    text = re.sub(r"(?m)^users = \[.*\]$", "users = [10, 20]", open(spec).read())
    open(spec, "w").write(text)
    rows, manifest = run(spec, tmp_path)
    # processes = "auto": one Locust process per CPU the load was pinned to, and the manifest says how it split.
    pinning = manifest["pinning"]
    assert pinning["generator_processes"] == len(pinning["generator_cpus"]) == manifest["experiment"]["processes"]
    assert pinning["generator_processes_asked"] == "auto"
    assert set(pinning["server_cpus"]).isdisjoint(pinning["generator_cpus"])
    assert [int(row["users"]) for row in rows] == [10, 20]
    for row in rows:  # rooms of 10: 9 others receive each send; the offer grows with the members, not their square
        assert float(row["offered_per_s"]) == int(row["users"]) * 9 * 1.0
        assert 0 < float(row["server_cpu_percent"]) < 100
        assert float(row["generator_cpu_us_per_delivered"]) > 0 and float(row["server_cpu_us_per_delivered"]) > 0
    assert [p["swept"] for p in manifest["points"]] == [{"users": 10}, {"users": 20}]
    from experiments import analysis

    (found,) = analysis.load_run((tmp_path / "results" / "latest").resolve()).capacity().values()
    assert found.transport == "websocket" and found.load_key == "users"
    assert found.bound in ("server", "generator", "sweep") and found.reason
