"""What the instrumentation costs: server CPU per delivered message with --metrics and --no-metrics, same load.

    .venv/bin/python benchmarks/instrumentation_overhead.py            # every transport, 5 rounds
    .venv/bin/python benchmarks/instrumentation_overhead.py --transports websocket --rounds 3

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
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from experiments import supervisor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSPORTS = ("short-polling", "long-polling", "websocket")
SERVER_CPU, LOAD_CPU = 1, 0


# ---------------------------------------------------------------------------------------------------------------
# The load process: the same members, rooms and schedule against every server given, at the same moments.


async def load(transport: str, urls: list[str], rooms: int, members: int, rate: float, warmup_s: float,
               measure_s: float, poll_interval_s: float) -> None:
    import aiohttp

    counting = False
    delivered = dict.fromkeys(urls, 0)
    sent = dict.fromkeys(urls, 0)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        sockets: dict[tuple[str, str], list] = {}
        start = 0.0

        async def receiver(url: str, room: str, index: int) -> None:
            since = 0
            if transport == "websocket":
                ws = await session.ws_connect(f"{url}/rooms/{room}/ws")
                sockets.setdefault((url, room), []).append(ws)
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    if counting and msg.data.startswith('{"type":"message"'):
                        delivered[url] += 1
                return
            wait = "&wait=10" if transport == "long-polling" else ""
            k = 0
            while not stop.is_set():
                if transport == "short-polling":
                    # Polls on a fixed schedule, spread over the interval, so every run makes the same polls.
                    k += 1
                    delay = start + poll_interval_s * (k + index / members) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                async with session.get(f"{url}/rooms/{room}/messages?since={since}{wait}") as resp:
                    page = await resp.json()
                if page["messages"]:
                    since = page["messages"][-1]["id"]
                    if counting:
                        delivered[url] += len(page["messages"])

        async def sender(room: str, offset: float) -> None:
            k = 0
            while not stop.is_set():
                due = start + offset + k / rate
                k += 1
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if stop.is_set():
                    return
                body = {"user": "bench", "text": f"message {k} of {room}"}
                # Alternate which server hears first, so neither is always second.
                for url in (urls if k % 2 else urls[::-1]):
                    if transport == "websocket":
                        await sockets[(url, room)][0].send_json({"type": "send", **body})
                    else:
                        async with session.post(f"{url}/rooms/{room}/messages", json=body) as resp:
                            await resp.read()
                    if counting:
                        sent[url] += 1

        names = [f"bench{r}" for r in range(rooms)]
        start = time.monotonic() + 0.5
        tasks = [asyncio.create_task(receiver(url, room, i)) for url in urls for room in names for i in range(members)]
        while transport == "websocket" and sum(len(v) for v in sockets.values()) < len(urls) * rooms * members:
            await asyncio.sleep(0.01)
        start = time.monotonic()
        tasks += [asyncio.create_task(sender(room, i / (rooms * rate))) for i, room in enumerate(names)]
        await asyncio.sleep(warmup_s)
        print("start", flush=True)
        counting = True
        await asyncio.sleep(measure_s)
        counting = False
        print("end " + json.dumps({"delivered": [delivered[u] for u in urls], "sent": [sent[u] for u in urls]}),
              flush=True)
        stop.set()
        for room_sockets in sockets.values():
            for ws in room_sockets:
                await ws.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------------------------------
# The driver.


def cpu_seconds(pid: int) -> float:
    """Return the CPU time of every thread of `pid`, in seconds, at nanosecond resolution (Linux schedstat)."""
    total_ns = 0
    paths = glob.glob(f"/proc/{pid}/task/*/schedstat")
    if not paths:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    for path in paths:
        try:
            with open(path) as f:
                total_ns += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between listing and reading
    return total_ns / 1e9


def median_interval(values: list[float]) -> tuple[float, float, float]:
    """Return a distribution-free interval for the median (sign test) and its confidence, about 95 %.

    The median lies between the k-th smallest and the k-th largest value with probability
    1 - 2 P(Binomial(n, 1/2) < k); k is the largest that keeps that at 95 % or more.
    """
    xs, n = sorted(values), len(values)
    if n < 6:
        return xs[0], xs[-1], 1 - 2 * 0.5**n
    tail, k, p_k = 0.0, 0, 0.5**n  # tail = P(X < k), p_k = P(X = k)
    while tail + p_k <= 0.025:
        tail += p_k
        k += 1
        p_k *= (n - k + 1) / k
    return xs[k - 1], xs[n - k], 1 - 2 * tail


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
            [sys.executable, os.path.abspath(__file__), "--load", transport, "--url", *(url for _, url in servers),
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


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()} {platform.release()}"


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
