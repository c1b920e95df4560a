"""A batch of deliveries enters Locust's stats as the same deliveries logged one by one would
(tests/helpers/locust_batches.py, in a subprocess: Locust monkey-patches with gevent on import)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, UNIT

HELPER = ROOT / "tests" / "helpers" / "locust_batches.py"


def test_batches_of_deliveries_enter_locusts_stats_as_one_by_one():
    result = subprocess.run([sys.executable, str(HELPER)], capture_output=True, text=True, timeout=60 * UNIT, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "ok"
