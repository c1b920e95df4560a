"""A crowd for the cluster demo: many WebSocket members of one room, through the balancer, talking a little; bounded
(MAX_CROWD members, MAX_CROWD_RATE messages a second in all), with a senders' ledger of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import deque

import aiohttp

MAX_CROWD = 300  # members at most
MAX_CROWD_RATE = 5.0  # messages per second at most, all members together
# A message older than this is settled: every member that joined before it should have it by then (a message missed
# never comes, so waiting longer only delays the count, and a loaded machine is not taken for a loss).
SETTLE_S = 10.0


class Crowd:
    """`size` WebSocket members of the room, through HAProxy, sending `rate` messages a second between them.

    Each member resumes after the last id it saw when its connection ends (jittered backoff, clients.base.Backoff),
    and the crowd keeps a senders' ledger of its own messages: a message older than SETTLE_S should have reached
    every member that had joined before it was sent; the shortfall is `missed`. Also counted: duplicates (an id
    twice on one member), reconnects and how long they took."""

    def __init__(self, url: str, room: str, size: int, rate: float) -> None:
        self.url, self.room, self.size, self.rate = url, room, size, rate
        self.sockets: dict[int, aiohttp.ClientWebSocketResponse] = {}
        self.joined_at: dict[int, float] = {}
        self.tasks: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None
        self.ledger: dict[str, list] = {}  # key -> [sent_at, members expected, members that got it]
        self.settled = deque(maxlen=500)
        self.sent = self.received = self.missed = self.duplicates = self.checked = 0
        self.reconnect_ms: deque[float] = deque(maxlen=1000)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        self.tasks = [asyncio.create_task(self._member(k)) for k in range(self.size)]
        if self.rate > 0:
            self.tasks.append(asyncio.create_task(self._talk()))

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    async def _member(self, k: int) -> None:
        from clients.base import Backoff  # (gevent's import, only once a crowd is asked for)

        last_id, recent, down_at = 0, deque(maxlen=200), None
        backoff = Backoff(attempts=1_000_000, budget_s=float("inf"))
        name = f"crowd-{k + 1}"
        await asyncio.sleep(k * 0.01)  # not all in the same millisecond
        while True:
            try:
                async with self.session.ws_connect(
                        f"{self.url}/rooms/{self.room}/ws?since={last_id}&client={name}", heartbeat=20) as ws:
                    self.joined_at.setdefault(k, time.time())
                    if down_at is not None:
                        self.reconnect_ms.append((time.perf_counter() - down_at) * 1000)
                        down_at = None
                    backoff.reset()
                    self.sockets[k] = ws
                    async for frame in ws:
                        if frame.type != aiohttp.WSMsgType.TEXT:
                            continue
                        message = json.loads(frame.data)
                        if message.get("type") != "message":
                            continue
                        key = f"{message['user']}|{message['sent_at']}"
                        if key in recent:
                            self.duplicates += 1
                            continue
                        recent.append(key)
                        last_id = max(last_id, message["id"])
                        self.received += 1
                        entry = self.ledger.get(key)
                        if entry is not None:
                            entry[2] += 1
            except (aiohttp.ClientError, OSError, ValueError, KeyError):
                pass
            finally:
                self.sockets.pop(k, None)
            if down_at is None:
                down_at = time.perf_counter()
            await asyncio.sleep(backoff.next_delay() or 2.0)

    async def _talk(self) -> None:
        while True:
            await asyncio.sleep(random.expovariate(self.rate))
            self._settle()
            if not self.sockets:
                continue
            k = random.choice(list(self.sockets))
            sent_at = time.time()
            key = f"crowd-{k + 1}|{sent_at}"
            expected = sum(1 for at in self.joined_at.values() if at <= sent_at)
            self.ledger[key] = [sent_at, expected, 0]
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.sockets[k].send_str(json.dumps(
                    {"type": "send", "user": f"crowd-{k + 1}", "text": f"crowd message {self.sent + 1}",
                     "sent_at": sent_at}))
                self.sent += 1

    def _settle(self) -> None:
        cutoff = time.time() - SETTLE_S
        for key in [key for key, (sent_at, _, _) in self.ledger.items() if sent_at < cutoff]:
            _, expected, got = self.ledger.pop(key)
            if got:  # nobody at all, not even its sender: it was never accepted (refused, or the socket was closing)
                self.checked += 1
                self.missed += max(0, expected - got)

    def stats(self) -> dict:
        self._settle()
        times = sorted(self.reconnect_ms)
        return {"size": self.size, "rate": self.rate, "connected": len(self.sockets), "sent": self.sent,
                "received": self.received, "checked": self.checked, "missed": self.missed,
                "duplicates": self.duplicates,
                "reconnects": len(times), "reconnect_p50_ms": round(times[len(times) // 2]) if times else None,
                "reconnect_max_ms": round(times[-1]) if times else None}
