"""The broker interface every transport talks to, and its in-memory implementation over the chat core."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Callable, Generic, Protocol, TypeVar

from .core import ChatCore, Message, Page

Listener = Callable[[Message], None]


class Broker(Protocol):
    """Stores messages and fans them out. Transports depend on this alone, so a Redis backend can
    replace the in-memory one without any transport changing.

    A message is stored before listeners hear of it, so a reader that registers a listener and then
    reads `since` cannot miss a message posted in between.
    """

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def post(self, room: str, user: str, text: str, sent_at: float | None) -> Message: ...

    async def since(self, room: str, after_id: int, limit: int) -> Page: ...

    async def history(self, room: str, before: int | None, limit: int) -> tuple[Message, ...]: ...

    def subscribe(self, room: str, listener: Listener) -> Callable[[], None]:
        """Call `listener(message)` for every message posted to `room` from now on; return the
        function that unsubscribes. Listeners must not block: they run in the poster's turn."""
        ...

    def known_last_id(self, room: str) -> int | None:
        """The newest id of `room` this process knows without asking anyone, or None when it cannot say (it
        then reads). A reader registered as a listener may rely on it: whatever is newer reaches its listener."""
        ...


class MemoryBroker:
    """One process, one `ChatCore`; listeners are called synchronously after each post."""

    name = "memory"

    def __init__(self, core: ChatCore) -> None:
        self.core = core
        self._listeners: dict[str, list[Listener]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._listeners.clear()

    async def post(self, room: str, user: str, text: str, sent_at: float | None) -> Message:
        message = self.core.post(room, user, text, sent_at)
        self.publish(message)
        return message

    def publish(self, message: Message) -> None:
        # Copy: a listener may unsubscribe while we iterate.
        for listener in tuple(self._listeners.get(message.room, ())):
            listener(message)

    async def since(self, room: str, after_id: int, limit: int) -> Page:
        return self.core.since(room, after_id, limit)

    def known_last_id(self, room: str) -> int | None:
        return self.core.known_last_id(room)

    async def history(self, room: str, before: int | None, limit: int) -> tuple[Message, ...]:
        return self.core.history(room, before, limit)

    def subscribe(self, room: str, listener: Listener) -> Callable[[], None]:
        listeners = self._listeners.setdefault(room, [])
        listeners.append(listener)

        def unsubscribe() -> None:
            try:
                listeners.remove(listener)
            except ValueError:
                return
            if not listeners and self._listeners.get(room) is listeners:
                del self._listeners[room]

        return unsubscribe


T = TypeVar("T")
SUBSCRIPTION_LINGER_S = 10.0


class RoomListeners(Generic[T]):
    """What a transport keeps per room on this server (its members, its held polls), with one broker
    subscription per room that has any: taken for the first, dropped `linger_s` after the last leaves unless
    another comes meanwhile (long polls leave and come back with every message: without the linger each message
    would cost every room an unsubscribe and a subscribe, with Redis two round trips). Every transport that
    keeps members counts them here, so a room is subscribed once however many members it has.
    """

    def __init__(self, broker: Broker, on_message: Listener, linger_s: float = SUBSCRIPTION_LINGER_S) -> None:
        self._broker = broker
        self._on_message = on_message
        self._linger_s = linger_s
        self._rooms: dict[str, set[T]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._lingering: dict[str, asyncio.TimerHandle] = {}

    def add(self, room: str, item: T) -> None:
        """Add `item` to `room` (subscribing the room when it is its first); do it before reading the room,
        so that nothing posted between the read and the subscription is missed."""
        items = self._rooms.get(room)
        if items is None:
            items = self._rooms[room] = set()
            lingering = self._lingering.pop(room, None)
            if lingering is not None:
                lingering.cancel()  # still subscribed
            else:
                self._unsubscribe[room] = self._broker.subscribe(room, self._on_message)
        items.add(item)

    def discard(self, room: str, item: T) -> bool:
        """Remove `item` from `room` (its subscription dropped a while after its last); False when it was not there."""
        items = self._rooms.get(room)
        if items is None or item not in items:
            return False
        items.discard(item)
        if not items:
            del self._rooms[room]
            try:
                self._lingering[room] = asyncio.get_running_loop().call_later(self._linger_s, self._drop, room)
            except RuntimeError:  # no loop running (closing down): drop it now
                self._drop(room)
        return True

    def _drop(self, room: str) -> None:
        self._lingering.pop(room, None)
        unsubscribe = self._unsubscribe.pop(room, None)
        if unsubscribe is not None:
            unsubscribe()

    def of(self, room: str) -> set[T] | tuple[()]:
        return self._rooms.get(room, ())

    def rooms(self) -> Iterator[set[T]]:
        return iter(tuple(self._rooms.values()))

    def count(self) -> int:
        return sum(len(items) for items in self._rooms.values())
