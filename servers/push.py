"""Pushing to open connections (WebSocket, event streams): members per room, one broker subscription per
room, one encoding per message, and a bounded queue per member so a slow reader cannot stall a room."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .broker import Broker, RoomListeners
from .core import Message
from .metrics import NULL_TALLY, Tally

# What a transport sends for one message, and the bytes of the message's own JSON within it (payload).
Encoded = tuple[Any, int]
# (message id, what to send, payload bytes); id 0 is not a message (e.g. an error frame): not a delivery.
Item = tuple[int, Any, int]


class PushMember:
    """One open connection: a bounded queue drained by its own writer task. Subclasses say how to send one
    item and how to close the connection."""

    __slots__ = ("queue", "last_id", "writer", "closing", "tally")

    def __init__(self, queue_size: int, tally: Tally = NULL_TALLY) -> None:
        self.tally = tally  # where its accepted and delivered messages are counted
        self.queue: asyncio.Queue[Item] = asyncio.Queue(queue_size)
        self.last_id = 0  # newest message id sent to this member
        self.writer: asyncio.Task | None = None
        self.closing = False

    async def send(self, data: Any) -> None:
        """Write one encoded item to the connection."""
        raise NotImplementedError

    async def close(self, code: int, reason: str) -> None:
        """End the connection, telling the peer `code` and `reason` where the protocol can."""
        raise NotImplementedError

    def offer(self, item: Item) -> bool:
        """Queue an item; return False when the queue is full (the caller closes the member)."""
        if self.closing:
            return True
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def write(self, broker: Broker, room: str, since: int | None, page_size: int,
                    encode: Callable[[Message], Encoded]) -> None:
        """Send the backlog after `since` (none when None), then every queued item, skipping ids already sent."""
        tally = self.tally
        if since is not None:
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
        while True:
            message_id, data, payload = await self.queue.get()
            if message_id and message_id <= self.last_id:
                continue  # already sent as backlog
            await self.send(data)
            if message_id:
                self.last_id = message_id
                tally.messages_delivered += 1
                tally.payload_sent_bytes += payload


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

    def queued(self) -> tuple[int, int]:
        """Return the items waiting in all queues and in the fullest one (read when /metrics is scraped)."""
        depths = [member.queue.qsize() for members in self._rooms.rooms() for member in members]
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
        member.writer = asyncio.get_running_loop().create_task(
            member.write(self._broker, room, since, page_size, self.encode))
        member.writer.add_done_callback(on_done)

    def _on_message(self, message: Message) -> None:
        data, payload = self.encode(message)
        item = (message.id, data, payload)
        for member in tuple(self._rooms.of(message.room)):
            if not member.offer(item):
                # A slow reader must not stall the room or grow memory: cut it loose; it resumes after its last id.
                self.overflow_closes += 1
                self.close_soon(member, *self._overflow)

    def close_soon(self, member: PushMember, code: int, reason: str) -> None:
        if member.closing:
            return
        member.closing = True
        if member.writer is not None:
            member.writer.cancel()
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
