"""Watching one instance: `GET /admin/events` (loopback only) streams, one JSON object a line, what this instance
holds and what happens to each message, for the cluster demo page (docs/demo.md) or `curl -N`.

Events (each with `event`, `instance` and `t`, unix seconds):
- `hello`: first, once: the instance's name, pid, broker, transports, whether it is draining;
- `open` / `close`: a request to a room began / ended (`n` pairs them): its transport (the metrics' label), route,
  room, and the member's `client=` id when it gave one. A WebSocket, an event stream or a held long poll stays
  open as long as this instance holds that member; a short poll or a post opens and closes at once;
- `posted`: a message stored through this instance (with Redis: also published to every instance);
- `fanout`: a message reached this instance's listeners in its room (from its own post, or from Redis), with how
  many members each transport holds there at that moment (`held`; the sum: `members`);
- `dropped`: how many events this watcher lost because it read too slowly (its queue is bounded).

Cheap when nobody watches: one attribute read per request and per message, nothing kept. Bounded when watched:
at most MAX_WATCHERS streams, QUEUE_EVENTS events queued for each. Transports know nothing of it: the app's
middleware and the broker (wrapped here) report, and a transport only answers `held(room)` (servers.transport).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from .admin import draining, is_loopback
from .broker import Broker, Listener
from .config import ServerConfig
from .core import Message
from .http import BROKER, error_response
from .metrics import tally_of
from .transport import mounted

MAX_WATCHERS = 4
QUEUE_EVENTS = 4096
HEARTBEAT_S = 10.0  # a line every so often, so a watcher (or a proxy) sees the stream is alive
SEEN_ROOMS_KEPT = 10_000
CLIENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Watcher:
    """One `GET /admin/events` stream: its bounded queue of encoded lines."""

    __slots__ = ("lines", "dropped", "wake")

    def __init__(self) -> None:
        self.lines: deque[bytes] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()


class Observer:
    """What the app reports (requests to rooms, posts, messages reaching listeners), turned into events for the
    instance's watchers; `watching` is False, and every report skipped, while nobody watches."""

    def __init__(self, config: ServerConfig) -> None:
        self.app: web.Application | None = None  # set by install
        self.instance = config.instance
        self.watchers: list[Watcher] = []
        self.watching = False
        self.closing = False
        self._requests = 0
        self._seen: dict[str, int] = {}  # room -> the newest id counted (every transport's listener hears each)

    def watch(self) -> Watcher:
        watcher = Watcher()
        self.watchers.append(watcher)
        self.watching = True
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        self.watchers.remove(watcher)
        self.watching = bool(self.watchers)
        if not self.watching:
            self._seen.clear()

    def line(self, event: dict) -> bytes:
        event["instance"] = self.instance
        event["t"] = round(time.time(), 6)
        return json.dumps(event, separators=(",", ":")).encode() + b"\n"

    def emit(self, event: dict) -> None:
        """Queue `event` (encoded once) for every watcher; a full queue drops it and counts the drop."""
        line = self.line(event)
        for watcher in self.watchers:
            if len(watcher.lines) >= QUEUE_EVENTS:
                watcher.dropped += 1
                continue
            watcher.lines.append(line)
            watcher.wake.set()

    def close(self) -> None:
        """End every stream (the server is shutting down)."""
        self.closing = True
        for watcher in self.watchers:
            watcher.wake.set()

    # ---- what the app reports ----

    def opened(self, request: web.Request) -> int | None:
        """A request began; return its number for `closed`, or None when it is not to a room."""
        room = request.match_info.get("room")
        if room is None or not ROOM_RE.fullmatch(room):
            return None
        client = request.query.get("client")
        self._requests += 1
        resource = request.match_info.route.resource
        self.emit({"event": "open", "n": self._requests, "transport": tally_of(request).label, "room": room,
                   "client": client if client is not None and CLIENT_RE.fullmatch(client) else None,
                   "route": f"{request.method} {resource.canonical if resource else '?'}"})
        return self._requests

    def closed(self, number: int, status: int | None) -> None:
        self.emit({"event": "close", "n": number, "status": status})

    def posted(self, message: Message, broker: str) -> None:
        self.emit({"event": "posted", "room": message.room, "id": message.id, "user": message.user,
                   "sent_at": message.sent_at, "broker": broker})

    def arrived(self, message: Message) -> None:
        room = message.room
        if self._seen.get(room) == message.id:
            return  # another transport's listener of the same message
        if len(self._seen) >= SEEN_ROOMS_KEPT:
            self._seen.clear()
        self._seen[room] = message.id
        held = {}
        for name, transport in mounted(self.app).items():
            count = transport.held(room)
            if count:
                held[name] = count
        self.emit({"event": "fanout", "room": room, "id": message.id, "user": message.user,
                   "sent_at": message.sent_at, "members": sum(held.values()), "held": held})


class ObservedBroker:
    """The app's broker, reporting each post and each message that reaches this instance's listeners to the
    observer; everything else is the broker's own."""

    def __init__(self, broker: Broker, observer: Observer) -> None:
        self._broker = broker
        self._observer = observer

    def __getattr__(self, name: str):
        return getattr(self._broker, name)

    async def post(self, room: str, user: str, text: str, sent_at: float | None) -> Message:
        message = await self._broker.post(room, user, text, sent_at)
        if self._observer.watching:
            self._observer.posted(message, self._broker.name)
        return message

    def subscribe(self, room: str, listener: Listener) -> Callable[[], None]:
        observer = self._observer

        def observed(message: Message) -> None:
            if observer.watching:
                observer.arrived(message)  # as it arrives, before any listener has run
            listener(message)

        return self._broker.subscribe(room, observed)


OBSERVER = web.AppKey("observer", Observer)
EVENTS_ROUTE = web.AppKey("observer_route", web.AbstractRoute)


async def handle_events(request: web.Request) -> web.StreamResponse:
    """Stream this instance's events as JSON lines until the client goes or the server stops (module docstring)."""
    if not is_loopback(request):
        return error_response(403, "the admin routes answer only on the loopback interface")
    observer = request.app[OBSERVER]
    if len(observer.watchers) >= MAX_WATCHERS or observer.closing:
        return error_response(503, f"at most {MAX_WATCHERS} watchers at once")
    response = web.StreamResponse(headers={"Content-Type": "application/jsonl", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(observer.line({
        "event": "hello", "pid": os.getpid(), "broker": request.app[BROKER].name,
        "transports": list(mounted(request.app)), "draining": draining(request.app)}))
    watcher = observer.watch()
    try:
        while not observer.closing:
            if not watcher.lines:
                watcher.wake.clear()
                try:
                    await asyncio.wait_for(watcher.wake.wait(), HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b'{"event":"tick"}\n')
                    continue
            if watcher.dropped:
                dropped, watcher.dropped = watcher.dropped, 0
                await response.write(b'{"event":"dropped","count":%d}\n' % dropped)
            lines = list(watcher.lines)
            watcher.lines.clear()
            await response.write(b"".join(lines))
    finally:
        observer.unwatch(watcher)
    return response


def install(app: web.Application, observer: Observer, broker: Broker) -> Broker:
    """Add `GET /admin/events` for `observer` (its route under EVENTS_ROUTE, for the meter to leave out); return the
    broker the transports should use: `broker`, observed."""
    observer.app = app
    app[OBSERVER] = observer
    app[EVENTS_ROUTE] = app.router.add_get("/admin/events", handle_events, allow_head=False)

    async def stop_watchers(app: web.Application) -> None:
        observer.close()

    app.on_shutdown.append(stop_watchers)
    return ObservedBroker(broker, observer)
