"""What the instrumentation costs: server CPU per delivered message with --metrics and --no-metrics, same load.

    .venv/bin/python -m benchmarks.instrumentation_overhead            # every transport, 8 rounds
    .venv/bin/python -m benchmarks.instrumentation_overhead --transports websocket --rounds 3

Each pair starts two `python -m servers` on 127.0.0.1, one with --metrics and one with --no-metrics,
and drives both at once from a separate load process (this script with --load): the same rooms,
members and fixed, unsaturated schedule against each, so both see the same machine at the same
moments (on a shared VM, CPU per message drifts by 10-20 % between runs a minute apart; side by
side, the drift cancels). Both servers share one CPU and one hash seed; the load has the other CPU.
It reads each server's CPU time (all threads, ns resolution) just before and after the window. The figure is the median over pairs of (CPU/msg on) / (CPU/msg off).
This is a benchmark, not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from experiments import supervisor

from servers import registry

from .harness import KINDS, cpu_seconds, load, machine, median_interval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSPORTS = tuple(t for t in registry.names() if registry.get(t).client.split(":")[0] in KINDS)
SERVER_CPU, LOAD_CPU = 1, 0


# ---------------------------------------------------------------------------------------------------------------
# The driver.


def start_server(transport: str, metrics: bool, hash_seed: int) -> tuple[supervisor.Process, str]:
    args = ["--transport", transport, "--host", "127.0.0.1", "--metrics" if metrics else "--no-metrics"]
    # Both servers of a pair get the same hash seed: with its own random seed each process lays out
    # its dicts differently and runs a few per cent faster or slower for its whole life, noise larger
    # than the effect measured. The seed changes from pair to pair, so no one layout decides the
    # result. Address-space randomisation stays on for the same reason: with it off, the two command
    # lines (--metrics, --no-metrics) differ in length, fix two different stack alignments, and
    # bias the comparison by 10-15 % either way.
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    cpus = [SERVER_CPU] if (os.cpu_count() or 1) >= 2 else None
    log = Path(tempfile.mkstemp(prefix="rtlab-bench-server-", suffix=".log")[1])
    server = supervisor.start_server(args, log, env=env, cpus=cpus)
    return server.process, server.url


def run_pair(transport: str, on_first: bool, hash_seed: int, a: argparse.Namespace) -> dict[bool, dict]:
    """Run one server with metrics and one without side by side under the same load; return {metrics: result}.

    With --control both run without metrics (an A/A run: the spread of the method itself).
    """
    order = (True, False) if on_first else (False, True)
    servers = []
    try:
        for metrics in order:
            servers.append(start_server(transport, metrics and not a.control, hash_seed))
        loader = supervisor.Process(
            "load",
            [sys.executable, "-m", "benchmarks.instrumentation_overhead", "--load", transport, "--url", *(url for _, url in servers),
             "--rooms", str(a.rooms), "--members", str(a.members), "--rate", str(a.rate),
             "--warmup", str(a.warmup), "--duration", str(a.duration), "--poll-interval", str(a.poll_interval)],
            cpus=[LOAD_CPU] if (os.cpu_count() or 1) >= 2 else None, stdout=subprocess.PIPE,
        ).start()
        try:
            line = loader.proc.stdout.readline()
            assert line.strip() == "start", f"load process said {line!r}"
            cpu_start = [cpu_seconds(proc.pid) for proc, _ in servers]
            line = loader.proc.stdout.readline()
            cpu_end = [cpu_seconds(proc.pid) for proc, _ in servers]
            assert line.startswith("end "), f"load process said {line!r}"
            counts = json.loads(line[4:])
            loader.wait(30 + a.duration)
        finally:
            loader.stop()
    finally:
        for proc, _ in servers:
            proc.stop()
    results = {}
    for i, metrics in enumerate(order):
        cpu_s = cpu_end[i] - cpu_start[i]
        delivered = counts["delivered"][i]
        results[metrics] = {"delivered": delivered, "sent": counts["sent"][i], "cpu_s": cpu_s,
                            "cpu_us_per_delivered": cpu_s * 1e6 / max(delivered, 1)}
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transports", nargs="+", default=list(TRANSPORTS), choices=TRANSPORTS)
    p.add_argument("--rounds", type=int, default=8, help="on/off pairs per transport")
    p.add_argument("--rooms", type=int, default=10)
    p.add_argument("--members", type=int, default=10, help="receivers per room")
    p.add_argument("--rate", type=float, default=5.0, help="messages per second per room")
    p.add_argument("--poll-interval", type=float, default=0.2, help="short polling: seconds between polls")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the window")
    p.add_argument("--duration", type=float, default=8.0, help="seconds in the measured window")
    p.add_argument("--control", action="store_true", help="A/A: both servers of a pair without metrics")
    p.add_argument("--load", choices=TRANSPORTS, help=argparse.SUPPRESS)
    p.add_argument("--url", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (1 <= a.rounds <= 50 and 0 < a.duration <= 120 and 0 <= a.warmup <= 60):
        p.error("rounds 1..50, duration (0, 120] s, warmup [0, 60] s")
    if a.load:
        if not a.url or not all(url.startswith("http://127.0.0.1:") for url in a.url):
            p.error("--load drives only servers on 127.0.0.1")
        asyncio.run(load(a.load, a.url, a.rooms, a.members, a.rate, a.warmup, a.duration, a.poll_interval))
        return 0

    print(f"machine: {machine()}")
    print(f"load: {a.rooms} rooms x {a.members} receivers, {a.rate} msg/s per room, "
          f"{a.warmup} s warm-up, {a.duration} s measured, {a.rounds} on/off pairs per transport, "
          f"each pair side by side under the same load\n")
    ratios = {}
    for transport in a.transports:
        pair_ratios = []
        per_mode: dict[bool, list[float]] = {True: [], False: []}
        for r in range(a.rounds):
            pair = run_pair(transport, on_first=r % 2 == 0, hash_seed=r + 1, a=a)
            on, off = pair[True], pair[False]
            pair_ratios.append(on["cpu_us_per_delivered"] / off["cpu_us_per_delivered"])
            for metrics in (True, False):
                per_mode[metrics].append(pair[metrics]["cpu_us_per_delivered"])
            print(f"  {transport:14} pair {r + 1}: on {on['cpu_us_per_delivered']:7.1f} us/msg "
                  f"({on['delivered']} msgs, {on['cpu_s']:.3f} s)  off {off['cpu_us_per_delivered']:7.1f} us/msg "
                  f"({off['delivered']} msgs, {off['cpu_s']:.3f} s)  ratio {pair_ratios[-1]:.3f}", flush=True)
        ratio = statistics.median(pair_ratios)
        low, high, confidence = median_interval(pair_ratios)
        ratios[transport] = (ratio, high)
        print(f"{transport}: median {statistics.median(per_mode[True]):.1f} us/msg on, "
              f"{statistics.median(per_mode[False]):.1f} off; median pair ratio {ratio:.3f} "
              f"({(ratio - 1) * 100:+.1f} %), {confidence:.0%} interval {low:.3f}..{high:.3f}\n", flush=True)
    print("summary (server CPU per delivered message, metrics on / off; median and upper bound of its interval):")
    for transport, (ratio, high) in ratios.items():
        print(f"  {transport:14} {ratio:.3f}  ({(ratio - 1) * 100:+.1f} %, at most {(high - 1) * 100:+.1f} %)")
    worst = max(ratio for ratio, _ in ratios.values())
    print(f"worst median {(worst - 1) * 100:+.1f} % (budget +5 %): {'OK' if worst <= 1.05 else 'OVER BUDGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
