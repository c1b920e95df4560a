"""Shipped experiments shrunk to a smoke run, and run as a user runs them (`python -m experiments run`)."""

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


def run(spec: str, tmp_path, *overrides: str) -> tuple[list[dict], dict, str]:
    """`python -m experiments run SPEC --quick`, with `--set` each of `overrides`: the summary's rows, the manifest,
    the terminal's output."""
    out = tmp_path / "results"
    sets = [arg for override in overrides for arg in ("--set", override)]
    proc = subprocess.run([sys.executable, "-m", "experiments", "run", spec, "--quick", *sets, "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300 * UNIT, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = (out / "latest").resolve()
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f)), json.loads((run_dir / "manifest.json").read_text()), proc.stdout
