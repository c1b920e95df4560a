"""Server-Sent Events: `GET /rooms/{room}/events?since=ID` streams the backlog after `since`, then every new
message as one event (`id:` its id, `data:` its JSON); a reconnecting client's Last-Event-ID resumes."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .broker import Broker
from .core import InvalidInput, Message, Unavailable, validate_room
from .http import BROKER, int_param
from .metrics import NULL_TALLY, Tally, tally_of
from .push import Encoded, Prepared, PushHub, PushMember
from .transport import ServerTransport

log = logging.getLogger("rtlab.server")

MAX_ID = 2**53
LAST_EVENT_ID = "Last-Event-ID"
# Events are written as bytes built once per message (see encode), not with EventSourceResponse.send,
# which formats each event again for every stream; the library still does the response: headers, the
# comment heartbeat (its ping task) and TCP_USER_TIMEOUT on the socket. An idle stream gets the event straight
# on its transport, in HTTP/1.1's chunked framing built once too (push.PushMember.write_now); a busy or paused
# one through the library.
SEPARATOR = "\n"  # the spec allows LF, CRLF or CR; LF costs one byte per line less than the library's CRLF


def encode(message: Message) -> Encoded:
    """One message as an event, the same bytes for every stream (and as one HTTP/1.1 chunk, RFC 9112 §7.1), and the
    bytes of the message JSON in it."""
    payload = message.json.encode()
    event = b"id: %d\ndata: %s\n\n" % (message.id, payload)
    return Prepared(event, b"%x\r\n%s\r\n" % (len(event), event)), len(payload)


class Stream(PushMember):
    """One open event stream."""

    __slots__ = ("response", "framing")

    def __init__(self, response: EventSourceResponse, queue_size: int, tally: Tally = NULL_TALLY,
                 transport: asyncio.Transport | None = None) -> None:
        super().__init__(queue_size, tally, transport)
        self.response = response
        # How an event goes on this connection's wire: as a chunk (HTTP/1.1), as it is (HTTP/1.0), or only through
        # the library (a compressed response frames its own).
        # (The Transfer-Encoding header the response went out with says; aiohttp-sse sets `chunked` after prepare
        # whatever the version.)
        chunked = response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        self.framing = None if response.compression else ("chunk" if chunked else "raw")

    async def send(self, data: Prepared) -> None:
        await self.response.write(data.body)

    def wire(self, data: Prepared) -> bytes | None:
        if self.framing is None or not self.response.is_connected():
            return None
        return data.wire if self.framing == "chunk" else data.body

    async def close(self, code: int, reason: str) -> None:
        # An event stream has no close code: the response ends, and the client's EventSource reconnects
        # after `retry` with Last-Event-ID, through the balancer when draining.
        self.response.stop_streaming()


def resume_point(request: web.Request) -> int | None:
    """The id after which to stream: Last-Event-ID (a reconnecting EventSource sends it) wins over since=."""
    since = int_param(request, "since", None, 0, MAX_ID)
    raw = request.headers.get(LAST_EVENT_ID)
    if raw is None:
        return since
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 16 or int(raw) > MAX_ID:
        raise InvalidInput(f"{LAST_EVENT_ID} must be a message id, an integer from 0 to {MAX_ID}")
    return int(raw)


class ServerSentEvents(ServerTransport):
    """`GET /rooms/{room}/events?since=ID` answers text/event-stream; sending is the common POST."""

    def mount(self) -> list[web.AbstractRoute]:
        knob = self.config.knob
        self.heartbeat_s = float(knob("sse_heartbeat_s"))
        self.retry = b"retry: %d\n\n" % int(knob("sse_retry_ms"))
        self.send_queue = int(knob("sse_send_queue"))
        self.max_stream_s = float(knob("sse_max_stream_s"))
        self.page = self.config.limits.page
        self.broker: Broker = self.app[BROKER]
        self.hub = PushHub(self.broker, encode, (0, "event queue overflow"))
        return [self.app.router.add_get("/rooms/{room}/events", self.handle, allow_head=False)]

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        return {"streams_closed": await self.hub.close_all(code, reason)}

    def held(self, room: str) -> int:
        return self.hub.held(room)

    def gauges(self):
        events, deepest = self.hub.queued()
        for kind, name, doc, value in (
            (GaugeMetricFamily, "rtlab_sse_queue_events", "Events waiting in all event-stream queues.", events),
            (GaugeMetricFamily, "rtlab_sse_queue_max_events", "Events waiting in the fullest event-stream queue.",
             deepest),
            (CounterMetricFamily, "rtlab_sse_overflow_closes",
             "Event streams ended because their queue was full (the client resumes with Last-Event-ID).",
             self.hub.overflow_closes),
        ):
            family = kind(name, doc, labels=["transport"])
            family.add_metric([self.name], value)
            yield family

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        room = validate_room(request.match_info["room"])
        since = resume_point(request)  # a bad room or id is a 400 before the stream starts
        if hub.closing is not None:
            raise Unavailable("this instance is shutting down or draining: connect again (through the balancer)")
        response = EventSourceResponse(ping_interval=self.heartbeat_s, sep=SEPARATOR)
        await response.prepare(request)
        await response.write(self.retry)
        stream = Stream(response, self.send_queue, tally_of(request), request.transport)
        hub.join(room, stream)  # before reading the backlog, so nothing posted meanwhile is missed
        hub.start_writer(stream, room, since, self.page, lambda task: _writer_done(stream, task))
        # A stream's age limit: it ends, and the client comes back (through the balancer) after its last id.
        limit = (asyncio.get_running_loop().call_later(self.max_stream_s, response.stop_streaming)
                 if self.max_stream_s else None)
        try:
            await response.wait()  # until the heartbeat finds the peer gone, or close() stops the stream
        finally:
            if limit is not None:
                limit.cancel()
            hub.leave(room, stream)
            stream.stop()
        return response


def _writer_done(stream: Stream, task: asyncio.Task) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if error is not None and not isinstance(error, (ConnectionError, Unavailable)):
        log.error("event stream writer failed: %r", error)
    # The peer went away mid-write, or the broker could not answer the backlog: end the stream; the client
    # reconnects with Last-Event-ID.
    stream.response.stop_streaming()
