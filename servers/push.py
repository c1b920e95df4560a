"""Pushing to open connections (WebSocket, event streams): members per room, one broker subscription per
room, one encoding per message, and a bounded queue per member so a slow reader cannot stall a room."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple

from .broker import Broker, RoomListeners
from .core import ChatError, Message, Unavailable, parse_send
from .metrics import NULL_TALLY, Tally

# What a transport sends for one message, and the bytes of the message's own JSON within it (payload).
Encoded = tuple[Any, int]
# (message id, what to send, payload bytes); id 0 is not a message (e.g. an error frame): not a delivery.
Item = tuple[int, Any, int]


class Prepared(NamedTuple):
    """One message as every member gets it: `body` for the library's send path, `wire` the same bytes as they go
    on a connection, framing included, built once for all members (None: each connection frames its own), as
    Gorilla's PreparedMessage and uWebSockets' publish do."""

    body: Any
    wire: bytes | None


class PushMember:
    """One open connection. An item goes straight to the connection's transport, in the poster's turn, while the
    member is idle (its backlog sent, nothing pending, no writer running) and its transport takes it now;
    otherwise it waits in a bounded queue that a writer task, started only then, drains through the library
    (which waits while the transport is paused), ending when the queue is empty. An idle member holds no task and
    no queue of its own: thousands of held connections cost only their own state. Subclasses say how to send one
    item, what it is on their wire, and how to close the connection."""

    __slots__ = ("pending", "queue_size", "last_id", "writer", "ready", "closing", "tally", "transport", "high_water",
                 "on_done")

    def __init__(self, queue_size: int, tally: Tally = NULL_TALLY, transport: asyncio.Transport | None = None) -> None:
        self.tally = tally  # where its accepted and delivered messages are counted
        self.pending: deque[Item] | None = None  # at most queue_size; made when first needed (a deque is ~600 B)
        self.queue_size = queue_size
        self.last_id = 0  # newest message id sent to this member
        self.writer: asyncio.Task | None = None  # sending the backlog, or draining `pending`; None: idle
        self.ready = False  # the backlog is sent: what is new may go straight through
        self.closing = False
        self.on_done: Callable[[asyncio.Task], None] | None = None  # told of every writer's end
        # The connection's transport (the lab's meter counts what is written to it), for writing straight through.
        self.transport = transport
        self.high_water = transport.get_write_buffer_limits()[1] if transport is not None else 0

    @property
    def idle(self) -> bool:
        return self.ready and self.writer is None and not self.pending

    def wire(self, data: Any) -> bytes | None:
        """The bytes `data` puts on this connection when written straight to its transport, prepared once for
        every member; None: this connection cannot take them so (it closed; its framing is its own)."""
        return None

    async def send(self, data: Any) -> None:
        """Write one encoded item to the connection through the library."""
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        """End the connection, telling the peer `code` and `reason` where the protocol can."""
        raise NotImplementedError

    def offer(self, item: Item) -> bool:
        """Send `item` now when idle, else queue it; return False when the queue is full (the caller closes the
        member)."""
        if self.closing:
            return True  # a closing member takes nothing more
        if self.writer is None and self.ready and not self.pending and self._write_now(item):
            return True
        pending = self.pending
        if pending is None:
            pending = self.pending = deque()
        elif len(pending) >= self.queue_size:
            return False
        pending.append(item)
        if self.writer is None and self.ready:
            self._start(self._drain())
        return True

    def _write_now(self, item: Item) -> bool:
        """Write `item` straight to the transport if it takes it now: under its high-water mark (not paused)."""
        message_id, data, payload = item
        transport = self.transport
        wire = self.wire(data) if transport is not None else None
        if wire is None or transport.is_closing() or transport.get_write_buffer_size() > self.high_water:
            return False
        if message_id:
            if message_id <= self.last_id:
                return True  # already sent as backlog
            self.last_id = message_id
            self.tally.messages_delivered += 1
            self.tally.payload_sent_bytes += payload
        transport.write(wire)
        return True

    def start(self, broker: Broker, room: str, since: int | None, page_size: int,
              encode: Callable[[Message], Encoded], on_done: Callable[[asyncio.Task], None]) -> None:
        """Begin: send the backlog after `since` (a writer task), or with no since be ready at once."""
        self.on_done = on_done
        if since is None:
            self.ready = True
            if self.pending:
                self._start(self._drain())
        else:
            self._start(self._catch_up(broker, room, since, page_size, encode))

    def _start(self, coroutine) -> None:
        self.writer = asyncio.get_running_loop().create_task(coroutine)
        self.writer.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task) -> None:
        if self.writer is task:
            self.writer = None
        if self.on_done is not None and (task.cancelled() or task.exception() is not None):
            self.on_done(task)

    def stop(self) -> None:
        """The connection is ending: take nothing more, and stop any writer."""
        self.closing = True
        self.on_done = None  # (a closure over this member: a cycle that would keep its connection until a full GC)
        if self.writer is not None:
            self.writer.cancel()

    async def _catch_up(self, broker: Broker, room: str, since: int, page_size: int,
                        encode: Callable[[Message], Encoded]) -> None:
        tally = self.tally
        self.last_id = since
        while True:
            page = await broker.since(room, self.last_id, page_size)
            for message in page.messages:
                data, payload = encode(message)
                await self.send(data)
                self.last_id = message.id
                tally.messages_delivered += 1
                tally.payload_sent_bytes += payload
            if not page.messages or self.last_id >= page.last_id:
                break
        self.ready = True
        await self._drain()

    async def _drain(self) -> None:
        """Send what is queued, skipping ids already sent; end when the queue is empty (no await after the check)."""
        pending, tally = self.pending, self.tally
        while pending:  # (None: nothing was ever queued)
            message_id, data, payload = pending.popleft()
            if message_id and message_id <= self.last_id:
                continue  # already sent as backlog
            await self.send(data)
            if message_id:
                self.last_id = message_id
                tally.messages_delivered += 1
                tally.payload_sent_bytes += payload
        self.writer = None  # idle from now on, not from when the task's done callback runs


class SendingMember(PushMember):
    """A push member whose sends arrive on its own connection (a data channel, an HTTP/3 session), as JSON
    `{"type": "send", ...}` messages: each is checked and rate-limited as it arrives (`receive`) and posted in its
    turn, one after another, so a member's messages keep their order. Subclasses say how to `refuse` a send (an
    error message, or a close) and how a member that failed for a reason not the chat's is `dropped`."""

    __slots__ = ("bucket", "refused_running", "inbox", "poster", "room", "broker")

    def __init__(self, queue_size: int, tally: Tally, transport: Any, broker: Broker, room: str) -> None:
        super().__init__(queue_size, tally, transport)
        self.bucket: Any = None  # a guard.TokenBucket, made at its first send: most members listen far more than they talk
        self.refused_running = 0  # sends refused since the last one accepted
        self.inbox: deque[tuple[str, str, float | None]] = deque()  # accepted sends, posted in order
        self.poster: asyncio.Task | None = None
        self.broker = broker
        self.room = room

    def receive(self, data: str | bytes, limits: Any, limiter: Any, what: str = "message") -> bool:
        """Check and rate-limit one message from the peer (a servers.core.Limits, a servers.guard.SendLimiter); post
        it in its turn. A bad one is refused (ChatError: an error message; the connection stays open). Return False
        when the member kept on sending past its limit: the caller cuts it off (1008)."""
        try:
            user, text, sent_at = parse_send(data, limits.text_chars, what)
            if not limiter.admit(self):
                return False
        except ChatError as error:
            self.refuse(str(error))
            return True
        self.inbox.append((user, text, sent_at))
        if self.poster is None:
            self.poster = asyncio.get_running_loop().create_task(self._post_all())
        return True

    def refuse(self, error: str) -> None:
        raise NotImplementedError

    def dropped(self) -> None:
        """The member failed for a reason not the chat's (a bug): close it."""
        raise NotImplementedError

    async def _post_all(self) -> None:
        broker, room, inbox = self.broker, self.room, self.inbox
        try:
            while inbox and not self.closing:
                user, text, sent_at = inbox.popleft()
                try:
                    await broker.post(room, user, text, sent_at)  # the sender hears its own message through fan-out
                except ChatError as error:  # e.g. the room cap, or the broker unavailable
                    self.refuse(str(error))
                    continue
                self.tally.messages_accepted += 1
        except Exception as error:  # noqa: BLE001 (not a chat error: a bug; the member must not hang)
            logging.getLogger("rtlab.server").error("%s send failed: %r", type(self).__module__, error)
            self.dropped()
        finally:
            self.poster = None

    def stop(self) -> None:
        super().stop()
        if self.poster is not None:
            self.poster.cancel()


class PushHub:
    """Members per room; one broker subscription per room with members; each message encoded once for all.

    A member whose queue is full is closed with `overflow` (code, reason): it reconnects and resumes after
    the last id it saw.
    """

    def __init__(self, broker: Broker, encode: Callable[[Message], Encoded], overflow: tuple[int, str]) -> None:
        self._broker = broker
        self.encode = encode
        self._overflow = overflow
        self._rooms: RoomListeners[PushMember] = RoomListeners(broker, self._on_message)
        self._closers: set[asyncio.Task] = set()
        self.overflow_closes = 0
        self.closing: tuple[int, str] | None = None  # set by close_all: later members are closed the same way

    @property
    def members(self) -> int:
        return self._rooms.count()

    def held(self, room: str) -> int:
        return len(self._rooms.of(room))

    def queued(self) -> tuple[int, int]:
        """Return the items waiting in all queues and in the fullest one (read when /metrics is scraped)."""
        depths = [len(member.pending or ()) for members in self._rooms.rooms() for member in members]
        return sum(depths), max(depths, default=0)

    def join(self, room: str, member: PushMember) -> None:
        """Add `member` to `room`; do it before reading the backlog, so nothing posted meanwhile is missed."""
        self._rooms.add(room, member)
        if self.closing is not None:  # close_all ran while this member was being accepted
            self.close_soon(member, *self.closing)

    def leave(self, room: str, member: PushMember) -> None:
        self._rooms.discard(room, member)

    def start_writer(self, member: PushMember, room: str, since: int | None, page_size: int,
                     on_done: Callable[[asyncio.Task], None]) -> None:
        """Start `member`: its backlog after `since`; `on_done` hears of a writer that failed or was cancelled."""
        member.start(self._broker, room, since, page_size, self.encode, on_done)

    def _on_message(self, message: Message) -> None:
        data, payload = self.encode(message)
        item = (message.id, data, payload)
        for member in tuple(self._rooms.of(message.room)):
            if not member.offer(item):
                # A slow reader must not stall the room or grow memory: cut it loose; it resumes after its last id.
                self.overflow_closes += 1
                self.close_soon(member, *self._overflow)

    def writer_done(self, member: PushMember, task: asyncio.Task, what: str,
                    stopped: Callable[[BaseException | None], None]) -> None:
        """A member's writer task ended (start_writer's `on_done`): nothing when it was cancelled (closed on
        purpose); a broker that could not answer the backlog (Unavailable) closes the member with the overflow
        code ("try again later", resume with since=); else `stopped(error)` closes it the transport's way, after an
        unexpected error (not a peer gone mid-send) was logged as `what` writer failed."""
        if task.cancelled():
            return
        error = task.exception()
        if isinstance(error, Unavailable):
            self.close_soon(member, self._overflow[0], "broker unavailable; reconnect with since=")
            return
        if error is not None and not isinstance(error, ConnectionError):
            logging.getLogger("rtlab.server").error("%s writer failed: %r", what, error)
        stopped(error)

    def close_soon(self, member: PushMember, code: int, reason: str) -> None:
        if member.closing:
            return
        member.stop()
        task = asyncio.get_running_loop().create_task(member.close(code, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close_all(self, code: int, reason: str) -> int:
        """Close every member with `code` (1001 shutdown, 1012 drain), and every one that joins later;
        return how many were open."""
        self.closing = (code, reason)
        closed = self.members
        for members in self._rooms.rooms():
            for member in tuple(members):
                self.close_soon(member, code, reason)
        if self._closers:
            await asyncio.wait(tuple(self._closers), timeout=2.0)
        return closed
