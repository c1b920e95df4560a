"""What the benchmarks share: a load process of their own (asyncio and aiohttp, no Locust) that drives one or more
servers with the same members, rooms and schedule at the same moments; exact CPU time of a process; a
distribution-free interval for a median; the machine's description.

The load speaks each transport the way its rtlab client does, picked by the transport's client module in the
registry (so a floor that speaks rtlab's contract is driven exactly as rtlab's own transport is). It reads only
what counting needs: a delivery is a message frame, event or poll entry, and each one's id is checked against
the member's last (`lost` counts gaps), without decoding JSON on the push transports.
"""

from __future__ import annotations

import asyncio
import glob
import json
import os
import platform
import subprocess
import time

from servers import registry

# The load's way of speaking a transport, by the rtlab client module the registry names for it.
KINDS = {
    "clients.websocket": "websocket",
    "clients.long_polling": "long-polling",
    "clients.short_polling": "short-polling",
    "clients.sse": "sse",
}
LONG_POLL_WAIT_S = 10
PAGE_LIMIT = 1000  # clients.polling.PollingClient.page_limit: the servers' largest page


def kind(transport: str) -> str:
    module = registry.get(transport).client.split(":")[0]
    if module not in KINDS:
        raise SystemExit(f"benchmarks: no load for {transport!r} (client {module}); it speaks {sorted(KINDS)}")
    return KINDS[module]


def _id_after(data: str | bytes, key) -> int:
    start = data.index(key) + len(key)
    end = start
    while data[end] in DIGITS:
        end += 1
    return int(data[start:end])


DIGITS = frozenset("0123456789") | frozenset(b"0123456789")


class Counts:
    """Deliveries, sends, polls answered and gaps per server while the window is open."""

    def __init__(self, urls: list[str]) -> None:
        self.counting = False
        self.delivered = dict.fromkeys(urls, 0)
        self.sent = dict.fromkeys(urls, 0)
        self.lost = dict.fromkeys(urls, 0)
        self.requests = dict.fromkeys(urls, 0)  # polls answered (the polling transports' unit of work)

    def got(self, url: str, last: int, message_id: int) -> int:
        if self.counting:
            self.delivered[url] += 1
            if last and message_id > last + 1:
                self.lost[url] += message_id - last - 1
        return message_id

    def as_dict(self, urls: list[str]) -> dict:
        return {key: [getattr(self, key)[u] for u in urls] for key in ("delivered", "sent", "lost", "requests")}


async def load(transport: str, urls: list[str], rooms: int, members: int, rate: float, warmup_s: float,
               measure_s: float, poll_interval_s: float = 1.0) -> None:
    """Drive every server in `urls` alike; print "start" when the window opens and "end {counts}" when it closes.

    `rate` is messages per second per room, sent on a fixed schedule by the room's members in turn."""
    import aiohttp

    how = kind(transport)
    counts = Counts(urls)
    stop = asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        sockets: dict[tuple[str, str], list] = {}
        start = 0.0

        async def websocket(url: str, room: str) -> None:
            # With the Origin a page sends (Channels' tutorial refuses a socket without one).
            ws = await session.ws_connect(f"{url}/rooms/{room}/ws", max_msg_size=0, autoping=True, origin=url)
            sockets.setdefault((url, room), []).append(ws)
            last = 0
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                if msg.data.startswith('{"type":"message"'):
                    last = counts.got(url, last, _id_after(msg.data, '"id":'))

        async def stream(url: str, room: str) -> None:
            async with session.get(f"{url}/rooms/{room}/events", headers={"Accept": "text/event-stream"}) as resp:
                sockets.setdefault((url, room), []).append(resp)
                last = 0
                async for line in resp.content:
                    if line.startswith(b"id: "):
                        last = counts.got(url, last, int(line[4:]))

        async def poll(url: str, room: str, index: int) -> None:
            since, k, full = 0, 0, False
            # As rtlab's client asks: the server's largest page, and a full page followed at once (more is waiting).
            query = f"&limit={PAGE_LIMIT}" + (f"&wait={LONG_POLL_WAIT_S}" if how == "long-polling" else "")
            sockets.setdefault((url, room), []).append(None)
            while not stop.is_set():
                if how == "short-polling" and not full:  # on a fixed schedule, spread over the interval
                    k += 1
                    delay = start + poll_interval_s * (k + index / members) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                async with session.get(f"{url}/rooms/{room}/messages?since={since}{query}") as resp:
                    page = json.loads(await resp.read())
                if counts.counting:
                    counts.requests[url] += 1
                for message in page["messages"]:
                    since = counts.got(url, since, message["id"])
                full = len(page["messages"]) >= PAGE_LIMIT

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
                body = {"user": "bench", "text": f"message {k} of {room}", "sent_at": time.time()}
                for url in (urls if k % 2 else urls[::-1]):  # alternate which server hears first
                    if how == "websocket":
                        members_ws = sockets[(url, room)]
                        await members_ws[k % len(members_ws)].send_str(json.dumps({"type": "send", **body}))
                    else:
                        async with session.post(f"{url}/rooms/{room}/messages", json=body) as resp:
                            await resp.read()
                    if counts.counting:
                        counts.sent[url] += 1

        names = [f"bench{r}" for r in range(rooms)]
        start = time.monotonic() + 0.5
        tasks = []
        for url in urls:
            for room in names:
                for i in range(members):
                    if how == "websocket":
                        tasks.append(asyncio.create_task(websocket(url, room)))
                    elif how == "sse":
                        tasks.append(asyncio.create_task(stream(url, room)))
                    else:
                        tasks.append(asyncio.create_task(poll(url, room, i)))
        deadline = time.monotonic() + 60
        while sum(len(v) for v in sockets.values()) < len(urls) * rooms * members:
            if time.monotonic() > deadline:
                raise SystemExit("benchmarks: members did not all connect within 60 s")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # the last streams' first bytes
        start = time.monotonic()
        tasks += [asyncio.create_task(sender(room, i / (rooms * rate))) for i, room in enumerate(names)]
        await asyncio.sleep(warmup_s)
        print("start", flush=True)
        counts.counting = True
        await asyncio.sleep(measure_s)
        counts.counting = False
        print("end " + json.dumps(counts.as_dict(urls)), flush=True)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for room_sockets in sockets.values():
            for ws in room_sockets:
                if ws is not None and hasattr(ws, "close"):
                    res = ws.close()
                    if asyncio.iscoroutine(res):
                        await res


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


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, nproc {os.cpu_count()}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
