"""The cost experiments in small: idle.toml (nobody talks: what holding a member costs), connections.toml
(members held on one process by Locust's worker processes) and capacity.toml (rooms of ten, "auto" processes, the
server under CPU limits),
each shrunk to a smoke run of the shipped file."""

from __future__ import annotations

import csv
import json
import os
import re

from conftest import require_cgroups
from helpers.experiments import run, shrink


def test_idle_members_cost_polls_and_heartbeats_and_polling_costs_the_most_bytes(tmp_path):
    rows, manifest, _ = run(shrink("idle", tmp_path, users="200", spawn_rate="200",
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
    rows, manifest, _ = run(shrink("connections", tmp_path, users="60", spawn_rate="60", rooms="6",
                                       transports='["websocket"]'),
                         tmp_path)
    assert manifest["experiment"]["processes"] == 2
    (row,) = rows
    assert float(row["lost"]) == 0 and float(row["rss_per_member_kb"]) > 0
    point = manifest["points"][0]
    with open((tmp_path / "results" / "latest").resolve() / point["dir"] / "resources.csv", newline="") as f:
        server = [r for r in csv.DictReader(f) if r["label"] == "server"]
    assert max(int(r["tcp_connections"]) for r in server) >= 60  # every member held its connection


def test_the_capacity_experiment_in_small_runs_the_server_limited_counts_its_cgroup_and_prints_both_checks(tmp_path):
    hierarchy = require_cgroups()
    spec = shrink("capacity", tmp_path, transports='["websocket"]', spawn_rate="40", light_load="10")
    text = re.sub(r"(?m)^users = \[.*\]$", "users = [10]", open(spec).read())
    open(spec, "w").write(text)
    before = set(os.listdir(hierarchy.cpu))
    rows, manifest, stdout = run(spec, tmp_path)
    # processes = "auto": one Locust process per CPU the load was pinned to, and the manifest says how it split.
    pinning = manifest["pinning"]
    assert pinning["generator_processes"] == len(pinning["generator_cpus"]) == manifest["experiment"]["processes"]
    assert pinning["generator_processes_asked"] == "auto"
    assert set(pinning["server_cpus"]).isdisjoint(pinning["generator_cpus"])
    # Each limit walked at every load, the light load also without a limit; the server stays pinned.
    assert [(int(r["users"]), float(r["cpu_limit"])) for r in rows] == [(10, 0), (10, 0.25), (10, 0.5)]
    assert manifest["experiment"]["server"]["cpu_period_ms"] == 20 and manifest["experiment"]["light_load"] == 10
    assert 0 < manifest["server_hash_seed"] < 2**32  # one seed for every server of the run
    for row, point in zip(rows, manifest["points"], strict=True):
        limit = float(row["cpu_limit"])
        group = point["cgroup"]
        assert group["period_us"] == 20_000 and group["burst_us"] == 0
        assert group["quota_us"] == (round(limit * 20_000) if limit else None)
        assert group["applied"].get("cpu.cfs_quota_us", group["applied"].get("cpu.max")) in (
            group["quota_us"] or -1, f"{group['quota_us'] or 'max'} 20000")
        assert float(row["offered_per_s"]) == int(row["users"]) * 9 * 1.0  # rooms of 10: 9 others get each send
        assert 0 < float(row["server_cpu_percent"]) < 100
        assert float(row["generator_cpu_us_per_delivered"]) > 0 and float(row["server_cpu_us_per_delivered"]) > 0
        # The kernel's count of the group and the sampler's of the server's processes (10 ms ticks, 5 a second) agree,
        # both as a share of the limit: the server, and only it, ran in the group.
        sampled, counted = float(row["server_cpu_percent"]), float(row["cgroup_cpu_percent"])
        assert abs(counted - sampled) <= 3 + 0.1 * sampled, row
        # CFS periods are counted where there is a quota to enforce: not in the light load's group without one.
        assert (int(float(row["cgroup_periods"])) > 0) == (limit > 0) and float(row["cgroup_throttled_ms"]) >= 0
    assert set(os.listdir(hierarchy.cpu)) == before  # every group removed
    assert "check 1: the capacity in proportion to the CPU limit" in stdout
    assert "check 2: server CPU per delivered message at 10 members, with the limit / without" in stdout
    assert "capacity of websocket at a 0.25-CPU limit:" in stdout and "per CPU" in stdout
    with open((tmp_path / "results" / "latest").resolve() / "capacity.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["transport"], float(r["cpu_limit"])) for r in table] == [("websocket", 0.25), ("websocket", 0.5)]
    assert all(r["light_cost_ratio"] and r["bound"] in ("server", "generator", "sweep") for r in table)
    from experiments import analysis

    found = analysis.load_run((tmp_path / "results" / "latest").resolve()).capacity()
    assert found["websocket"].load_key == "users" and found["websocket"].cpu_limit == 0.5


def test_stop_at_limit_walks_each_cpu_limit_on_its_own(tmp_path, monkeypatch):
    """The runner's walk, with its points faked: 0.25 CPU is at its limit at 20 members, so its 40 is skipped and
    0.5's is run."""
    import contextlib

    from experiments import runner
    from experiments.spec import load_experiment

    spec = shrink("capacity", tmp_path, transports='["websocket"]', light_load="10")
    text = re.sub(r"(?m)^users = \[.*\]$", "users = [10, 20, 40]", open(spec).read())
    open(spec, "w").write(text)
    ran = []

    def run_point(experiment, point, index, point_dir, pinning, display, limit=None, hash_seed=None):
        ran.append((point.swept["users"], point.cpu_limit))
        return {"pids": {}, "health": {}, "window_mono_s": [0.0, 1.0], "cluster": None, "capture": None, "proxy": None, "health_end": None}

    def summarize_point(point, *args):
        busy = point.cpu_limit == 0.25 and point.swept["users"] >= 20
        return {"transport": point.transport, "repeat": point.repeat, **point.swept, "latency_p99_ms": 10.0,
                "server_cpu_percent": 95.0 if busy else 30.0, "delivered_offered_ratio": 1.0, "lost": 0,
                "generator_saturated": False, "delivered_per_s": 9.0 * point.swept["users"], "sampler_cpu_percent": 1}

    monkeypatch.setattr(runner, "run_point", run_point)
    monkeypatch.setattr(runner, "summarize_point", summarize_point)
    monkeypatch.setattr(runner, "server_cgroup", lambda *args: contextlib.nullcontext())
    monkeypatch.setattr(runner.cgroup, "preflight", lambda **kw: None)
    run_dir = runner.run_experiment(load_experiment(spec), tmp_path / "out", quick=True, quiet=True)
    assert ran == [(10, 0.0), (10, 0.25), (10, 0.5), (20, 0.25), (20, 0.5), (40, 0.5)]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    (skipped,) = manifest["skipped"]
    assert skipped["swept"] == {"users": 40, "cpu_limit": 0.25}
    assert skipped["why"] == "stop_at_limit: server CPU 95 % of its 0.25-CPU limit at 20"
