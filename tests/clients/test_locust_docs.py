"""The examples in docs/locust.md run as written (with a real server's URL and a real histogram file)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, UNIT

from clients.profile import DEFAULT_PROFILE_PATH, load_profile
from clients.results import RunResults

DOC = (ROOT / "docs" / "locust.md").read_text()


def python_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC, re.DOTALL)


def example_using(marker: str) -> str:
    (code,) = [code for code in python_examples() if marker in code]
    return code


def run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "example.py"
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=30 * UNIT, cwd=ROOT)


def test_the_doc_has_the_examples_this_module_runs():
    assert len(python_examples()) == 2


def test_the_histogram_example_reads_a_histogram_file(tmp_path):
    results = RunResults(load_profile(DEFAULT_PROFILE_PATH).replace(warmup_s=0), started_at=0.0)
    for latency_ms in (1.5, 2.5, 40.0):
        results.record_delivery("long-polling", latency_ms / 1000, now=1.0)
    results.write(tmp_path)
    code = example_using("read_histogram").replace(
        "results/lp-demo/deliver_latency_long-polling.hdr", str(tmp_path / "deliver_latency_long-polling.hdr")
    )
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "3 deliveries"
    p50_ms = float(result.stdout.splitlines()[1].split()[1])
    assert abs(p50_ms - 2.5) < 0.005  # 3 significant digits


def test_the_client_example_talks_to_a_real_server(tmp_path, server_process):
    server = server_process("websocket")
    code = example_using("WebSocketClient").replace("http://127.0.0.1:8080", server.url)
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True hello"
