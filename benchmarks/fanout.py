"""Fan-out at the floor: rtlab's transports against the minimal aiohttp servers (servers/peers, the yardstick),
without Locust, with a load generator of its own (benchmarks/harness.py) pinned to the other CPU.

    .venv/bin/python -m benchmarks.fanout                       # every rtlab transport that has a floor, 6 rounds
    .venv/bin/python -m benchmarks.fanout --pairs websocket --rounds 8 --members 50 --rooms 20 --rate 10
    .venv/bin/python -m benchmarks.fanout --max websocket floor-websocket   # highest sustained delivery rate
    .venv/bin/python -m benchmarks.fanout --against fastapi-websocket sse-starlette   # rtlab beside other peers

Pairs (the default): rtlab's transport and its floor run side by side on one CPU under the same load at the same
moments (one load process drives both), so the drift of a shared VM cancels; each pair's figure is the ratio of
server CPU per delivered message, rtlab / floor, and the result is the median over rounds with a
distribution-free interval. Both servers of a round get the same hash seed; the seed changes every round.

--max: each server alone; the message rate steps up by --step until the server's CPU reaches 90 % of its core,
or fewer than 99 % of the deliveries due arrive; the last rate that held is the server's highest sustained
delivery rate. When the load process itself passes 90 % of its core first, the answer is "at least" that rate
(generator-bound), never the server's capacity.

A benchmark, not a test: it prints numbers (and writes them as JSON with --out). docs/metrics.md explains them.
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

from .harness import KINDS, cpu_seconds, kind, load, machine, median_interval

SERVER_CPU, LOAD_CPU = 0, 1
SATURATED = 0.9  # of one core
DELIVERED_FLOOR = 0.99  # delivered / due


def floors() -> dict[str, str]:
    """{rtlab transport: its floor}: the first peer the load can drive (the floors are registered first), by the
    rtlab transport it is compared with."""
    out: dict[str, str] = {}
    for peer in registry.transports(registry.PEER):
        if peer.client.split(":")[0] in KINDS and peer.compare_with:
            out.setdefault(peer.compare_with, peer.name)
    return out


def per_unit(transport: str) -> str:
    """What a pair's ratio divides the server's CPU by: a delivered message, or for short polling a poll answered (its
    cost is the polls, every member's every interval, whether or not a message waits)."""
    return "request" if kind(transport) == "short-polling" else "delivered"


def pinned(cpu: int) -> list[int] | None:
    return [cpu] if (os.cpu_count() or 1) >= 2 else None


def start_server(transport: str, hash_seed: int) -> supervisor.ServerProcess:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    log = Path(tempfile.mkstemp(prefix="rtlab-fanout-", suffix=".log")[1])
    # Heartbeats far apart, so a round measures fan-out, not pings; the send rate limit off the benchmark's path.
    args = ["--transport", transport, "--host", "127.0.0.1", "--no-access-log", "--ws-heartbeat", "300",
            "--sse-heartbeat", "300", "--send-rate", "1000", "--send-burst", "1000"]
    return supervisor.start_server(args, log, env=env, cpus=pinned(SERVER_CPU))


def drive(transports: list[str], a: argparse.Namespace, rate: float, hash_seed: int) -> list[dict]:
    """Run `transports` side by side under one load; return per server: delivered, due, CPU and the load's CPU."""
    servers = []
    try:
        for transport in transports:
            servers.append(start_server(transport, hash_seed))
        loader = supervisor.Process(
            "load",
            [sys.executable, "-m", "benchmarks.fanout", "--load", transports[0], "--url", *(s.url for s in servers),
             "--rooms", str(a.rooms), "--members", str(a.members), "--rate", str(rate),
             "--warmup", str(a.warmup), "--duration", str(a.duration)],
            cpus=pinned(LOAD_CPU), stdout=subprocess.PIPE,
        ).start()
        try:
            line = loader.proc.stdout.readline()
            if line.strip() != "start":
                raise SystemExit(f"load process said {line!r}")
            cpu_start = [cpu_seconds(s.process.pid) for s in servers]
            load_start = cpu_seconds(loader.pid)
            line = loader.proc.stdout.readline()
            cpu_end = [cpu_seconds(s.process.pid) for s in servers]
            load_end = cpu_seconds(loader.pid)
            if not line.startswith("end "):
                raise SystemExit(f"load process said {line!r}")
            counts = json.loads(line[4:])
            loader.wait(60 + a.duration)
        finally:
            loader.stop()
    finally:
        for server in servers:
            server.process.stop()
    results = []
    for i, transport in enumerate(transports):
        cpu_s, delivered = cpu_end[i] - cpu_start[i], counts["delivered"][i]
        results.append({
            "transport": transport, "rate_per_room": rate, "delivered": delivered, "sent": counts["sent"][i],
            "due": counts["sent"][i] * a.members, "lost": counts["lost"][i], "cpu_s": round(cpu_s, 6),
            "server_cpu_share": cpu_s / a.duration, "load_cpu_share": (load_end - load_start) / a.duration,
            "delivered_per_s": delivered / a.duration, "cpu_us_per_delivered": cpu_s * 1e6 / max(delivered, 1),
            "requests": counts["requests"][i], "cpu_us_per_request": cpu_s * 1e6 / max(counts["requests"][i], 1),
        })
    return results


def pairs(a: argparse.Namespace) -> dict:
    known = floors()
    if a.against:  # rtlab's transport beside each of these peers (keyed by the peer)
        chosen = [(registry.get(peer).compare_with, peer) for peer in a.against]
        for transport, peer in chosen:
            kind(peer)  # refuses a peer the load cannot drive
            if not transport:
                raise SystemExit(f"{peer!r} is compared with none of rtlab's transports")
    else:
        for transport in a.pairs or list(known):
            if transport not in known:
                raise SystemExit(f"{transport!r} has no floor to compare with; floors exist for {sorted(known)}")
        chosen = [(transport, known[transport]) for transport in a.pairs or list(known)]
    report = {}
    for transport, floor in chosen:
        unit = per_unit(transport)
        ratios, rounds = [], []
        for r in range(a.rounds):
            order = [transport, floor] if r % 2 == 0 else [floor, transport]
            by_name = {res["transport"]: res for res in drive(order, a, a.rate, hash_seed=r + 1)}
            ours, theirs = by_name[transport], by_name[floor]
            ratios.append(ours[f"cpu_us_per_{unit}"] / theirs[f"cpu_us_per_{unit}"])
            rounds.append(by_name)
            print(f"  {transport:13} round {r + 1}: {ours[f'cpu_us_per_{unit}']:6.1f} us/{unit} "
                  f"({ours['delivered']} delivered, {ours['requests']} polls, {ours['lost']} lost)  {floor} "
                  f"{theirs[f'cpu_us_per_{unit}']:6.1f} ({theirs['delivered']}, {theirs['requests']}, {theirs['lost']} lost)"
                  f"  ratio {ratios[-1]:.3f}  load CPU {ours['load_cpu_share']:.0%}", flush=True)
        low, high, confidence = median_interval(ratios)
        report[floor if a.against else transport] = {
            "transport": transport, "floor": floor, "ratio_median": statistics.median(ratios), "ratio_low": low, "ratio_high": high,
            "confidence": confidence, "rounds": rounds, "unit": unit,
            "rtlab_us_per_delivered": statistics.median(r[transport]["cpu_us_per_delivered"] for r in rounds),
            "floor_us_per_delivered": statistics.median(r[floor]["cpu_us_per_delivered"] for r in rounds),
            "rtlab_us_per_unit": statistics.median(r[transport][f"cpu_us_per_{unit}"] for r in rounds),
            "floor_us_per_unit": statistics.median(r[floor][f"cpu_us_per_{unit}"] for r in rounds),
        }
        entry = report[floor if a.against else transport]
        print(f"{transport}: {entry['rtlab_us_per_unit']:.1f} us/{unit} against {floor} "
              f"{entry['floor_us_per_unit']:.1f}; median ratio {entry['ratio_median']:.3f}"
              f" ({confidence:.0%} interval {low:.3f}..{high:.3f})\n", flush=True)
    return report


def highest(a: argparse.Namespace) -> dict:
    report = {}
    for transport in a.max:
        kind(transport)  # refuses a transport the load cannot drive before anything starts
        rate, held, steps = a.rate, None, []
        for _ in range(a.max_steps):
            result = drive([transport], a, rate, hash_seed=1)[0]
            steps.append(result)
            ok = (result["server_cpu_share"] < SATURATED and result["delivered"] >= DELIVERED_FLOOR * result["due"])
            print(f"  {transport:18} {rate:8.1f} msg/s/room: {result['delivered_per_s']:9.0f} delivered/s, "
                  f"server CPU {result['server_cpu_share']:.0%}, load CPU {result['load_cpu_share']:.0%}, "
                  f"{result['cpu_us_per_delivered']:.1f} us/msg, {result['delivered'] / max(result['due'], 1):.1%} "
                  f"of due{'' if ok else '  <- short'}", flush=True)
            if result["load_cpu_share"] >= SATURATED and ok:
                held, bound = result, "generator"
                break
            if not ok:
                # Deliveries fell short while the load ran out of CPU and the server did not: the load's limit.
                generator = result["load_cpu_share"] >= SATURATED and result["server_cpu_share"] < SATURATED
                bound = "generator" if generator else "server"
                break
            held, rate = result, rate * a.step
        else:
            bound = "steps"
        report[transport] = {"highest": held, "bound": bound, "steps": steps}
        if held is None:
            print(f"{transport}: even {a.rate} msg/s per room did not hold\n")
        else:
            prefix = "at least " if bound != "server" else ""
            print(f"{transport}: {prefix}{held['delivered_per_s']:.0f} deliveries/s sustained "
                  f"({held['cpu_us_per_delivered']:.1f} us of server CPU each){' (generator-bound)' if bound == 'generator' else ''}\n")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fanout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="*", metavar="TRANSPORT", help="rtlab transports to compare with their floors "
                   "(default: every one that has a floor)")
    p.add_argument("--against", nargs="+", metavar="PEER", help="pair rtlab's transport with each of these peers "
                   "(its registry compare_with) instead of with its floor")
    p.add_argument("--max", nargs="+", metavar="TRANSPORT", help="find each server's highest sustained delivery rate")
    p.add_argument("--rounds", type=int, default=6, help="side-by-side rounds per pair")
    p.add_argument("--rooms", type=int, default=20)
    p.add_argument("--members", type=int, default=50, help="members per room")
    p.add_argument("--rate", type=float, default=4.0, help="messages per second per room (--max: the first step)")
    p.add_argument("--step", type=float, default=1.5, help="--max: factor between rates")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the window")
    p.add_argument("--duration", type=float, default=8.0, help="seconds in the measured window")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--url", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (1 <= a.rounds <= 50 and 0 < a.duration <= 120 and 0 <= a.warmup <= 60 and a.step > 1
            and 1 <= a.rooms * a.members <= 20_000 and 0 < a.rate <= 10_000 and 1 <= a.max_steps <= 30):
        p.error("rounds 1..50, duration (0, 120] s, warmup [0, 60] s, step > 1, rooms x members 1..20000, "
                "rate (0, 10000], max-steps 1..30")
    if a.load:
        if not a.url or not all(url.startswith("http://127.0.0.1:") for url in a.url):
            p.error("--load drives only servers on 127.0.0.1")
        asyncio.run(load(a.load, a.url, a.rooms, a.members, a.rate, a.warmup, a.duration))
        return 0
    print(f"machine: {machine()}")
    print(f"load: {a.rooms} rooms x {a.members} members, {a.rate} msg/s per room, {a.warmup} s warm-up, "
          f"{a.duration} s measured; servers on CPU {SERVER_CPU}, the load on CPU {LOAD_CPU}\n")
    out = {"machine": machine(), "load": {k: getattr(a, k) for k in ("rooms", "members", "rate", "warmup", "duration")}}
    if a.max:
        out["highest"] = highest(a)
    if a.pairs is not None or a.against or not a.max:
        out["pairs"] = pairs(a)
        print("summary (server CPU per delivered message, per poll for short polling, rtlab / floor; median and its "
              "interval):")
        for key, r in out["pairs"].items():
            print(f"  {r['transport']:13} / {r['floor']:20} {r['ratio_median']:.3f}  ({r['ratio_low']:.3f}..{r['ratio_high']:.3f}) "
                  f"{r['rtlab_us_per_unit']:.1f} against {r['floor_us_per_unit']:.1f} us/{r['unit']}")
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
