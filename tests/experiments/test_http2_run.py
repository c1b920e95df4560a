"""The HTTP version as a dimension of an experiment ([network] http): read and swept, refused before anything starts
when HAProxy cannot give it, and a short run through the proxy with the member's bytes, the server's meter and the
proxy's CPU in the summary."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import psutil
import pytest
from conftest import ROOT, UNIT, require_binary

from experiments.spec import SpecError, experiment_from_dict, load_experiment

PROFILE = {"users": 6, "spawn_rate": 6, "rooms": 2, "messages_per_second": 1.0, "message_bytes": 50,
           "arrival": "poisson", "poll_interval_s": 0.5, "duration_s": 30, "warmup_s": 1, "long_poll_wait_s": 5}
SMALL = """
name = "http2-small"
transports = ["websocket", "long-polling"]
capture = true

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

[network]
http = "2"
"""


def test_http_is_read_swept_and_checked():
    e = experiment_from_dict({"name": "x", "transports": ["sse"], "profile": PROFILE, "network": {"http": "2"}}, "x")
    assert e.http == "2" and e.network is None  # not an impairment: no namespace
    assert [p.http for p in e.points()] == ["2"]
    swept = experiment_from_dict({"name": "x", "transports": ["sse"], "profile": PROFILE,
                                  "sweep": {"http": ["1.1", "2", "h2c"]}}, "x")
    assert [(p.http, p.slug) for p in swept.points()] == [
        ("1.1", "http=1.1/sse-r1"), ("2", "http=2/sse-r1"), ("h2c", "http=h2c/sse-r1")]
    assert swept.network is None and swept.point_keys == ["http"]
    with pytest.raises(SpecError, match=r"x: network.http: must be one of '1.1', '2', 'h2c'"):
        experiment_from_dict({"name": "x", "transports": ["sse"], "profile": PROFILE, "network": {"http": 2}}, "x")
    with pytest.raises(SpecError, match=r"sweep.http"):
        experiment_from_dict({"name": "x", "transports": ["sse"], "profile": PROFILE, "sweep": {"http": ["3"]}}, "x")
    with pytest.raises(SpecError, match=r"network.http: puts one proxy before one server"):
        experiment_from_dict({"name": "x", "transports": ["sse"], "profile": PROFILE, "network": {"http": "2"},
                              "cluster": {"instances": [2], "modes": ["sticky"]}}, "x")
    shipped = load_experiment(ROOT / "experiments" / "http2.toml")
    assert {p.http for p in shipped.points()} == {"1.1", "2", "h2c"}
    assert {p.network["loss_percent"] for p in shipped.points()} == {0.0, 2.0} and shipped.capture


def test_no_haproxy_refuses_the_experiment_before_anything_starts(tmp_path):
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    bin_dir = tmp_path / "bin"  # a PATH with no haproxy on it
    bin_dir.mkdir()
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", str(spec), "--out", str(tmp_path / "results")],
                          capture_output=True, text=True, cwd=ROOT, timeout=60 * UNIT,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "[network] http = 2: needs HAProxy" in proc.stderr and "nothing was started" in proc.stderr
    assert not (tmp_path / "results").exists()


def test_a_short_run_through_the_proxy_reports_the_members_bytes_and_the_proxys_cpu(tmp_path):
    require_binary("haproxy")
    spec = tmp_path / "small.toml"
    spec.write_text(SMALL)
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", str(spec), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=180 * UNIT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = (out / "latest").resolve()
    manifest = json.loads((run / "manifest.json").read_text())
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert [r["transport"] for r in rows] == ["websocket", "long-polling"]
    for row, point in zip(rows, manifest["points"], strict=True):
        assert point["proxy"]["http"] == "2" and point["proxy"]["cpus"] == manifest["pinning"]["server_cpus"]
        assert not psutil.pid_exists(point["proxy"]["pid"]) or \
            psutil.Process(point["proxy"]["pid"]).status() == psutil.STATUS_ZOMBIE
        assert float(row["delivered"]) > 0 and float(row["lost"]) == 0 and float(row["never_arrived"]) == 0
        assert float(row["proxy_cpu_us_per_delivered"]) > 0  # sampled apart from the server's
        assert float(row["meter_bytes_per_delivered"]) > 0  # the server's HTTP/1.1 behind the proxy
        if point["capture"] and not point["capture"].get("why_not"):
            assert float(row["tcp_payload_in"]) > 0 and float(row["bytes_per_delivered"]) > 0
        assert point["proxy"]["config"] == "proxy/haproxy.cfg"  # in the point's folder: no machine path
        assert "alpn h2" in (run / point["dir"] / point["proxy"]["config"]).read_text()
    assert not list(run.rglob("*.pem")) and not list(run.rglob("*.crt"))  # the certificate never lands in a run
