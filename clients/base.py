"""The surface every transport client shares: join a room after an id, send, hand each message to a callback, close.

Clients know nothing about Locust. They report each operation to a `Report` callback, which
Locust users turn into request events and scripts may simply collect. They are synchronous and
run under gevent (call `gevent.monkey.patch_all()` first; Locust does): a client receives in a
greenlet of its own while its owner sends.
"""

from __future__ import annotations

import random
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol
from urllib.parse import urlsplit

import gevent
import gevent.monkey
import orjson
from geventhttpclient import HTTPClient

from .completeness import ResumePoint
from .http import MemberHttp, member_http

Message = dict[str, Any]  # as the server sends it: id, room, user, text, sent_at, ts
OnMessage = Callable[[Message, float], None]  # (message, received_at in unix seconds)


class Report(Protocol):
    """Called once per operation; `response_time_ms` is how long it took, `exception` why it failed."""

    def __call__(
        self,
        request_type: str,
        name: str,
        response_time_ms: float,
        response_length: int,
        exception: BaseException | None = None,
    ) -> None: ...


def ignore_report(
    request_type: str, name: str, response_time_ms: float, response_length: int, exception: BaseException | None = None
) -> None:
    return None


class ClientError(Exception):
    """The server answered, but not as the contract says (status, body, frame)."""


class JsonHttp:
    """One keep-alive HTTP/1.1 connection (geventhttpclient), as a browser holds per concurrent request."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self._client = HTTPClient(
            host, port, connection_timeout=timeout_s, network_timeout=timeout_s, concurrency=1
        )
        # geventhttpclient checks an idle keep-alive socket with select(), which refuses descriptors from
        # 1024 up: past a few hundred members every request then opened a new connection (and resolved the
        # host in a thread), a cost the server paid too. Check with a non-blocking peek instead.
        self._client._connection_pool._is_socket_alive = idle_socket_alive

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        """Send one request and read the whole answer; return (status, body)."""
        headers = {"Content-Type": content_type} if body is not None else None
        response = self._client.request(method, path, body=body, headers=headers)
        try:
            return response.status_code, bytes(response.read())
        finally:
            response.release()

    @staticmethod
    def decode(body: bytes) -> Any:
        try:
            return orjson.loads(body)
        except ValueError:
            raise ClientError(f"answer is not JSON: {body[:200]!r}") from None

    def close(self) -> None:
        self._client.close()


def idle_socket_alive(sock) -> bool:
    """Whether an idle keep-alive socket can carry the next request: open, with nothing (no FIN) to read."""
    if sock is None or sock.fileno() < 0:
        return False
    try:
        # The plain socket under gevent's (which would wait for a byte): EOF or stray bytes mean unusable.
        getattr(sock, "_sock", sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return False
    except BlockingIOError:
        return True  # nothing to read: alive and clean
    except OSError:
        return False


class Backoff:
    """Bound a retry loop: jittered exponential sleeps, at most `attempts` consecutive failures and `budget_s`
    seconds of failing.

    The jitter (each sleep drawn between half and all of the exponential step) spreads the members a
    drained or crashed server drops, so they do not all come back in the same millisecond.
    """

    def __init__(
        self,
        attempts: int = 12,
        first_s: float = 0.05,
        max_s: float = 2.0,
        budget_s: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.attempts = attempts
        self.first_s = first_s
        self.max_s = max_s
        self.budget_s = budget_s
        self.failures = 0
        self.failing_since: float | None = None  # perf_counter() of the first failure of this streak
        self._rng = rng or random.Random()

    def reset(self) -> None:
        """Forget every failure: the connection delivered again."""
        self.failures = 0
        self.failing_since = None

    def recovered(self) -> None:
        """A reconnect succeeded: restart the time budget, but keep counting failures until data flows, so a
        server that accepts and drops at once is still given up on."""
        self.failing_since = None

    def retry(self) -> bool:
        """Count a failure; sleep and return True when another attempt is allowed, else False."""
        delay = self.next_delay()
        if delay is None:
            return False
        gevent.sleep(delay)
        return True

    def next_delay(self) -> float | None:
        """Count a failure; return how long to sleep before the next attempt, or None when none is allowed (for
        a caller that sleeps its own way: an asyncio one)."""
        now = time.perf_counter()
        if self.failing_since is None:
            self.failing_since = now
        self.failures += 1
        if self.failures >= self.attempts or now - self.failing_since >= self.budget_s:
            return None
        step = min(self.first_s * 2 ** (self.failures - 1), self.max_s)
        return step * self._rng.uniform(0.5, 1.0)


class ChatClient(ABC):
    """One chat member's connection(s) to one server, for one transport.

    Use: `latest_id(room)` (optional), `join(room, since)`, then `send(...)` as often as wanted,
    and finally `close()`. Every message received after `since` is passed to `on_message` with the
    time it arrived, from the client's receiving greenlet: the callback must not block.
    """

    transport: ClassVar[str]
    # True where losing a message is the transport's contract (an unreliable data channel): a missing id is
    # counted (completeness, delivered_ratio), not reported as a Locust failure one by one.
    expects_loss: ClassVar[bool] = False

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        timeout_s: float = 10.0,
    ) -> None:
        if not gevent.monkey.is_module_patched("socket"):
            raise RuntimeError("rtlab clients run under gevent: call gevent.monkey.patch_all() first (Locust does)")
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must look like http://127.0.0.1:8080 (or https://), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        # The member's HTTP (clients/http.py): HTTP/1.1 or HTTP/2, cleartext or TLS, as the run asks; every request,
        # stream and WebSocket of this member goes through it.
        self.http: MemberHttp = member_http(base_url, timeout_s)
        self.on_message = on_message
        self.report = report
        self.timeout_s = timeout_s
        self.room: str | None = None
        self.last_id = 0  # newest id handed to on_message (or the join point)
        # Called with a send's sent_at once the server accepted it (201, or the WebSocket echo); optional.
        self.on_send_accepted: Callable[[float], None] | None = None
        self.closed = False
        self._receiver: gevent.Greenlet | None = None

    @classmethod
    def options(cls, profile) -> dict:
        """Return the constructor keywords this transport takes from a load profile (clients.profile.Profile)."""
        return {}

    def latest_id(self, room: str) -> int:
        """Return the id of the newest message in `room` (0 when empty), read from the history endpoint."""
        http = self.http.requester(self.timeout_s)
        try:
            started = time.perf_counter()
            try:
                status, body = http.request("GET", f"/rooms/{room}/history?limit=1")
                if status != 200:
                    raise ClientError(f"history answered {status}: {body[:200]!r}")
                messages = JsonHttp.decode(body)["messages"]
            except Exception as error:
                self.report("HISTORY", self.transport, ms_since(started), 0, error)
                raise
            self.report("HISTORY", self.transport, ms_since(started), len(body))
            return messages[-1]["id"] if messages else 0
        finally:
            http.close()

    def join(self, room: str, since: int | ResumePoint) -> None:
        """Start receiving every message of `room` after id `since`, or after what another client of this transport
        received (its `resume_point()`: a member rejoining on a new connection); return once the client is listening."""
        if self.room is not None:
            raise RuntimeError("this client has joined a room already")
        self.room = room
        self._start_from(since if isinstance(since, ResumePoint) else ResumePoint(since))
        self._connect()
        self._receiver = gevent.spawn(self._receive)

    def _start_from(self, point: ResumePoint) -> None:
        """Take the join point before the first connect (a transport keeping more than the newest id overrides)."""
        self.last_id = point.since

    def resume_point(self) -> ResumePoint:
        """What this client received, for a new client of the same transport to carry on from (ChatMember.rejoin:
        `new.join(room, old.resume_point())`): the point its own reconnect would resume after. Here the newest id
        handed over: messages arrive in id order, or a gap is a loss the transport accepts (expects_loss)."""
        return ResumePoint(self.last_id)

    @abstractmethod
    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        """Post one message to the joined room; `sent_at` defaults to now.

        The SEND latency reported is measured from `sent_at`, so pass the time the send was *due*:
        a sender that fell behind then cannot hide the delay that made it late.
        """

    def close(self) -> None:
        """Stop receiving and release every connection; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        if self._receiver is not None:
            self._receiver.kill(block=True, timeout=self.timeout_s)
        self._disconnect()
        self.http.close()

    def deliver(self, message: Message, received_at: float) -> None:
        """Hand one received message to the owner and remember the newest id (the resume point)."""
        message_id = message.get("id")
        if isinstance(message_id, int) and message_id > self.last_id:
            self.last_id = message_id
        self.on_message(message, received_at)

    def _accept_echo(self, pending: dict, frame: Message, received_at: float, length: int) -> None:
        """When `frame` echoes a send of ours still in `pending` (keyed by (user, sent_at)), report that SEND,
        timed from its sent_at, and tell `on_send_accepted` (clients whose sends come back on their own stream)."""
        if not pending:
            return
        key = (frame.get("user"), frame.get("sent_at"))
        if key in pending:
            del pending[key]
            self.report("SEND", self.transport, (received_at - key[1]) * 1000, length)
            if self.on_send_accepted is not None:
                self.on_send_accepted(key[1])

    def _connect(self) -> None:
        """Open what join needs before the receiver starts (a WebSocket); nothing by default."""

    def _reconnect_with(self, backoff: Backoff, started: float) -> bool:
        """Call `_connect` (since= the last id seen: the server resends what was missed) until it succeeds or
        `backoff` gives up; report RECONNECT, timed from `started` (perf_counter) to the connection being open."""
        while backoff.retry():
            if self.closed:
                return False
            try:
                self._connect()
            except Exception:
                continue  # reported by _connect
            backoff.recovered()
            self.report("RECONNECT", self.transport, ms_since(started), 0)
            return True
        self.report(
            "RECONNECT", self.transport, ms_since(started), 0, ClientError(f"gave up after {backoff.failures} attempts")
        )
        return False

    @abstractmethod
    def _receive(self) -> None:
        """Receive until closed, calling `deliver` for each message; bounded by Backoff on errors."""

    @abstractmethod
    def _disconnect(self) -> None: ...


class PostSender:
    """Sends with `POST /rooms/{room}/messages` on a keep-alive connection of its own, as a page's fetch
    does; for the transports whose server pushes one way only (polling, event streams). Mix in before
    ChatClient."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._send_http = self.http.requester(self.timeout_s)

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        if self.room is None:
            raise RuntimeError("join a room before sending")
        if sent_at is None:
            sent_at = time.time()
        body = orjson.dumps({"user": user, "text": text, "sent_at": sent_at})
        try:
            status, answer = self._send_http.request("POST", f"/rooms/{self.room}/messages", body)
            if status != 201:
                raise ClientError(f"send answered {status}: {answer[:200]!r}")
        except Exception as error:
            self.report("SEND", self.transport, (time.time() - sent_at) * 1000, 0, error)
            return
        self.report("SEND", self.transport, (time.time() - sent_at) * 1000, len(answer))
        if self.on_send_accepted is not None:
            self.on_send_accepted(sent_at)

    def close_sender(self) -> None:
        self._send_http.close()


def ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
