"""The chat core: rooms, per-room contiguous message ids, bounded history, validation; no I/O."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import orjson

from .settings import setting

ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


class ChatError(Exception):
    """A request the core refuses; each transport maps the subclass to its wire form in one place."""


class InvalidInput(ChatError):
    """A name, field or parameter that is malformed or out of range."""


class TooLarge(ChatError):
    """An input longer than its limit."""


class Unavailable(ChatError):
    """The server is at a capacity limit (e.g. the number of rooms)."""


class RateLimited(ChatError):
    """A member sends faster than its limit; it may send again after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Limits:
    """The core's bounds, read once at the edge and passed down."""

    history: int = field(default=10_000, metadata=setting("messages kept per room", low=1, high=10_000_000))
    text_chars: int = field(default=4096, metadata=setting("longest message text, characters (413)", low=1,
                                                           high=1_000_000, flag="--max-text-chars"))
    rooms: int = field(default=10_000, metadata=setting("rooms kept at once (503 beyond)", low=1, high=10_000_000,
                                                        flag="--max-rooms"))
    page: int = 1000  # the most messages one read may return


@dataclass(frozen=True, slots=True)
class Message:
    id: int  # per room, contiguous from 1
    room: str
    user: str
    text: str
    sent_at: float | None  # the sender's clock, echoed untouched
    ts: float  # server receive time, unix seconds
    json: str = field(default="", compare=False, repr=False)  # encoded once, sent by every transport
    json_bytes: int = field(default=0, init=False, compare=False, repr=False)  # len(json) in UTF-8: payload counters

    def __post_init__(self) -> None:
        object.__setattr__(self, "json_bytes", len(self.json.encode()))

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "room": self.room,
            "user": self.user,
            "text": self.text,
            "sent_at": self.sent_at,
            "ts": self.ts,
        }


def fields_json(room: str, user: str, text: str, sent_at: float | None, ts: float) -> str:
    """A message's JSON without its id (the id comes first: with_id adds it; the Redis broker's script does the
    same in Redis, where the id is allocated)."""
    # orjson: compact, UTF-8 as is (json.dumps's ensure_ascii=False), a tenth of its time; the same text but for
    # the exponent of a float under 1e-4 (1e-08 reads 1e-8), valid JSON both.
    return orjson.dumps({"room": room, "user": user, "text": text, "sent_at": sent_at, "ts": ts}).decode()


def with_id(message_id: int, fields: str) -> str:
    """The message's one JSON encoding: `{"id":N,` spliced in front of fields_json's."""
    return f'{{"id":{message_id},{fields[1:]}'


def new_message(message_id: int, room: str, user: str, text: str, sent_at: float | None, ts: float) -> Message:
    """A message carrying its JSON encoding, made once, so fan-out never encodes it again."""
    return Message(message_id, room, user, text, sent_at, ts, with_id(message_id, fields_json(room, user, text, sent_at, ts)))


def encode_message(message: Message) -> Message:
    """Return `message` carrying its JSON encoding."""
    return new_message(message.id, message.room, message.user, message.text, message.sent_at, message.ts)


class Page(NamedTuple):
    """Messages after an id: at most `limit` of them, the room's newest id, and whether some were dropped.
    (A named tuple: made for every poll, and a frozen dataclass costs several times as much to make.)"""

    messages: tuple[Message, ...]
    last_id: int
    truncated: bool


def validate_room(room: object) -> str:
    if not isinstance(room, str) or not ROOM_RE.fullmatch(room):
        raise InvalidInput("room must match ^[A-Za-z0-9_-]{1,64}$")
    return room


def validate_user(user: object) -> str:
    if not isinstance(user, str) or not USER_RE.fullmatch(user):
        raise InvalidInput("user must match ^[A-Za-z0-9_.-]{1,32}$")
    return user


def validate_text(text: object, max_chars: int) -> str:
    if not isinstance(text, str):
        raise InvalidInput("text must be a string")
    if not text:
        raise InvalidInput("text must not be empty")
    if len(text) > max_chars:
        raise TooLarge(f"text must be at most {max_chars} characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON) cannot be stored or sent back
        raise InvalidInput("text must be valid Unicode (no lone surrogates)") from None
    return text


def validate_sent_at(sent_at: object) -> float | None:
    if sent_at is None:
        return None
    # bool is an int in Python; a sender's clock is never true or false.
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)) or not math.isfinite(sent_at):
        raise InvalidInput("sent_at must be a finite number (unix seconds) or null")
    if sent_at < 0:
        raise InvalidInput("sent_at must not be negative")
    return sent_at


def check_message(room: object, user: object, text: object, sent_at: object,
                  limits: Limits) -> tuple[str, str, str, float | None]:
    """Validate a message to store, as every broker must: return (room, user, text, sent_at)."""
    return (validate_room(room), validate_user(user), validate_text(text, limits.text_chars),
            validate_sent_at(sent_at))


def check_id(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")
    return value


def check_limit(limit: object, page: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= page:
        raise InvalidInput(f"limit must be an integer from 1 to {page}")
    return limit


def parse_post(body: object, max_chars: int) -> tuple[str, str, float | None]:
    """Validate a decoded send request `{"user", "text", "sent_at"?}`; return (user, text, sent_at)."""
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    unknown = sorted(set(body) - {"user", "text", "sent_at"})
    if unknown:
        raise InvalidInput(f"unknown field: {unknown[0]}")
    if "user" not in body:
        raise InvalidInput("missing field: user")
    if "text" not in body:
        raise InvalidInput("missing field: text")
    return (
        validate_user(body["user"]),
        validate_text(body["text"], max_chars),
        validate_sent_at(body.get("sent_at")),
    )


def parse_send(data: str | bytes, max_chars: int, what: str = "message") -> tuple[str, str, float | None]:
    """(user, text, sent_at) of a `{"type": "send", "user", "text", "sent_at"?}` message, as a WebSocket frame, a
    data channel's message or a QUIC stream or datagram carries it; raise InvalidInput otherwise (`what`
    names the carrier in the error)."""
    if not isinstance(data, str):
        raise InvalidInput(f"binary {what}s are not accepted: send JSON text")
    try:
        body = json.loads(data)
    except ValueError:
        raise InvalidInput(f"{what} is not valid JSON") from None
    except RecursionError:
        raise InvalidInput(f"{what} is nested too deeply") from None
    if not isinstance(body, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    if body.pop("type", None) != "send":
        raise InvalidInput('type must be "send"')
    return parse_post(body, max_chars)


class _Room:
    """One room's history: a list trimmed in chunks, of which only the newest `keep` are visible."""

    __slots__ = ("messages", "first_id", "last_id")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.first_id = 1  # id of messages[0]
        self.last_id = 0

    def append(self, message: Message, keep: int) -> None:
        self.messages.append(message)
        self.last_id = message.id
        # Trim a quarter at a time so an append stays amortised O(1) once the room is full.
        if len(self.messages) > keep + keep // 4:
            drop = len(self.messages) - keep
            del self.messages[:drop]
            self.first_id += drop

    def first_visible(self, keep: int) -> int:
        return max(self.first_id, self.last_id - keep + 1)

    def slice(self, start_id: int, stop_id: int) -> tuple[Message, ...]:
        """Messages with start_id <= id < stop_id (both within the visible window)."""
        return tuple(self.messages[start_id - self.first_id : stop_id - self.first_id])


class ChatCore:
    """Rooms created on first post; messages numbered from 1 per room; history bounded per room."""

    def __init__(self, limits: Limits = Limits(), clock: Callable[[], float] = time.time) -> None:
        self.limits = limits
        self._clock = clock
        self._rooms: dict[str, _Room] = {}

    @property
    def room_count(self) -> int:
        return len(self._rooms)

    def post(self, room: str, user: str, text: str, sent_at: float | None = None) -> Message:
        """Validate and store a message; return it with its id and the server's receive time."""
        room, user, text, sent_at = check_message(room, user, text, sent_at, self.limits)
        state = self._rooms.get(room)
        if state is None:
            if len(self._rooms) >= self.limits.rooms:
                raise Unavailable(f"room limit reached ({self.limits.rooms} rooms)")
            state = self._rooms[room] = _Room()
        message = new_message(state.last_id + 1, room, user, text, sent_at, self._clock())
        state.append(message, self.limits.history)
        return message

    def last_id(self, room: str) -> int:
        validate_room(room)
        state = self._rooms.get(room)
        return state.last_id if state else 0

    def known_last_id(self, room: str) -> int:
        """`last_id` for a room name already validated (a hot path: a held poll asks it before reading)."""
        state = self._rooms.get(room)
        return state.last_id if state else 0

    def since(self, room: str, after_id: int, limit: int) -> Page:
        """Return at most `limit` messages with id > after_id, oldest first.

        `truncated` is true when messages after `after_id` were already dropped from history: the
        caller has missed them for good and should say so.
        """
        validate_room(room)
        check_id("since", after_id)
        check_limit(limit, self.limits.page)
        state = self._rooms.get(room)
        if state is None or after_id >= state.last_id:
            return Page((), state.last_id if state else 0, False)
        first = state.first_visible(self.limits.history)
        start = max(after_id + 1, first)
        return Page(state.slice(start, min(start + limit, state.last_id + 1)), state.last_id, after_id + 1 < first)

    def history(self, room: str, before: int | None, limit: int) -> tuple[Message, ...]:
        """Return the newest `limit` messages with id < before (default: all), oldest first."""
        validate_room(room)
        if before is not None:
            check_id("before", before)
        check_limit(limit, self.limits.page)
        state = self._rooms.get(room)
        if state is None:
            return ()
        stop = state.last_id + 1 if before is None else min(before, state.last_id + 1)
        start = max(stop - limit, state.first_visible(self.limits.history))
        if start >= stop:
            return ()
        return state.slice(start, stop)
