"""The README is the front door: every command it shows exists and starts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import ROOT

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def test_every_make_target_in_the_readme_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", MAKEFILE, re.M))
    used = set(re.findall(r"`make ([a-z][a-z-]*)", README)) | set(re.findall(r"^make ([a-z][a-z-]*)", README, re.M))
    assert {"run-experiment", "test"} <= used
    assert used <= targets, used - targets


@pytest.mark.parametrize("module", sorted(set(re.findall(r"python -m (\w+)", README))))
def test_every_python_module_in_the_readme_answers_help(module):
    proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_linked_file_exists():
    for link in re.findall(r"\]\(((?!http)[^)#]+)\)", README):
        assert (ROOT / link).exists(), link


def test_every_shipped_experiment_named_in_the_readme_exists():
    for name in re.findall(r"`(capacity|poll-interval|message-rate|baseline)`", README):
        assert (ROOT / "experiments" / f"{name}.toml").is_file()
