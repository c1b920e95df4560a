"""The committed results (results/ and tests/fixtures/) name no path of the machine they were made on (the guide: no
machine paths in commits): every committed text file there is scanned for /tmp/, /root/, /home/, /work/ and this
checkout's and its venv's own folders, and the test names each file and line that holds one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import ROOT

SCANNED = ("results", "tests/fixtures")


def machine_prefixes() -> list[str]:
    prefixes = {"/tmp/", "/root/", "/home/", "/work/", f"{ROOT}/"}
    if sys.prefix != sys.base_prefix:  # a venv: wherever it lives (a system Python's /usr is no machine's own)
        prefixes.add(f"{sys.prefix}/")
    return sorted(prefixes)


def committed_files(root: Path, folders: tuple[str, ...]) -> list[Path]:
    """The files git tracks under `folders` (every file there, outside a git checkout)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--", *folders], cwd=root, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        return [root / name for name in listed.stdout.decode().split("\0") if name]
    return [path for folder in folders for path in sorted((root / folder).rglob("*")) if path.is_file()]


def machine_paths(files: list[Path], root: Path, prefixes: list[str]) -> list[str]:
    """'file:line: the line' for every line of a text file that holds one of `prefixes`."""
    found = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data:  # binary (a picture): not scanned
            continue
        text = data.decode("utf-8", errors="replace")
        if not any(prefix in text for prefix in prefixes):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if any(prefix in line for prefix in prefixes):
                found.append(f"{path.relative_to(root)}:{number}: {line.strip()[:200]}")
    return found


def test_committed_results_name_no_path_of_the_machine():
    files = committed_files(ROOT, SCANNED)
    assert len(files) > 100, "the reference runs and fixtures are committed"
    found = machine_paths(files, ROOT, machine_prefixes())
    assert not found, f"{len(found)} lines name a machine path:\n" + "\n".join(found[:50])


def test_the_scan_names_the_file_and_line_of_a_planted_path(tmp_path):
    run = tmp_path / "results" / "run"
    run.mkdir(parents=True)
    (run / "server.log").write_text('rtlab serving websocket\n  File "/root/.pyenv/lib/x.py", line 1\n')
    (run / "haproxy.cfg").write_text('    bind 127.0.0.1:8443 ssl crt "${RTLAB_PROXY_PEM}" alpn h2\n')
    (run / "picture.png").write_bytes(b"\x89PNG\0/tmp/")
    files = committed_files(tmp_path, ("results",))
    assert len(files) == 3
    assert machine_paths(files, tmp_path, machine_prefixes()) == [
        'results/run/server.log:2: File "/root/.pyenv/lib/x.py", line 1']
