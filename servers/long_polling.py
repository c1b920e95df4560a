"""Long polling: the poll request with `wait=S` is held until a message after `since` exists or S pass."""

from __future__ import annotations

import asyncio
from typing import Callable

from aiohttp import web

from .broker import Broker
from .config import ServerConfig
from .core import Message, Page
from .http import BROKER
from .short_polling import POLL_HOLDER, mount_poll_route


class LongPollHub:
    """Held polls per room; one broker subscription per room that has any, released on every post."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._closing = False
        self.held = 0  # polls being held right now

    async def hold(self, room: str, since: int, limit: int, wait_s: float) -> Page:
        """Answer at once when something is after `since`; otherwise wait up to `wait_s` for a post."""
        if wait_s <= 0 or self._closing:
            return await self._broker.since(room, since, limit)
        # Register before reading, so a post landing between the read and the wait still wakes us.
        waiter = self._add(room)
        try:
            page = await self._broker.since(room, since, limit)
            if page.messages:
                return page
            try:
                async with asyncio.timeout(wait_s):
                    await waiter
            except TimeoutError:
                pass
        finally:
            # Also runs when the client goes away: aiohttp cancels the handler (handler_cancellation).
            self._discard(room, waiter)
        return await self._broker.since(room, since, limit)

    def release_all(self) -> None:
        """Answer every held poll now and hold no new ones (shutdown, draining)."""
        self._closing = True
        for waiters in self._waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _add(self, room: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.get(room)
        if waiters is None:
            waiters = self._waiters[room] = set()
            self._unsubscribe[room] = self._broker.subscribe(room, self._on_message)
        waiters.add(waiter)
        self.held += 1
        return waiter

    def _discard(self, room: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(room)
        if waiters is None or waiter not in waiters:
            return
        waiters.discard(waiter)
        self.held -= 1
        if not waiters:
            del self._waiters[room]
            self._unsubscribe.pop(room)()

    def _on_message(self, message: Message) -> None:
        for waiter in self._waiters.get(message.room, ()):
            if not waiter.done():
                waiter.set_result(None)


LONG_POLL_HUB = web.AppKey("long_poll_hub", LongPollHub)


def add_routes(app: web.Application, config: ServerConfig) -> None:
    mount_poll_route(app)
    hub = app[LONG_POLL_HUB] = LongPollHub(app[BROKER])
    app[POLL_HOLDER] = hub.hold

    async def release(app: web.Application) -> None:
        hub.release_all()

    app.on_shutdown.append(release)
