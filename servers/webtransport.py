"""WebTransport over HTTP/3 (aioquic, draft-02), in the aiohttp app's process and event loop, on a UDP port of its
own: `CONNECT /rooms/{room}/webtransport?since=ID` (`:protocol = webtransport`) opens a session whose pushes travel
on QUIC streams; `/rooms/{room}/webtransport-datagram` one whose pushes travel as QUIC datagrams (unreliable,
unordered). Both carry the WebSocket's messages; the same path with GET on the HTTP port tells a page where the
endpoint is and the SHA-256 of its certificate, made at start (ECDSA P-256, at most 14 days: servers.certs). (The
room in that path lets a balancer that routes by room send the page to the instance that serves its room.)"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from yarl import URL

from .core import InvalidInput, Message, Unavailable, validate_room
from .guard import GUARD
from .http import BROKER, int_param, json_text
from .metrics import METER, NULL_TALLY, Tally
from .push import Encoded, Prepared, PushHub, SendingMember
from .quic import Connection, endpoint_of
from .transport import ServerTransport

log = logging.getLogger("rtlab.server")

CLOSE_POLICY, CLOSE_OVERFLOW = 1008, 1013  # the WebSocket's codes: flooding; too slow a reader (resume with since=)
STOPPED = 0x10C  # H3_REQUEST_CANCELLED: the stream error code of a stream the server will not read
MAX_MESSAGE_BYTES = 64 * 1024  # a send is a few hundred bytes
# One QUIC packet carries one datagram (1200 bytes at least on any path, less headers and the AEAD tag): a message
# larger than this goes on a stream of its own, so nothing the chat accepts is too big to push.
MAX_DATAGRAM_BYTES = 1100
MAX_QUEUED_DATAGRAMS = 256  # per connection, waiting for the congestion window; beyond, the oldest is dropped
BUFFER_HIGH_BYTES, BUFFER_LOW_BYTES = 64 * 1024, 16 * 1024  # a session's unacknowledged stream bytes


_NEW = object()


def message_bytes(message: Message) -> bytes:
    # {"type":"message", ...message}, as on a WebSocket, one per line on a stream.
    return ('{"type":"message",' + message.json[1:]).encode()


def encode_line(message: Message) -> Encoded:
    data = message_bytes(message) + b"\n"
    return Prepared(data, data), message.json_bytes


def encode_datagram(message: Message) -> Encoded:
    data = message_bytes(message)
    return Prepared(data, data), message.json_bytes


class Session(SendingMember):
    """One WebTransport session, and its own wire for servers.push (`write` puts a message on a stream or in a
    datagram; the buffer is its streams' bytes not yet acknowledged). Its messages in: one per line on any stream
    it opens, or one per datagram."""

    __slots__ = ("conn", "owner", "session_id", "push_stream", "streams", "incoming", "wakeup", "ended")

    def __init__(self, conn: Connection, owner: WebTransport, session_id: int, room: str) -> None:
        super().__init__(owner.send_queue, owner.tally, self, owner.broker, room)
        self.conn = conn
        self.owner = owner
        self.session_id = session_id
        self.push_stream: int | None = None  # the one stream of pushes (streams = "one")
        self.streams: deque[int] = deque()  # our streams whose bytes may still be unacknowledged
        self.incoming: dict[int, bytearray | None] = {}  # the peer's open streams (None: refused, ignored)
        self.wakeup: asyncio.Future | None = None
        self.ended = False

    # ---- its wire (servers.push writes straight through while under the high-water mark)
    def write(self, data: bytes) -> None:
        conn, quic = self.conn, self.conn._quic
        if self.owner.datagrams and len(data) <= MAX_DATAGRAM_BYTES:
            if conn.datagrams_waiting() >= MAX_QUEUED_DATAGRAMS:
                conn.drop_oldest_datagram()  # unreliable: the oldest waiting is the one worth least
                self.owner.datagrams_dropped += 1
            conn.http.send_datagram(self.session_id, data)
        elif self.owner.stream_per_message or self.owner.datagrams:
            stream_id = conn.http.create_webtransport_stream(self.session_id, is_unidirectional=True)
            quic.send_stream_data(stream_id, data, end_stream=True)
            self.streams.append(stream_id)
        else:
            if self.push_stream is None:
                self.push_stream = conn.http.create_webtransport_stream(self.session_id, is_unidirectional=True)
                self.streams.append(self.push_stream)
            quic.send_stream_data(self.push_stream, data)
        conn._transmit_soon()

    def is_closing(self) -> bool:
        return self.ended

    def get_write_buffer_size(self) -> int:
        return self.conn.unacked_bytes(self.streams)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return BUFFER_LOW_BYTES, BUFFER_HIGH_BYTES

    # ---- servers.push.PushMember
    def wire(self, data: Prepared) -> bytes | None:
        return data.wire

    async def send(self, data: Prepared) -> None:
        while not self.ended and self.get_write_buffer_size() > BUFFER_HIGH_BYTES:
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup  # woken as acknowledgements arrive (Connection.datagram_received)
        if self.ended:
            raise ConnectionResetError("the WebTransport session closed")
        self.write(data.wire)

    def acked(self) -> None:
        if self.wakeup is not None and not self.wakeup.done() and self.get_write_buffer_size() <= BUFFER_LOW_BYTES:
            self.wakeup.set_result(None)

    async def close(self, code: int, reason: str) -> None:
        await self.conn.end(code, reason)

    # ---- servers.quic.Session
    def finish(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.owner.hub.leave(self.room, self)
        self.stop()
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    def forget(self) -> None:
        if self in self.owner.sessions:
            self.owner.sessions.discard(self)
            self.owner.tally.connections_open -= 1

    def stream_reset(self, stream_id: int) -> None:
        self.incoming.pop(stream_id, None)

    def datagram(self, data: bytes) -> None:
        self.message(data)

    def refuse(self, error: str) -> None:
        data = json.dumps({"type": "error", "error": error}).encode() + (b"" if self.owner.datagrams else b"\n")
        self.offer((0, Prepared(data, data), 0))

    def dropped(self) -> None:
        self.owner.hub.close_soon(self, 1011, "internal error")

    # ---- what the peer sends
    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None:
        incoming = self.incoming
        buffer = incoming.get(stream_id, _NEW)
        if buffer is _NEW:
            if len(incoming) >= self.owner.max_streams:
                self._stop(stream_id, f"more than {self.owner.max_streams} streams open at once in this session")
                return
            buffer = incoming[stream_id] = bytearray()
        if buffer is not None:
            buffer += data
            while buffer is not None and (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self.message(line)
            if len(buffer) > MAX_MESSAGE_BYTES:
                self._stop(stream_id, f"message over {MAX_MESSAGE_BYTES} bytes")
                return
        if ended:
            if buffer:
                self.message(bytes(buffer))
            incoming.pop(stream_id, None)

    def _stop(self, stream_id: int, error: str) -> None:
        self.incoming[stream_id] = None
        try:
            self.conn._quic.stop_stream(stream_id, STOPPED)
        except ValueError:  # not a stream the peer can send on (ours), or gone
            pass
        self.refuse(error)

    def message(self, data: bytes) -> None:
        if self.closing:
            return
        if not data.strip():
            return  # an empty line is no message
        try:
            text = data.decode()
        except UnicodeDecodeError:
            self.refuse("message is not UTF-8 text")
            return
        if not self.receive(text, self.owner.limits, self.owner.limiter):  # kept on past its limit: cut off
            self.owner.hub.close_soon(self, CLOSE_POLICY, "sending too fast")


class Router:
    """Both transports' CONNECT handler (`:protocol webtransport`): the path's last segment names the transport."""

    def __init__(self, app: web.Application, host: str) -> None:
        self.owners: dict[str, WebTransport] = {}  # transport name -> its transport
        self.endpoint = endpoint_of(app, host)
        self.endpoint.handlers["webtransport"] = self.open

    def open(self, conn: Connection, stream_id: int, fields: dict[bytes, str]) -> Session:
        url = URL(fields.get(b":path", "/"))
        parts = url.path.split("/")
        owner = self.owners.get(parts[3]) if len(parts) == 4 and parts[1] == "rooms" else None
        if owner is None:
            raise LookupError(f"no WebTransport session at {url.path[:200]}: CONNECT /rooms/{{room}}/"
                              + "|".join(self.owners))
        return owner.open(conn, stream_id, validate_room(parts[2]), url)


ROUTER = web.AppKey("webtransport_router", Router)


class _Query:  # what servers.http's parameter helpers and the demo's client ledger read of a request
    __slots__ = ("query",)

    def __init__(self, url: URL) -> None:
        self.query = url.query


class WebTransport(ServerTransport):
    """The sessions whose pushes travel on QUIC streams: reliable, each stream in order, and (one stream per
    message by default) a lost packet delays only the message it carried."""

    datagrams = False
    knob_prefix = "webtransport"

    def mount(self) -> list[web.AbstractRoute]:
        knob = lambda name: self.config.knob(f"{self.knob_prefix}_{name}")  # noqa: E731
        self.max_sessions = int(knob("max_sessions"))
        self.max_streams = int(knob("max_streams"))
        self.send_queue = int(knob("send_queue"))
        self.stream_per_message = self.config.knob("webtransport_streams") == "per-message"
        self.limits = self.config.limits
        self.broker = self.app[BROKER]
        self.limiter = self.app[GUARD].limiter
        self.hub = PushHub(self.broker, encode_datagram if self.datagrams else encode_line,
                           (CLOSE_OVERFLOW, "send queue overflow; reconnect with since="))
        self.sessions: set[Session] = set()
        self.refused = self.datagrams_dropped = 0
        self.tally: Tally = NULL_TALLY
        if ROUTER not in self.app:
            self.app[ROUTER] = Router(self.app, self.config.host)
        self.router = self.app[ROUTER]
        self.router.owners[self.name] = self
        self.endpoint = self.router.endpoint
        self.endpoint.session_caps[self.name] = self.max_sessions
        self.app.on_startup.append(self._find_tally)
        return [self.app.router.add_get(f"/rooms/{{room}}/{self.name}", self.handle_info, allow_head=False)]

    async def handle_info(self, request: web.Request) -> web.Response:
        """Where to CONNECT for a session in this room, and the certificate's SHA-256 (a page's
        serverCertificateHashes)."""
        room = validate_room(request.match_info["room"])
        endpoint = self.endpoint
        if endpoint.certificate is None:
            raise Unavailable("the WebTransport endpoint is not open yet")
        certificate = endpoint.certificate
        return json_text(200, json.dumps({
            "url": f"https://{endpoint.host}:{endpoint.port}/rooms/{room}/{self.name}", "port": endpoint.port,
            "certificate": {"sha256": certificate.sha256_b64, "sha256_hex": certificate.sha256_hex,
                            "not_after": certificate.not_after.isoformat()}}))

    async def _find_tally(self, app: web.Application) -> None:
        meter = app.get(METER)
        self.tally = meter.tallies.get(self.name, meter.default) if meter is not None else NULL_TALLY

    async def listening(self, host: str, port: int) -> None:
        await self.endpoint.open(port, int(self.config.knob("webtransport_port")),
                                 float(self.config.knob("webtransport_heartbeat_s")))

    def open(self, conn: Connection, stream_id: int, room: str, url: URL) -> Session:
        query = _Query(url)
        since = int_param(query, "since", None, 0, 2**53)  # type: ignore[arg-type]
        if self.hub.closing is not None:
            raise Unavailable("this instance is shutting down or draining: connect again (through the balancer)")
        if conn.session is not None:
            raise InvalidInput("this connection has its WebTransport session already: one session per connection")
        if len(self.sessions) >= self.max_sessions:
            self.refused += 1
            raise Unavailable(f"this server holds its most {self.name} sessions ({self.max_sessions}); try later")
        meter = self.app.get(METER)
        conn.meter.settle(self.tally, meter.client_of(query) if meter is not None and meter.client_of else None)
        conn.answer(stream_id, 200)
        session = Session(conn, self, stream_id, room)
        self.sessions.add(session)
        self.tally.connections_opened += 1
        self.tally.connections_open += 1
        hub = self.hub
        hub.join(room, session)  # before reading the backlog, so nothing posted meanwhile is missed
        hub.start_writer(session, room, since, self.limits.page, lambda task: hub.writer_done(
            session, task, self.name, lambda error: hub.close_soon(session, 1011 if error else 1000, "writer stopped")))
        return session

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        closed = await self.hub.close_all(code, reason)  # also refuses new sessions from now on
        endpoint = self.endpoint
        if all(owner.hub.closing is not None for owner in self.router.owners.values()):
            for conn in tuple(endpoint.connections):
                if conn.session is None and not conn.closed:
                    conn.close(error_code=0, reason_phrase=reason)
        return {f"{self.knob_prefix}_sessions_closed": closed}

    def page_sources(self) -> tuple[str, ...]:
        return (f"https://{self.endpoint.host}:{self.endpoint.port}",) if self.endpoint.port else ()

    def gauges(self):
        owners = list(self.router.owners.values())
        if owners[0] is not self:  # both share the families (by their transport label): the first reports both
            return
        rows = []
        for t in owners:
            queued, deepest = t.hub.queued()
            rows.append((t.name, len(t.sessions), queued, deepest, t.hub.overflow_closes, t.refused,
                         t.datagrams_dropped))
        for column, (kind, name, doc) in enumerate((
            (GaugeMetricFamily, "rtlab_webtransport_sessions", "WebTransport sessions open."),
            (GaugeMetricFamily, "rtlab_webtransport_send_queue_messages", "Messages waiting in all session queues."),
            (GaugeMetricFamily, "rtlab_webtransport_send_queue_max_messages",
             "Messages waiting in the fullest session queue."),
            (CounterMetricFamily, "rtlab_webtransport_overflow_closes", "Sessions closed (1013): send queue full."),
            (CounterMetricFamily, "rtlab_webtransport_sessions_refused", "CONNECTs answered 503 at the cap."),
            (CounterMetricFamily, "rtlab_webtransport_datagrams_dropped",
             "Push datagrams dropped unsent: the connection's queue was full (the congestion window)."),
        ), start=1):
            family = kind(name, doc, labels=["transport"])
            for row in rows:
                family.add_metric([row[0]], row[column])
            yield family


class DatagramWebTransport(WebTransport):
    """The sessions whose pushes travel as QUIC datagrams: never retransmitted, in no order; a lost packet's
    message stays lost, and the receiver sees a gap in the ids. (A message too large for one datagram goes on a
    stream of its own.)"""

    datagrams = True
    knob_prefix = "webtransport_datagram"
