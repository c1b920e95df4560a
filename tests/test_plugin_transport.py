"""The seam holds: a transport that exists only under tests/ (tests/plugins/ndjson_transport: one registry
entry, one server module, one client module, one pane module) is served, driven by Locust under the
profile, summarized in summary.csv, plotted by the notebooks and shown as a pane in the demo, with no
code outside tests/ knowing its name (docs/transports.md points at it as the example)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import urllib.request

import pytest
from conftest import ROOT, TESTS, UNIT, require_binary, spawn_server
from helpers.browser import CHROMIUM, CHROMIUM_ARGS

PLUGINS = TESTS / "plugins"
NAME = "ndjson"
ENV = os.environ | {
    "RTLAB_PLUGINS": "ndjson_transport",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])),
}
EXPERIMENT = f"""
name = "plugin"
description = "a transport from a plugin, under the profile every transport runs"
transports = ["{NAME}"]

[profile]
users = 6
spawn_rate = 6
rooms = 2
messages_per_second = 1.0
message_bytes = 50
arrival = "poisson"
duration_s = 8
warmup_s = 1
"""


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5 * UNIT) as resp:
        return json.loads(resp.read())


def test_no_code_outside_tests_names_the_plugin_transport():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    code = ["servers", "clients", "experiments", "notebooks", "benchmarks", "Makefile", "pyproject.toml", ".ci"]
    found = subprocess.run(["git", "grep", "-l", "-i", "-w", NAME, "--", *code],
                           capture_output=True, text=True, cwd=ROOT)
    assert found.stdout == "", found.stdout


def test_the_plugin_transport_is_served_beside_rtlabs_own(tmp_path):
    server = spawn_server(["--transport", "all"], str(tmp_path / "server.log"), env=ENV)
    try:
        health = get_json(f"{server.url}/healthz")
        assert NAME in health["transports"]
        panes = get_json(f"{server.url}/demo/transports")["transports"]
        pane = next(p for p in panes if p["name"] == NAME)
        assert pane["label"] == "NDJSON stream" and pane["module"] == f"/static/transports/{NAME}.js"
        # Its route, its /metrics label, its drain count: all through the server transport interface.
        with urllib.request.urlopen(urllib.request.Request(
                f"{server.url}/rooms/p/messages", data=b'{"user": "ann", "text": "hi"}', method="POST",
                headers={"Content-Type": "application/json"}), timeout=5 * UNIT) as resp:
            assert resp.status == 201
        with urllib.request.urlopen(f"{server.url}/rooms/p/ndjson?since=0", timeout=5 * UNIT) as stream:
            assert json.loads(stream.readline())["text"] == "hi"
            with urllib.request.urlopen(f"{server.url}/metrics", timeout=5 * UNIT) as metrics:
                assert f'rtlab_messages_delivered_total{{transport="{NAME}"}} 1.0' in metrics.read().decode()
            with urllib.request.urlopen(urllib.request.Request(f"{server.url}/admin/drain", method="POST"),
                                        timeout=5 * UNIT) as drained:
                assert json.loads(drained.read())["ndjson_streams_closed"] == 1
    finally:
        server.stop()


def test_the_plugin_transport_runs_under_locust_into_the_summary_and_the_notebooks(tmp_path):
    spec = tmp_path / "plugin.toml"
    spec.write_text(EXPERIMENT)
    out = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "experiments", "run", str(spec), "--quick", "--out", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=120 * UNIT)
    assert run.returncode == 0, run.stdout + run.stderr
    run_dir = (out / "latest").resolve()
    with open(run_dir / "summary.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["transport"] == NAME
    assert float(row["delivered"]) > 0 and float(row["lost"]) == 0 and float(row["never_arrived"]) == 0
    assert float(row["wire_bytes_out"]) > 0 and float(row["server_cpu_us_per_delivered"]) > 0

    report = subprocess.run([sys.executable, "-m", "experiments", "report", str(run_dir)],
                            capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=240 * UNIT)
    assert report.returncode == 0, report.stdout + report.stderr
    latency = json.loads((run_dir / "report" / "01-latency.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in latency["cells"]])
    assert NAME in outputs and "Error" not in outputs
    assert (run_dir / "report" / "01-latency-cdf.png").stat().st_size > 10_000


def test_the_plugin_transport_gets_a_pane_in_the_demo(tmp_path):
    chromium = require_binary("chromium", CHROMIUM)
    from playwright import sync_api

    server = spawn_server(["--transport", "all"], str(tmp_path / "server.log"), env=ENV)
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/?room=plugin")
            pane = page.locator(f"#pane-{NAME}")
            sync_api.expect(pane).to_have_attribute("data-state", "live", timeout=10_000 * UNIT)
            assert pane.locator(".label").text_content() == "NDJSON stream"
            sync_api.expect(page.locator("#pane-websocket")).to_have_attribute("data-state", "live",
                                                                               timeout=10_000 * UNIT)
            box = page.locator("#pane-websocket form.send input[name=text]")
            box.fill("to the plugin's pane")
            box.press("Enter")
            sync_api.expect(pane.locator(".messages .text")).to_have_text(["to the plugin's pane"],
                                                                          timeout=10_000 * UNIT)
            browser.close()
        assert errors == []
    finally:
        server.stop()
