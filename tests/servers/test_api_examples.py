"""Run every `$ curl` example in docs/api.md against real servers and compare with the documented output."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import ROOT, UNIT, require_binary

API_MD = ROOT / "docs" / "api.md"
SHORT_ONLY = "# on a short-polling-only server"


def examples() -> list[tuple[str, str]]:
    """(command, expected output) pairs from the ```console blocks, in document order."""
    pairs = []
    for block in re.findall(r"```console\n(.*?)```", API_MD.read_text(), re.S):
        command = None
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:]
            elif command is not None:
                pairs.append((command, line))
                command = None
    return pairs


def same(actual: object, expected: object) -> bool:
    """Equal, except that server timestamps (`ts`) may hold any number."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        if actual.keys() != expected.keys():
            return False
        return all(
            isinstance(actual[k], float) if k == "ts" else same(actual[k], expected[k]) for k in expected
        )
    if isinstance(expected, list) and isinstance(actual, list):
        return len(actual) == len(expected) and all(same(a, e) for a, e in zip(actual, expected, strict=False))
    return actual == expected


def test_docs_have_examples_for_every_route():
    commands = " ".join(c for c, _ in examples())
    for route in ("/healthz", "/messages?since=0", "wait=1", "/history", "-X POST", "/ws?since", "/events?since",
                  "Last-Event-ID", "-X DELETE"):
        assert route in commands


def test_api_examples_run_as_documented(server_process):
    require_binary("curl")
    everything = server_process("all")
    short_only = server_process("short-polling")
    failures = []
    for command, expected in examples():
        server = short_only if SHORT_ONLY in command else everything
        run = command.replace("localhost:8080", f"127.0.0.1:{server.port}")
        expected = expected.replace("localhost:8080", f"127.0.0.1:{server.port}")  # the server's own address
        out = subprocess.run(["bash", "-c", run], capture_output=True, text=True, timeout=10 * UNIT).stdout.strip()
        try:
            ok = same(json.loads(out), json.loads(expected))
        except ValueError:
            ok = out.strip() == expected.strip()
        if not ok:
            failures.append(f"{command}\n  documented: {expected}\n  actual:     {out}")
    assert not failures, "\n".join(failures)
