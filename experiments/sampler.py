"""Resource sampler: CPU, RSS, fds, threads, TCP connections and CPU wait of given processes, at a fixed rate, into CSV.

    python -m experiments.sampler --pid 1234 --label server --pid 1240 --label generator --self --out run.csv

It runs as its own process so its work is charged to neither the server nor the load generator (the runner
pins it to the generator's CPUs, off the server's), it stops by itself once every target has exited, and with
--self it samples itself too (label "sampler"): the observer's own cost is in the same CSV.

Counting file descriptors and TCP connections is the costly part (psutil's net_connections parses every socket
of the machine for each process): the sampler reads the socket table once per count for all targets, counts
at most `--conn-hz` times a second (default 1) and less often when counting would take more than 0.5 % of a
CPU (tens of thousands of descriptors); rows in between repeat the last count, and say when it was taken
(`counted_at_s`: a figure that wants a count from inside a window takes the first taken there). Descendants are
listed again every 5 s; CPU, RSS and threads come from one read of /proc/<pid>/stat per process and tick.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import re
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
    # Cumulative seconds its main thread was ready to run but waited for a CPU (/proc/<pid>/schedstat's run delay):
    # other processes on its CPU. Time the process could not spend: a busy machine's mark on every other figure.
    "cpu_wait_s",
    # When fds and tcp_connections were counted (t_mono_s of that count): counting reads every descriptor and is
    # budgeted (DESCRIPTOR_BUDGET), so rows in between repeat the last count, seconds old on a busy machine.
    "counted_at_s",
)
DEFAULT_HZ = 5.0
DEFAULT_CONN_HZ = 1.0
SELF_LABEL = "sampler"
LISTEN = b"0A"  # the state column of /proc/net/tcp for a listening socket
CHILDREN_EVERY_S = 5.0  # listing descendants reads every process of the machine; Locust's workers stay put
YOUNG_S = 15.0  # for this long after the sampler starts, descendants are listed every tick
DESCRIPTOR_BUDGET = 0.005  # of a CPU, for counting file descriptors and TCP connections (reading /proc/net/tcp costs the kernel ~7 us a line)


@dataclass
class Target:
    label: str
    pid: int
    children: bool = False  # add the live descendants (e.g. Locust worker processes)


class _Watched:
    def __init__(self, target: Target, count_tcp: bool = True) -> None:
        self.target = target
        self.process = psutil.Process(target.pid)
        self.gone = False
        self.count_tcp = count_tcp
        self.fds = 0  # the last counts
        self.tcp = 0
        self.counted_at = math.nan  # and when they were taken
        self.descendants: list[psutil.Process] = []
        self.listed_at = -math.inf
        self.started_at = time.monotonic()

    def family(self, now: float) -> list[psutil.Process] | None:
        """The target's live descendants, listed again every CHILDREN_EVERY_S (listing reads every process), and
        every tick for the first YOUNG_S."""
        if not self.target.children:
            return []
        # Listed each tick while the target is young (Locust starts its processes then): a child found late would
        # bring all the CPU it had spent into one sample, a busiest second that never was.
        young = now - self.started_at < YOUNG_S
        if young or now - self.listed_at >= CHILDREN_EVERY_S:
            try:
                self.descendants = self.process.children(recursive=True)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                return None
            self.listed_at = now
        return self.descendants


# One line of /proc/net/tcp{,6}: "sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...".
TCP_LINE = re.compile(rb"^\s*\d+:\s+\S+\s+\S+\s+([0-9A-F]{2})\s+\S+\s+\S+\s+\S+\s+\d+\s+\d+\s+(\d+)", re.MULTILINE)


def open_tcp_inodes() -> set[int]:
    """The inodes of every TCP socket of this network namespace that is not listening (/proc/net/tcp, tcp6)."""
    inodes: set[int] = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        inodes.update(int(inode) for state, inode in TCP_LINE.findall(data) if state != LISTEN)
    return inodes


CLOCK_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def read_stat(pid: int) -> tuple[float, float, int, int]:
    """(user s, system s, RSS bytes, threads) of `pid` from one read of /proc/<pid>/stat, what psutil's
    cpu_times, memory_info and num_threads read in three files; a zombie or a missing process raises."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise psutil.NoSuchProcess(pid) from None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state is field 3 of proc(5)
    if fields[0] == b"Z":
        raise psutil.ZombieProcess(pid)
    return (int(fields[11]) * CLOCK_TICK_S, int(fields[12]) * CLOCK_TICK_S, int(fields[21]) * PAGE_BYTES,
            int(fields[17]))


def read_cpu_wait(pid: int) -> float:
    """Seconds `pid`'s main thread has waited, ready to run, for a CPU since it started (/proc/<pid>/schedstat:
    on-CPU ns, run-queue wait ns, time slices); 0.0 where the kernel does not keep scheduler statistics."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def count_descriptors(pid: int, inodes: set[int]) -> tuple[int, int]:
    """`pid`'s open file descriptors, and how many of them are sockets in `inodes`."""
    fds = tcp = 0
    try:
        with os.scandir(f"/proc/{pid}/fd") as entries:
            for fd in entries:
                fds += 1
                try:
                    link = os.readlink(fd.path)
                except OSError:
                    continue  # closed meanwhile
                if link.startswith("socket:[") and int(link[8:-1]) in inodes:
                    tcp += 1
    except OSError:
        pass  # exited: the caller sees it in its other readings
    return fds, tcp


def sample(process: psutil.Process, children: bool | list[psutil.Process] = False, inodes: set[int] | None = None,
           count: bool = True) -> dict[str, float] | None:
    """Return one reading of `process` (and its descendants: True lists them now, a list gives them), or None if
    it has exited.

    File descriptors and TCP connections are counted (against `inodes`, read now when None) only with `count`;
    without, the reading's fds and tcp_connections are None."""
    if count and inodes is None:
        inodes = open_tcp_inodes()
    processes = [process]
    if children is True:
        try:
            processes += process.children(recursive=True)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None
    elif children:
        processes += children
    total = {"cpu_user_s": 0.0, "cpu_system_s": 0.0, "rss_bytes": 0, "fds": 0, "threads": 0, "tcp_connections": 0,
             "cpu_wait_s": 0.0}
    for i, p in enumerate(processes):
        try:
            user_s, system_s, rss, threads = read_stat(p.pid)
            fds, tcp = count_descriptors(p.pid, inodes) if count else (0, 0)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            if i == 0:
                return None
            continue  # a descendant exited between listing and reading
        total["cpu_user_s"] += user_s
        total["cpu_system_s"] += system_s
        total["rss_bytes"] += rss
        total["fds"] += fds
        total["threads"] += threads
        total["tcp_connections"] += tcp
        total["cpu_wait_s"] += read_cpu_wait(p.pid)
    if not count:
        total["fds"] = total["tcp_connections"] = None
    return total


def run(
    targets: list[Target],
    out: TextIO,
    hz: float = DEFAULT_HZ,
    max_duration_s: float | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    conn_hz: float = DEFAULT_CONN_HZ,
    sample_self: bool = False,
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
    me = _Watched(Target(SELF_LABEL, os.getpid()), count_tcp=False) if sample_self else None
    writer = csv.writer(out)
    writer.writerow(FIELDS)
    out.flush()
    period = 1.0 / hz
    start = time.monotonic()
    next_count = start  # when to count descriptors next
    tick = 0
    rows = 0
    while any(not w.gone for w in watched) and not should_stop():
        now = time.monotonic()
        if max_duration_s is not None and now - start > max_duration_s:
            break
        counting = conn_hz > 0 and now >= next_count - period / 2
        cpu_before = time.thread_time()
        inodes = open_tcp_inodes() if counting else None
        for w in [*watched, *([me] if me else [])]:
            if w.gone:
                continue
            family = w.family(now)
            reading = None if family is None else sample(w.process, family, inodes, counting and w.count_tcp)
            if reading is None:
                w.gone = True
                continue
            if reading["tcp_connections"] is None:
                reading["fds"], reading["tcp_connections"] = w.fds, w.tcp
            else:
                w.counted_at = now
            w.fds, w.tcp = reading["fds"], reading["tcp_connections"]
            writer.writerow(
                (
                    f"{now:.6f}", w.target.label, w.target.pid,
                    f"{reading['cpu_user_s']:.3f}", f"{reading['cpu_system_s']:.3f}",
                    reading["rss_bytes"], reading["fds"], reading["threads"], reading["tcp_connections"],
                    f"{reading['cpu_wait_s']:.3f}", f"{w.counted_at:.6f}",
                )
            )
            rows += 1
        if counting:
            # Counting reads every descriptor: at most DESCRIPTOR_BUDGET of a CPU on it, however many there are.
            # The cost is this thread's CPU (the kernel's reading of /proc included), not the wall time a
            # busy machine stretches it to.
            cost = time.thread_time() - cpu_before
            next_count = max(next_count + 1.0 / conn_hz, now + cost / DESCRIPTOR_BUDGET)
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
    p.add_argument("--conn-hz", type=float, default=DEFAULT_CONN_HZ,
                   help="TCP connection counts per second (the costly reading; rows between repeat the last)")
    p.add_argument("--self", dest="sample_self", action="store_true",
                   help=f"sample the sampler too, labelled {SELF_LABEL!r}: the observer's own cost")
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
            run(targets, out, a.hz, a.max_duration, conn_hz=a.conn_hz, sample_self=a.sample_self)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
