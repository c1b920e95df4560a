"""The Redis broker: rooms, ids and history in Redis, fan-out to every instance through Redis pub/sub."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .broker import Listener
from .core import (
    Limits,
    Message,
    Page,
    Unavailable,
    check_id,
    check_limit,
    check_message,
    fields_json,
    validate_room,
    with_id,
)

log = logging.getLogger("rtlab.redis")

# Errors that mean "Redis is not reachable right now"; BusyLoadingError (Redis reading its dump) is one of them.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# INCR the room's counter, build the message's JSON around its new id, keep it in a sorted set trimmed
# to the newest `keep`, then PUBLISH it: stored before published, all in one atomic step, so ids are
# contiguous whichever instance posts and every publication is in id order.
# KEYS: counter, log, rooms. ARGV: room, body (the JSON without its id), keep, max rooms, channel.
POST_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[4]) and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
    return -1
  end
  redis.call('SADD', KEYS[3], ARGV[1])
end
local id = redis.call('INCR', KEYS[1])
local json = '{"id":' .. string.format('%d', id) .. ',' .. string.sub(ARGV[2], 2)
redis.call('ZADD', KEYS[2], id, json)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', id - tonumber(ARGV[3]))
redis.call('PUBLISH', ARGV[5], json)
return id
"""

# The room's newest id and at most `limit` messages after `after`, read together.
# KEYS: counter, log. ARGV: after, limit.
SINCE_LUA = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) >= last then
  return {last, {}}
end
return {last, redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, tonumber(ARGV[2]))}
"""

CLOSE_TIMEOUT_S = 5.0  # close() waits this long at most for its tasks to stop
CONTROL_CHANNEL = "control"  # always subscribed, so the subscriber connection exists before any room does


def decode_message(raw: str) -> Message:
    """Rebuild a Message from the JSON stored in Redis, keeping that JSON as its one encoding."""
    d = json.loads(raw)
    return Message(d["id"], d["room"], d["user"], d["text"], d["sent_at"], d["ts"], raw)


@dataclass
class _Subscription:
    """This instance's subscription to one room's channel, and how far its listeners have been served."""

    listeners: list[Listener] = field(default_factory=list)
    confirmed: bool = False  # Redis acknowledged the SUBSCRIBE on the current connection
    # The highest id handed to the listeners; None until known (then the next publication is taken as is).
    watermark: int | None = None
    # While unconfirmed: the lowest newest-id any `since` read of this room answered. A listener that read
    # then may have missed what was posted before the SUBSCRIBE took effect; the catch-up starts here.
    floor: int | None = None
    idle_since: float | None = None  # monotonic time the last listener left (the subscription lingers)


class RedisBroker:
    """The Broker protocol over Redis, so any number of instances serve the same rooms.

    Posting runs one Lua script (id, store, trim, publish). Each instance holds one pub/sub connection,
    subscribed to `{prefix}room:{room}` for the rooms it has listeners in (a channel per room, so an
    instance is woken only for its own rooms), and calls its listeners in id order, each id once.
    A subscription lingers `linger_s` after its last listener left: long polls leave and rejoin a room
    at every message, and re-subscribing each time would cost two round trips per message.

    When the connection to Redis drops, the subscriber reconnects with jittered backoff, resubscribes
    every room, and catches each room up from the last id it delivered, reading `since` from the
    stored history: publications lost during the outage reach the listeners all the same, in order.
    While Redis is unreachable, posts and reads raise Unavailable (HTTP 503).
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        limits: Limits = Limits(),
        *,
        prefix: str = "rtlab:",
        clock: Callable[[], float] = time.time,
        linger_s: float = 10.0,
        reconnect_first_s: float = 0.05,
        reconnect_max_s: float = 1.0,
    ) -> None:
        self.url = url
        self.limits = limits
        self.prefix = prefix
        self._clock = clock
        self.linger_s = linger_s
        self.reconnect_first_s = reconnect_first_s
        self.reconnect_max_s = reconnect_max_s
        self._redis: aioredis.Redis | None = None
        self._sub_redis: aioredis.Redis | None = None
        self._pubsub = None
        self._rooms: dict[str, _Subscription] = {}
        self._sent: set[str] = set()  # rooms a SUBSCRIBE was sent for on the current connection
        self._wanted: asyncio.Queue[str] | None = None  # rooms whose subscription may need a command
        self._tasks: list[asyncio.Task] = []
        self._closed = False
        self._channel_prefix = f"{prefix}room:"
        # Observability, reported by /healthz.
        self.connected = False
        self.reconnects = 0
        self.last_outage_s: float | None = None
        self.catch_up_messages = 0  # delivered from history instead of from a publication

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self, timeout_s: float = 2.0) -> None:
        """Connect, load the scripts and start the subscriber; raise Unavailable when Redis stays unreachable."""
        # Commands retry briefly, so a pooled connection that a Redis restart left dead is replaced
        # transparently. (A post retried after Redis ran it but before its answer arrived would be stored
        # twice, under two ids: nothing is lost and ids stay contiguous.)
        self._redis = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            retry=Retry(EqualJitterBackoff(cap=0.2, base=0.01), 3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        # The subscriber retries nothing itself: its loop below reconnects, resubscribes and catches up.
        self._sub_redis = aioredis.Redis.from_url(
            self.url, decode_responses=True, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        self._post = self._redis.register_script(POST_LUA)
        self._since = self._redis.register_script(SINCE_LUA)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await self._redis.ping()
                break
            except UNREACHABLE as error:
                if time.monotonic() > deadline:
                    await self._close_clients()
                    raise Unavailable(f"cannot reach Redis at {self.url}: {error}") from None
                await asyncio.sleep(0.1)
        self._wanted = asyncio.Queue()
        subscribed = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._subscriber(subscribed), name="rtlab-redis-subscriber"),
            asyncio.create_task(self._commander(), name="rtlab-redis-commander"),
        ]
        # Serve only once the subscriber listens, so the first listeners are not left waiting for it.
        try:
            async with asyncio.timeout(timeout_s):
                await subscribed
        except TimeoutError:
            log.warning("redis subscriber not connected after %.1f s; serving anyway", timeout_s)

    async def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # Bounded: a task whose cancel was swallowed (see _commander) still sees _closed on its next turn.
            done, _ = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: a task that failed on its way out is not worth a warning
        self._tasks = []
        self._rooms.clear()
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except Exception:
                pass
            self._pubsub = None
        for client in (self._redis, self._sub_redis):
            if client is not None:
                try:
                    await client.aclose()
                except Exception:
                    pass
        self._redis = self._sub_redis = None

    # ---- the Broker protocol --------------------------------------------------------------------------------------

    async def post(self, room: str, user: str, text: str, sent_at: float | None) -> Message:
        # The core validates and encodes; Redis stores, numbers and publishes (the script splices the id in).
        room, user, text, sent_at = check_message(room, user, text, sent_at, self.limits)
        ts = self._clock()
        body = fields_json(room, user, text, sent_at, ts)
        keys = (self._key(room, "last"), self._key(room, "log"), f"{self.prefix}rooms")
        args = (room, body, self.limits.history, self.limits.rooms, self._channel(room))
        message_id = await self._call(self._post(keys, args))
        if message_id < 0:
            raise Unavailable(f"room limit reached ({self.limits.rooms} rooms)")
        return Message(message_id, room, user, text, sent_at, ts, with_id(message_id, body))

    def known_last_id(self, room: str) -> int | None:
        return None  # the newest id is in Redis: read it

    async def since(self, room: str, after_id: int, limit: int) -> Page:
        validate_room(room)
        check_id("since", after_id)
        check_limit(limit, self.limits.page)
        page = await self._read_since(room, after_id, limit)
        sub = self._rooms.get(room)
        if sub is not None and not sub.confirmed:
            sub.floor = page.last_id if sub.floor is None else min(sub.floor, page.last_id)
        return page

    async def history(self, room: str, before: int | None, limit: int) -> tuple[Message, ...]:
        validate_room(room)
        if before is not None:
            check_id("before", before)
        check_limit(limit, self.limits.page)
        # Only the newest `history` ids are kept, so the newest `limit` below `before` are exactly ChatCore's.
        high = "+inf" if before is None else f"({before}"
        raws = await self._call(self._redis.zrevrangebyscore(self._key(room, "log"), high, "-inf", 0, limit))
        return tuple(decode_message(raw) for raw in reversed(raws))

    def subscribe(self, room: str, listener: Listener) -> Callable[[], None]:
        sub = self._rooms.get(room)
        if sub is None:
            # A room whose lingering subscription was just dropped may still be subscribed on this
            # connection (its UNSUBSCRIBE not sent yet): then it stays subscribed and is live already.
            sub = self._rooms[room] = _Subscription(confirmed=room in self._sent and self._pubsub is not None)
            if self._wanted is not None:
                self._wanted.put_nowait(room)
        sub.listeners.append(listener)
        sub.idle_since = None

        def unsubscribe() -> None:
            try:
                sub.listeners.remove(listener)
            except ValueError:
                return
            if not sub.listeners:
                sub.idle_since = time.monotonic()  # the commander unsubscribes once it has lingered

        return unsubscribe

    # ---- reads and writes -----------------------------------------------------------------------------------------

    def _key(self, room: str, kind: str) -> str:
        return f"{self.prefix}room:{room}:{kind}"

    def _channel(self, room: str) -> str:
        return f"{self._channel_prefix}{room}"

    async def _call(self, command: Awaitable):
        """Await one Redis command; Redis being unreachable is the client's 503, not our 500."""
        try:
            return await command
        except UNREACHABLE as error:
            raise Unavailable(f"the broker (Redis) is unreachable: {error}") from None

    async def _read_since(self, room: str, after_id: int, limit: int) -> Page:
        last, raws = await self._call(self._since((self._key(room, "last"), self._key(room, "log")), (after_id, limit)))
        last = int(last)
        if not raws:
            return Page((), last, False)
        first_visible = max(1, last - self.limits.history + 1)
        return Page(tuple(decode_message(raw) for raw in raws), last, after_id + 1 < first_visible)

    # ---- the subscriber: one connection, reconnect, resubscribe, catch up --------------------------------------------

    async def _subscriber(self, subscribed: asyncio.Future) -> None:
        failures = 0
        outage_started: float | None = None
        while not self._closed:
            pubsub = self._sub_redis.pubsub()
            try:
                self._pubsub = pubsub
                for sub in self._rooms.values():
                    sub.confirmed = False
                rooms = list(self._rooms)
                self._sent = set(rooms)
                await pubsub.subscribe(self.prefix + CONTROL_CHANNEL, *(self._channel(room) for room in rooms))
                async for item in self._messages(pubsub):
                    if not self.connected:
                        self.connected = True
                        failures = 0
                        if not subscribed.done():
                            subscribed.set_result(None)
                        if outage_started is not None:
                            self.reconnects += 1
                            self.last_outage_s = time.monotonic() - outage_started
                            log.warning("redis: reconnected after %.2f s; resubscribed %d rooms",
                                        self.last_outage_s, len(rooms))
                            outage_started = None
                    await self._handle(item)
            except asyncio.CancelledError:
                raise
            except UNREACHABLE as error:
                if self.connected or outage_started is None:
                    log.warning("redis: subscriber connection lost (%s); reconnecting", error)
                    outage_started = time.monotonic()
                self.connected = False
            except Exception:
                log.exception("redis: subscriber failed; reconnecting")
                self.connected = False
                outage_started = outage_started or time.monotonic()
            finally:
                self._pubsub = None
                try:
                    await pubsub.aclose()
                except Exception:
                    pass
            failures += 1
            delay = min(self.reconnect_first_s * 2 ** (failures - 1), self.reconnect_max_s)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # jitter: instances do not reconnect in lockstep

    async def _messages(self, pubsub):
        while True:
            item = await pubsub.get_message(timeout=None)
            if item is not None:
                yield item

    async def _handle(self, item: dict) -> None:
        kind = item["type"]
        channel = item["channel"]
        if not channel.startswith(self._channel_prefix):
            return  # the control channel
        room = channel[len(self._channel_prefix) :]
        sub = self._rooms.get(room)
        if sub is None:
            return  # unsubscribed meanwhile
        if kind == "message":
            message = decode_message(item["data"])
            mark = sub.watermark
            if mark is not None:
                if message.id <= mark:
                    return  # already delivered (by a catch-up)
                if message.id > mark + 1:
                    await self._catch_up(room, sub, mark)  # a publication was missed: read it from history
                    if sub.watermark is not None and message.id <= sub.watermark:
                        return
            sub.watermark = message.id
            self._deliver(sub, message)
        elif kind == "subscribe":
            sub.confirmed = True
            marks = [mark for mark in (sub.watermark, sub.floor) if mark is not None]
            start = min(marks) if marks else None
            sub.floor = None
            if start is not None:
                await self._catch_up(room, sub, start)

    async def _catch_up(self, room: str, sub: _Subscription, after_id: int) -> None:
        """Deliver, in order, every stored message after `after_id` the listeners have not had."""
        if sub.watermark is None or sub.watermark > after_id:
            sub.watermark = after_id
        while self._rooms.get(room) is sub:
            page = await self._read_since(room, sub.watermark, self.limits.page)
            if page.last_id < sub.watermark:
                # Redis came back without the room's history (restarted without persistence): ids start over.
                log.warning("redis: room %s restarted at id %d (had %d): its history was lost",
                            room, page.last_id, sub.watermark)
                sub.watermark = page.last_id
                return
            for message in page.messages:
                if message.id > sub.watermark:
                    sub.watermark = message.id
                    self.catch_up_messages += 1
                    self._deliver(sub, message)
            if not page.messages or sub.watermark >= page.last_id:
                return

    def _deliver(self, sub: _Subscription, message: Message) -> None:
        for listener in tuple(sub.listeners):  # a listener may unsubscribe while we iterate
            try:
                listener(message)
            except Exception:
                log.exception("listener failed on %s #%d", message.room, message.id)

    async def _commander(self) -> None:
        """Send SUBSCRIBE/UNSUBSCRIBE in the order the rooms' states changed; drop subscriptions that lingered."""
        # Until closed, not forever: on Python 3.11 a cancel that lands as asyncio.timeout expires can come out as
        # TimeoutError (the cancel swallowed), and close() would wait for this task for ever (a test hung on it).
        while not self._closed:
            try:
                async with asyncio.timeout(max(self.linger_s / 2, 0.05)):
                    room = await self._wanted.get()
            except TimeoutError:
                room = None
            now = time.monotonic()
            for name, sub in list(self._rooms.items()):
                if sub.idle_since is not None and now - sub.idle_since >= self.linger_s:
                    del self._rooms[name]
                    self._wanted.put_nowait(name)
            if room is None:
                continue
            pubsub = self._pubsub
            if pubsub is None:
                continue  # reconnecting: the subscriber subscribes every wanted room itself
            try:
                if room in self._rooms and room not in self._sent:
                    self._sent.add(room)
                    await pubsub.subscribe(self._channel(room))
                elif room not in self._rooms and room in self._sent:
                    self._sent.discard(room)
                    await pubsub.unsubscribe(self._channel(room))
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the subscriber notices too, reconnects and resubscribes what is wanted
                log.debug("redis: (un)subscribe %s failed: %r", room, error)

    def state(self) -> dict:
        """What /healthz reports about the broker's link to Redis."""
        return {
            "connected": self.connected,
            "reconnects": self.reconnects,
            "last_outage_s": None if self.last_outage_s is None else round(self.last_outage_s, 3),
            "rooms_subscribed": len(self._rooms),
            "catch_up_messages": self.catch_up_messages,
        }
