"""Resource sampler: CPU, RSS, fds, threads and TCP connections of given processes, at a fixed rate, into CSV.

    python -m experiments.sampler --pid 1234 --label server --pid 1240 --label generator --out run.csv

It runs as its own process so its work is charged to neither the server nor the load generator,
and it stops by itself once every target has exited.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

import psutil

FIELDS = (
    "t_mono_s",  # time.monotonic() of the sample: CLOCK_MONOTONIC, shared by every process on the machine
    "label",
    "pid",
    "cpu_user_s",  # cumulative since the process started (children included with --children)
    "cpu_system_s",
    "rss_bytes",
    "fds",
    "threads",
    "tcp_connections",  # TCP sockets that are not listening
)
DEFAULT_HZ = 5.0


@dataclass
class Target:
    label: str
    pid: int
    children: bool = False  # add the live descendants (e.g. Locust worker processes)


class _Watched:
    def __init__(self, target: Target) -> None:
        self.target = target
        self.process = psutil.Process(target.pid)
        self.gone = False


def sample(process: psutil.Process, children: bool = False) -> dict[str, float] | None:
    """Return one reading of `process` (and its descendants), or None if it has exited."""
    processes = [process]
    if children:
        try:
            processes += process.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
    total = {"cpu_user_s": 0.0, "cpu_system_s": 0.0, "rss_bytes": 0, "fds": 0, "threads": 0, "tcp_connections": 0}
    for i, p in enumerate(processes):
        try:
            with p.oneshot():
                if p.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.ZombieProcess(p.pid)
                cpu = p.cpu_times()
                rss = p.memory_info().rss
                threads = p.num_threads()
                fds = p.num_fds()
            tcp = sum(1 for c in p.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            if i == 0:
                return None
            continue  # a descendant exited between listing and reading
        total["cpu_user_s"] += cpu.user
        total["cpu_system_s"] += cpu.system
        total["rss_bytes"] += rss
        total["fds"] += fds
        total["threads"] += threads
        total["tcp_connections"] += tcp
    return total


def run(
    targets: list[Target],
    out: TextIO,
    hz: float = DEFAULT_HZ,
    max_duration_s: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Sample every target `hz` times a second into `out` until all have exited; return the rows written.

    Ticks are on a fixed monotonic schedule; a tick missed because sampling ran late is skipped, not
    made up, so rows stay evenly spaced.
    """
    watched = []
    for target in targets:
        try:
            watched.append(_Watched(target))
        except psutil.NoSuchProcess:
            print(f"sampler: no process {target.pid} ({target.label})", file=sys.stderr)
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    out.flush()
    period = 1.0 / hz
    start = time.monotonic()
    tick = 0
    rows = 0
    while any(not w.gone for w in watched) and not should_stop():
        now = time.monotonic()
        if max_duration_s is not None and now - start > max_duration_s:
            break
        for w in watched:
            if w.gone:
                continue
            reading = sample(w.process, w.target.children)
            if reading is None:
                w.gone = True
                continue
            writer.writerow(
                (
                    f"{now:.6f}", w.target.label, w.target.pid,
                    f"{reading['cpu_user_s']:.3f}", f"{reading['cpu_system_s']:.3f}",
                    reading["rss_bytes"], reading["fds"], reading["threads"], reading["tcp_connections"],
                )
            )
            rows += 1
        out.flush()  # a sampler killed mid-run still leaves every row it took
        tick = max(tick + 1, int((time.monotonic() - start) / period) + 1)
        delay = start + tick * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m experiments.sampler",
        description="Sample CPU, RSS, fds, threads and TCP connections of processes into a CSV until they exit.",
    )
    p.add_argument("--pid", type=int, action="append", required=True, help="a process to sample (repeatable)")
    p.add_argument("--label", action="append", default=[], help="a name per --pid, in order (default: pid-N)")
    p.add_argument("--children", action="store_true", help="add each target's live descendants to its row")
    p.add_argument("--out", required=True, help="CSV file to write ('-' for stdout)")
    p.add_argument("--hz", type=float, default=DEFAULT_HZ, help="samples per second")
    p.add_argument("--max-duration", type=float, default=None, help="stop after this many seconds at most")
    a = p.parse_args(argv)
    if len(a.label) > len(a.pid):
        p.error("more --label than --pid")
    if not a.hz > 0:
        p.error("--hz must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    labels = a.label + [f"pid-{pid}" for pid in a.pid[len(a.label):]]
    targets = [Target(label, pid, a.children) for label, pid in zip(labels, a.pid)]
    with contextlib.nullcontext(sys.stdout) if a.out == "-" else open(a.out, "w", newline="") as out:
        try:
            run(targets, out, a.hz, a.max_duration)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
