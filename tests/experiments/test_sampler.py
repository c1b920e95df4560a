"""The resource sampler: right CPU seconds for a process that burns a known amount, and it stops by itself."""

from __future__ import annotations

import csv
import math
import os
import socket
import subprocess
import sys
import time

import psutil
from conftest import UNIT

from experiments.figures import Samples, read_samples, sum_samples
from experiments.sampler import FIELDS, open_tcp_inodes, sample
from experiments.supervisor import Process

BURN_CPU_S = 0.5
# Burn CPU until the process has used BURN_CPU_S, report its own user + system seconds, then wait
# (using no CPU) until stdin closes.
BURNER = f"""
import os, sys, time
while time.process_time() < {BURN_CPU_S}:
    sum(i * i for i in range(10_000))
t = os.times()
print(t.user + t.system, flush=True)
sys.stdin.read()
"""


def test_sampler_reads_the_cpu_a_process_burned_and_stops_when_it_exits(tmp_path):
    out = tmp_path / "samples.csv"
    burner = Process("burner", [sys.executable, "-c", BURNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE).start()
    sampler = Process("sampler", [sys.executable, "-m", "experiments.sampler", "--pid", str(burner.pid), "--label",
                                  "burner", "--out", str(out), "--hz", "20", "--max-duration", str(60 * UNIT)],
                      tmp_path / "sampler.log").start()
    try:
        self_reported_cpu_s = float(burner.proc.stdout.readline())
        burned_at = time.monotonic()
        # Let the sampler take a reading after the burn, then let the burner exit.
        deadline = time.monotonic() + 10 * UNIT
        while not any(float(row["t_mono_s"]) > burned_at for row in _rows(out)):
            assert time.monotonic() < deadline, "the sampler wrote no row after the burn"
            time.sleep(0.05)
        burner.proc.stdin.close()
        burner.wait(10 * UNIT)
        assert sampler.wait(10 * UNIT) == 0  # it stops by itself once its target has gone
    finally:
        for process in (burner, sampler):
            process.stop()

    rows = _rows(out)
    assert tuple(rows[0].keys()) == FIELDS
    assert {row["label"] for row in rows} == {"burner"} and {row["pid"] for row in rows} == {str(burner.pid)}
    times = [float(row["t_mono_s"]) for row in rows]
    assert times == sorted(times) and len(set(times)) == len(times)
    # Each row says when its descriptors were counted: in that row's tick, or an earlier one it repeats.
    counted = [float(row["counted_at_s"]) for row in rows]
    assert all(at in times[:i + 1] for i, at in enumerate(counted)) and counted[0] == times[0]
    last = rows[-1]
    sampled_cpu_s = float(last["cpu_user_s"]) + float(last["cpu_system_s"])
    # The kernel reports user and system time in clock ticks (10 ms each), each rounded down.
    assert BURN_CPU_S - 0.02 <= sampled_cpu_s <= BURN_CPU_S + 0.5
    assert abs(sampled_cpu_s - self_reported_cpu_s) <= 0.02, (sampled_cpu_s, self_reported_cpu_s)
    # The last row may catch the process mid-exit, its memory and files already gone: look at an idle one.
    idle = next(row for row in rows if float(row["t_mono_s"]) > burned_at)
    assert int(idle["rss_bytes"]) > 1_000_000 and int(idle["threads"]) >= 1 and int(idle["fds"]) >= 3

    samples = read_samples(out)["burner"]
    assert samples.cpu_s == sampled_cpu_s - (float(rows[0]["cpu_user_s"]) + float(rows[0]["cpu_system_s"]))


def test_sampler_counts_the_tcp_connections_of_a_server(server_process):
    server = server_process("websocket")
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    try:
        deadline = time.monotonic() + 5 * UNIT
        while (reading := sample(psutil.Process(server.proc.pid)))["tcp_connections"] != 3:
            assert time.monotonic() < deadline, reading
            time.sleep(0.02)
    finally:
        for s in socks:
            s.close()


def test_the_sampler_samples_itself_and_counts_connections_once_a_second(server_process, tmp_path):
    server = server_process("websocket")
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
    out = tmp_path / "samples.csv"
    sampler = Process("sampler", [sys.executable, "-m", "experiments.sampler", "--pid", str(server.proc.pid),
                                  "--label", "server", "--self", "--hz", "10", "--conn-hz", "1", "--out", str(out),
                                  "--max-duration", str(2.5)], tmp_path / "sampler.log").start()
    try:
        assert sampler.wait(30 * UNIT) == 0
    finally:
        sampler.stop()
        for s in socks:
            s.close()
    rows = _rows(out)
    assert {row["label"] for row in rows} == {"server", "sampler"}
    server_rows = [row for row in rows if row["label"] == "server"]
    assert len(server_rows) >= 15 and all(row["tcp_connections"] == "3" for row in server_rows)
    mine = [row for row in rows if row["label"] == "sampler"]
    assert {row["pid"] for row in mine} == {str(sampler.pid)} and int(mine[-1]["rss_bytes"]) > 1_000_000


def test_connections_are_counted_against_the_socket_table_read_once(server_process):
    server = server_process("websocket")
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
    try:
        process = psutil.Process(server.proc.pid)
        deadline = time.monotonic() + 5 * UNIT
        while sample(process, inodes=open_tcp_inodes())["tcp_connections"] != 4:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        # psutil's own count agrees; and a reading told not to count leaves the figure out.
        assert sum(1 for c in process.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN) == 4
        assert sample(process, count=False)["tcp_connections"] is None
    finally:
        for s in socks:
            s.close()


def _rows(path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


# Spin for `seconds` of wall time on one CPU, then exit.
SPINNER = """
import os, sys, time
os.sched_setaffinity(0, {int(sys.argv[1])})
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    pass
"""


def test_the_sampler_reads_how_long_a_process_waited_for_its_cpu():
    """Two processes spinning on one CPU each wait about half the time for it: the sampler's cpu_wait_s (the kernel's
    run-queue delay) sees it, and the figures make it a share of the window."""
    cpu = max(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", SPINNER, str(cpu), "1.5"]) for _ in range(2)]
    try:
        time.sleep(0.3)  # both started and spinning
        first = sample(psutil.Process(spinners[0].pid), count=False)
        started = time.monotonic()
        time.sleep(0.6)
        last = sample(psutil.Process(spinners[0].pid), count=False)
        wall = time.monotonic() - started
    finally:
        for spinner in spinners:
            spinner.wait(10 * UNIT)
    share = Samples((0.0, wall), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0),
                    cpu_wait_s=(first["cpu_wait_s"], last["cpu_wait_s"])).cpu_wait_share
    assert 0.25 < share <= 1.05, share  # half, give or take the machine's other load
    no_column = Samples((0.0, 1.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0))  # a run from before it was sampled
    assert math.isnan(no_column.cpu_wait_share) and sum_samples([no_column]).cpu_wait_s == ()
