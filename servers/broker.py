"""The broker interface every transport talks to, and its in-memory implementation over the chat core."""

from __future__ import annotations

from typing import Callable, Protocol

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
