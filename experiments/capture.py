"""The runner's packet-capture step: the TCP bytes of a point, counted by the kernel on the ports its members use.

An experiment with `capture = true` gets, for every point, one `python -m experiments.tcpcount` process (pinned
with the load, sampled as "capture", inside the point's network namespace when it has one) counting the port
the members connect to (the URL Locust is given: the server's, or a proxy's in front of it) and any other
port a part of the runner asks for with `Capture.add(name, port)`. The runner's own requests (/healthz,
/metrics) come from network.OBSERVER_ADDRESS and are left out, as the server's meter leaves out /metrics.

It writes `tcp.json` in the point's folder: each port's counts over the whole point (from before the first
member connected to after the last one left) under "ports", and a snapshot at each edge of the measured
window under "marks" ("before", "after"). The summary reads the window (figures.CaptureWindow) into the
tcp_* columns, and in a captured run every row's wire bytes are the capture's, so rtlab, the floors and
peers with no meter of their own (uvicorn, daphne, websockets) are counted by one method.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

from .supervisor import Group, Process

FILE = "tcp.json"
LABEL = "capture"  # its rows in the sampler's CSV (figures.NOT_SERVER)
FRONT = "front"  # the port the members connect to: the summary's columns are its counts
START_TIMEOUT_S = 10.0


class Capture:
    """One point's capture. `add` ports, `start()`, `mark(...)` at the window's edges, `stop()` (also in
    `finally`); `why_not` says why there is none (not root), and then every call does nothing."""

    def __init__(self, point_dir: Path, cpus: list[int], group: Group, exclude_host: str) -> None:
        self.point_dir, self.cpus, self.group, self.exclude_host = point_dir, cpus, group, exclude_host
        self.ports: dict[str, int] = {}
        self.process: Process | None = None
        self.why_not: str | None = None

    def add(self, name: str, port: int) -> None:
        """Count `port` too, under `name` in tcp.json (before start())."""
        self.ports[name] = int(port)

    def start(self) -> Capture:
        command = [sys.executable, "-m", "experiments.tcpcount", "--control", "--exclude-host", self.exclude_host,
                   "--out", str(self.point_dir / FILE)]
        for port in dict.fromkeys(self.ports.values()):
            command += ["--port", str(port)]
        self.process = self.group.start(LABEL, command, self.point_dir / "capture.log", cpus=self.cpus,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        answer = self._ready_line()
        if answer != "ready":
            self.process.stop()
            self.why_not = (self.process.log().strip().splitlines() or ["tcpcount did not start"])[-1]
            self.process = None
        return self

    def _ready_line(self) -> str:
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.process.proc.stdout, selectors.EVENT_READ)
            if not selector.select(START_TIMEOUT_S):
                return ""
        return self.process.proc.stdout.readline().strip()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def mark(self, name: str) -> None:
        """Keep the counts so far under `name` (the capture takes them when it reads the line: a few ms later)."""
        self._say(f"mark {name}")

    def stop(self) -> dict | None:
        """Stop counting (what the kernel queued already is counted) and return tcp.json's content."""
        if self.process is None:
            return None
        self._say("stop")
        self.process.wait(START_TIMEOUT_S)
        self.process.stop()
        self.process = None
        return read(self.point_dir)

    def _say(self, line: str) -> None:
        if self.process is not None and self.process.alive:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.process.proc.stdin.write(line + "\n")
                self.process.proc.stdin.flush()

    def describe(self) -> dict:
        """For the manifest: what was counted, or why nothing was."""
        return {"ports": self.ports, "exclude_host": self.exclude_host, "why_not": self.why_not}


def read(point_dir: Path) -> dict | None:
    """A point's tcp.json, or None when it was not captured."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        return json.loads((Path(point_dir) / FILE).read_text())
    return None


def window(point_dir: Path, port: int | None = None) -> dict | None:
    """{direction: counts} of `port` (default: the first, the front) between the marks "before" and "after"."""
    data = read(point_dir)
    if not data or not {"before", "after"} <= set(data.get("marks", {})):
        return None
    key = str(port) if port is not None else str(data["port"])
    start, end = data["marks"]["before"]["ports"][key], data["marks"]["after"]["ports"][key]
    out = {}
    for direction in ("to_server", "from_server"):
        out[direction] = {name: end[direction][name] - start[direction][name]
                          for name in ("packets", "ip_bytes", "payload_bytes")}
    out["dropped"] = data["ports"][key]["dropped"]
    return out
