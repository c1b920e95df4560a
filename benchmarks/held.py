"""What one held connection costs a server in memory: RSS against connections held, rtlab's transports beside
their floors, with a client of our own (raw asyncio sockets, pinned to the other CPU) so nothing but connections
is measured.

    .venv/bin/python -m benchmarks.held                                  # every push transport and its floor
    .venv/bin/python -m benchmarks.held --transports websocket floor-websocket --steps 2000 4000 8000

For each server alone: start it (connection caps raised, heartbeats far apart), then hold `--steps` connections in
turn (WebSocket members after their handshake, event streams after their headers, long polls held with `wait=`),
each step's members idle in `--rooms` rooms; once the server holds them all (its established sockets counted), let
it settle and read its RSS. The figure is the slope of RSS against connections held (least squares over the
steps), in KiB per connection: what one more idle member costs, apart from what the process costs empty. Nobody
sends: a held member's state, not its traffic.

A benchmark, not a test: it prints numbers (and writes them as JSON with --out); docs/metrics.md quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from experiments import supervisor
from servers import registry

from .harness import kind, machine

SERVER_CPU, LOAD_CPU = 0, 1
HOLDS = ("websocket", "sse", "long-polling")  # the load kinds that hold a connection open
SETTLE_S = 2.0  # after the last connection of a step, before RSS is read


def pinned(cpu: int) -> list[int] | None:
    return [cpu] if (os.cpu_count() or 1) >= 2 else None


def request_for(how: str, room: str, port: int) -> bytes:
    host = f"Host: 127.0.0.1:{port}\r\n"
    if how == "websocket":  # with the Origin a page sends (Channels' tutorial refuses a socket without one)
        key = base64.b64encode(os.urandom(16)).decode()
        return (f"GET /rooms/{room}/ws?since=0 HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Origin: http://127.0.0.1:{port}\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
    if how == "sse":
        return f"GET /rooms/{room}/events HTTP/1.1\r\n{host}Accept: text/event-stream\r\n\r\n".encode()
    if how == "long-polling":
        return f"GET /rooms/{room}/messages?since=0&wait=25 HTTP/1.1\r\n{host}\r\n".encode()
    raise SystemExit(f"benchmarks.held: {how} holds no connection (short polling answers at once)")


async def hold(how: str, port: int, room: str, held: list) -> None:
    """One member: connect, ask, and keep the connection (re-asking when a long poll's wait ends)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    held.append(writer)
    writer.write(request_for(how, room, port))
    if how == "long-polling":
        while True:  # answered after wait=, with nothing: ask again on the same connection
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:")))
            await reader.readexactly(length)
            writer.write(request_for(how, room, port))
    head = await reader.readuntil(b"\r\n\r\n")
    expected = b" 101 " if how == "websocket" else b" 200 "
    if expected not in head.split(b"\r\n", 1)[0]:
        raise SystemExit(f"benchmarks.held: {how} answered {head[:200]!r}")
    while await reader.read(65536):  # heartbeats, if any; the server's close ends the member
        pass


async def load(how: str, port: int, steps: list[int], rooms: int) -> None:
    """Hold connections step by step: print "held N", then wait for a line on stdin before the next step."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list = []
    tasks: list[asyncio.Task] = []
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    for step in steps:
        while len(tasks) < step:
            batch = min(step - len(tasks), 200)
            tasks += [asyncio.create_task(hold(how, port, f"held{(len(tasks) + i) % rooms}", held))
                      for i in range(batch)]
            await asyncio.sleep(0.02)  # let the batch connect before the next: no SYN flood on the listen backlog
        failed = [t for t in tasks if t.done() and t.exception() is not None]
        if failed:
            raise SystemExit(f"benchmarks.held: {len(failed)} members failed: {failed[0].exception()!r}")
        print(f"held {step}", flush=True)
        if not await stdin.readline():
            break
    for task in tasks:
        task.cancel()
    for writer in held:
        writer.close()


def established(pid: int, port: int) -> int:
    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.status == psutil.CONN_ESTABLISHED and c.laddr and c.laddr.port == port)


def slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measure(transport: str, a: argparse.Namespace) -> dict:
    how = kind(transport)
    log = Path(tempfile.mkstemp(prefix="rtlab-held-", suffix=".log")[1])
    cap = str(max(a.steps) + 1000)
    args = ["--transport", transport, "--host", "127.0.0.1", "--no-access-log", "--ws-heartbeat", "300",
            "--sse-heartbeat", "300", "--max-connections", cap, "--max-connections-per-client", cap]
    server = supervisor.start_server(args, log, cpus=pinned(SERVER_CPU))
    points = []
    try:
        pid, port = server.process.pid, int(server.url.rsplit(":", 1)[1])
        time.sleep(SETTLE_S)
        rss_empty = psutil.Process(pid).memory_info().rss
        loader = supervisor.Process(
            "held", [sys.executable, "-m", "benchmarks.held", "--load", how, "--port", str(port), "--rooms",
                     str(a.rooms), "--steps", *map(str, a.steps)],
            cpus=pinned(LOAD_CPU), stdout=subprocess.PIPE, stdin=subprocess.PIPE,
        ).start()
        try:
            for step in a.steps:
                line = loader.proc.stdout.readline()
                if line.strip() != f"held {step}":
                    raise SystemExit(f"benchmarks.held: the load said {line!r}")
                deadline = time.monotonic() + 60
                while (count := established(pid, port)) < step and time.monotonic() < deadline:
                    time.sleep(0.2)
                time.sleep(SETTLE_S)
                rss = psutil.Process(pid).memory_info().rss
                points.append({"connections": count, "rss_bytes": rss})
                print(f"  {transport:20} {count:6d} held: RSS {rss / 2**20:7.1f} MiB "
                      f"({(rss - rss_empty) / max(count, 1) / 1024:5.1f} KiB each over the empty server)", flush=True)
                loader.proc.stdin.write("next\n")
                loader.proc.stdin.flush()
        finally:
            loader.stop()
    finally:
        server.process.stop()
    per = slope([p["connections"] for p in points], [p["rss_bytes"] for p in points]) / 1024 if len(points) > 1 else None
    return {"transport": transport, "rss_empty_bytes": rss_empty, "points": points, "kib_per_connection": per}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.held", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # rtlab's push transports, their floors, and the peers of other stacks whose packages are installed.
    others = [t.name for t in registry.transports(registry.PEER) if t.process and not registry.missing_packages(t.name)]
    p.add_argument("--transports", nargs="+", default=["websocket", "floor-websocket", "sse", "floor-sse",
                                                       "long-polling", "floor-long-polling", *others])
    p.add_argument("--steps", nargs="+", type=int, default=[2000, 4000, 6000, 8000])
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument("--load", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not (all(1 <= s <= 20_000 for s in a.steps) and a.steps == sorted(a.steps) and 1 <= a.rooms <= 10_000):
        p.error("steps rising, each 1..20000; rooms 1..10000")
    if a.load:
        asyncio.run(load(a.load, a.port, a.steps, a.rooms))
        return 0
    for transport in a.transports:
        if kind(transport) not in HOLDS:
            p.error(f"{transport} holds no connection between requests (short polling answers at once)")
    print(f"machine: {machine()}\nsteps: {a.steps} idle members in {a.rooms} rooms; server on CPU {SERVER_CPU}, "
          f"the load on CPU {LOAD_CPU}\n")
    results = {}
    for transport in a.transports:
        results[transport] = measure(transport, a)
        per = results[transport]["kib_per_connection"]
        print(f"{transport}: {per:.2f} KiB per held connection\n" if per is not None else f"{transport}: one step only\n",
              flush=True)
    print("summary (RSS slope, KiB per held connection):")
    for transport, r in results.items():
        if r["kib_per_connection"] is not None:
            print(f"  {transport:20} {r['kib_per_connection']:6.2f}")
    if a.out:
        Path(a.out).write_text(json.dumps({"machine": machine(), "steps": a.steps, "rooms": a.rooms,
                                           "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
