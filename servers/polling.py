"""Polling, short and long: one poll route, `GET /rooms/{room}/messages?since=ID[&wait=S]`, answered at once
or held until a message after `since` exists or S seconds pass."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import NamedTuple

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily

from .broker import Broker, RoomListeners
from .core import InvalidInput, Message, Page, validate_room
from .http import BROKER, CONFIG, int_param, messages_resource, page_json, seconds_param
from .metrics import tally_of
from .transport import ServerTransport

POLL_LIMIT_DEFAULT = 100  # messages per poll answer unless `limit` says otherwise


class LongPollHub:
    """Held polls per room (servers.broker.RoomListeners: one subscription per room that has any), released on
    every post."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._waiters: RoomListeners[asyncio.Future[None]] = RoomListeners(broker, self._on_message)
        self._closing = False
        self.held = 0  # polls being held right now

    async def hold(self, room: str, since: int, limit: int, wait_s: float) -> Page | None:
        """Answer at once when something is after `since`; otherwise wait up to `wait_s` for a post and return
        None: the caller reads the room then (PollRoute reuses the answer the first poll it released built)."""
        broker = self._broker
        if wait_s <= 0 or self._closing:
            return await broker.since(room, since, limit)
        # Register before reading, so a post landing between the read and the wait still wakes us.
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(room, waiter)
        self.held += 1
        try:
            known = broker.known_last_id(room)
            if known is None or known > since:  # something may be there already: read
                page = await broker.since(room, since, limit)
                if page.messages:
                    return page
            # A timer that releases the waiter, lighter than asyncio.timeout's cancellation machinery.
            timer = asyncio.get_running_loop().call_later(wait_s, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
        finally:
            # Also runs when the client goes away: aiohttp cancels the handler (handler_cancellation).
            if self._waiters.discard(room, waiter):
                self.held -= 1
        return None

    def held_in(self, room: str) -> int:
        return len(self._waiters.of(room))

    def release_all(self) -> None:
        """Answer every held poll now and hold no new ones (shutdown, draining)."""
        self._closing = True
        for waiters in self._waiters.rooms():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _on_message(self, message: Message) -> None:
        for waiter in self._waiters.of(message.room):
            if not waiter.done():
                waiter.set_result(None)


class Answer(NamedTuple):
    """A poll answer encoded once, for every poll that asks the same (since, limit) while its room's last id holds."""

    body: bytes
    messages: int
    payload_bytes: int


ANSWERS_PER_ROOM = 64  # distinct (since, limit) answers kept for a room's newest id; more start the set afresh
ANSWER_CACHE_BYTES = 16 * 2**20  # every room's kept answers together; past it, the whole cache starts afresh


class RoomAnswers:
    """A room's kept answers, all for its newest id `last_id`."""

    __slots__ = ("last_id", "answers", "bytes")

    def __init__(self, last_id: int) -> None:
        self.last_id = last_id
        self.answers: dict[tuple[int, int], Answer] = {}
        self.bytes = 0


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class PollRoute:
    """The poll route, added once whichever polling transport mounts first; held only with long polling."""

    def __init__(self, app: web.Application) -> None:
        self.long: LongPolling | None = None
        resource = messages_resource(app)
        resource.add_route("HEAD", self.handle)
        self.route = resource.add_route("GET", self.handle)
        # Each room's answers for its newest id, encoded once: the polls one message releases all ask with the same
        # since=, and so do the short polls that come between two messages (a member's since= is the last id it
        # saw). (since, limit) and the room's last id pin an answer down, history only growing; a new message
        # starts the room's set afresh. Used only where the broker knows the last id without reading (in memory).
        self._answers: dict[str, RoomAnswers] = {}
        self.cached_bytes = 0  # bounded by ANSWER_CACHE_BYTES: distinct since= values cannot grow it without end

    def _cached(self, room: str, since: int, limit: int, last_id: int | None) -> Answer | None:
        entry = self._answers.get(room)
        if entry is None or last_id is None or entry.last_id != last_id:
            return None
        return entry.answers.get((since, limit))

    def _remember(self, room: str, since: int, limit: int, page: Page) -> Answer:
        body = page_json(page).encode()
        answer = Answer(body, len(page.messages), sum(m.json_bytes for m in page.messages))
        if len(body) > ANSWER_CACHE_BYTES // 4:
            return answer  # a page this big is rare (a member far behind): not worth the cache's room
        entry = self._answers.get(room)
        if entry is None or entry.last_id != page.last_id or len(entry.answers) >= ANSWERS_PER_ROOM:
            if entry is not None:
                self.cached_bytes -= entry.bytes
            entry = self._answers[room] = RoomAnswers(page.last_id)
        if self.cached_bytes + len(body) > ANSWER_CACHE_BYTES:
            self._answers.clear()
            self.cached_bytes = 0
            entry = self._answers[room] = RoomAnswers(page.last_id)
        entry.answers[(since, limit)] = answer
        entry.bytes += len(body)
        self.cached_bytes += len(body)
        return answer

    async def handle(self, request: web.Request) -> web.Response:
        app = request.app
        room = validate_room(request.match_info["room"])
        since = int_param(request, "since", 0, 0, 2**53)
        limit = int_param(request, "limit", POLL_LIMIT_DEFAULT, 1, app[CONFIG].limits.page)
        long = self.long
        broker = app[BROKER]
        if long is None:
            if "wait" in request.query:
                raise InvalidInput("this server does short polling and does not hold requests: drop wait")
            answer = self._cached(room, since, limit, broker.known_last_id(room))
            page = None if answer is not None else await broker.since(room, since, limit)
        else:
            wait = seconds_param(request, "wait", long.max_wait_s) or 0.0
            page = await long.hub.hold(room, since, limit, wait)
            answer = None
            if page is None:  # a held poll, released: the answer its room's first released poll built is likely ours
                answer = self._cached(room, since, limit, broker.known_last_id(room))
                if answer is None:
                    page = await broker.since(room, since, limit)
        if answer is None:
            answer = self._remember(room, since, limit, page)
        tally = tally_of(request)
        tally.polls += 1
        if not answer.messages:
            tally.empty_polls += 1
        tally.messages_delivered += answer.messages
        tally.payload_sent_bytes += answer.payload_bytes
        return web.Response(body=answer.body, content_type="application/json", charset="utf-8")


POLL_ROUTE = web.AppKey("poll_route", PollRoute)


def asks_to_wait(request: web.Request) -> bool:
    """Does this poll ask to be held (wait > 0)? A malformed wait is answered 400 as a short poll."""
    raw = request.query.get("wait")
    if not raw:
        return False
    try:
        return float(raw) > 0
    except ValueError:
        return False


def poll_route(app: web.Application) -> PollRoute:
    if POLL_ROUTE not in app:
        app[POLL_ROUTE] = PollRoute(app)
    return app[POLL_ROUTE]


class ShortPolling(ServerTransport):
    """Answers every poll at once, even when nothing is new."""

    def mount(self) -> list[web.AbstractRoute]:
        return [poll_route(self.app).route]

    def claims(self, request: web.Request) -> bool:
        return not asks_to_wait(request)


class LongPolling(ServerTransport):
    """Holds a poll that asks to wait until a message after `since` exists or the wait runs out."""

    def mount(self) -> list[web.AbstractRoute]:
        self.max_wait_s = float(self.config.knob("long_poll_max_wait_s"))  # a longer `wait` is capped to this
        self.hub = LongPollHub(self.app[BROKER])
        route = poll_route(self.app)
        route.long = self
        return [route.route]

    def claims(self, request: web.Request) -> bool:
        return asks_to_wait(request)

    def held(self, room: str) -> int:
        return self.hub.held_in(room)

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        released = self.hub.held
        self.hub.release_all()
        return {"polls_released": released}

    def gauges(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("rtlab_long_polls_held", "Long polls being held now.", labels=["transport"])
        family.add_metric([self.name], self.hub.held)
        yield family
