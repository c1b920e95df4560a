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
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, StreamReset
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from yarl import URL

from . import certs
from .core import ChatError, InvalidInput, Message, Unavailable, validate_room
from .datagrams import DatagramMeter, MeteredDatagramTransport
from .guard import GUARD
from .http import BROKER, int_param, json_text
from .metrics import METER, NULL_TALLY, Tally
from .push import Encoded, Prepared, PushHub, SendingMember
from .transport import ServerTransport

log = logging.getLogger("rtlab.server")

CLOSE_SESSION_CAPSULE = 0x2843  # CLOSE_WEBTRANSPORT_SESSION: a 32-bit code and a reason, then the CONNECT stream ends
CLOSE_POLICY, CLOSE_OVERFLOW = 1008, 1013  # the WebSocket's codes: flooding; too slow a reader (resume with since=)
STOPPED = 0x10C  # H3_REQUEST_CANCELLED: the stream error code of a stream the server will not read
MAX_MESSAGE_BYTES = 64 * 1024  # a send is a few hundred bytes
# One QUIC packet carries one datagram (1200 bytes at least on any path, less headers and the AEAD tag): a message
# larger than this goes on a stream of its own, so nothing the chat accepts is too big to push.
MAX_DATAGRAM_BYTES = 1100
MAX_QUEUED_DATAGRAMS = 256  # per connection, waiting for the congestion window; beyond, the oldest is dropped
BUFFER_HIGH_BYTES, BUFFER_LOW_BYTES = 64 * 1024, 16 * 1024  # a session's unacknowledged stream bytes
CONNECT_TIMEOUT_S = 10.0  # a QUIC connection with no session this long after its first packet is closed
CLOSE_GRACE_S = 1.0


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


def close_capsule(code: int, reason: str) -> bytes:
    body = code.to_bytes(4, "big") + reason.encode()[:1024]
    return encode_uint_var(CLOSE_SESSION_CAPSULE) + encode_uint_var(len(body)) + body


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
            if len(quic._datagrams_pending) >= MAX_QUEUED_DATAGRAMS:
                quic._datagrams_pending.popleft()  # unreliable: the oldest waiting is the one worth least
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
        streams, known, size = self.streams, self.conn._quic._streams, 0
        while streams and (streams[0] not in known or known[streams[0]].sender.is_finished):
            streams.popleft()  # acknowledged to the end
        for stream_id in streams:
            stream = known.get(stream_id)
            if stream is not None:
                size += len(stream.sender._buffer)
        return size

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


class Connection(QuicConnectionProtocol):
    """One QUIC connection: its datagrams counted in `meter` (under the label of its session's transport once its
    CONNECT is routed), HTTP/3 on it, and at most one WebTransport session."""

    def __init__(self, quic, stream_handler=None, *, endpoint: Endpoint) -> None:
        super().__init__(quic, stream_handler)
        self.endpoint = endpoint
        self.meter = DatagramMeter(endpoint.default_tally)
        self.http: H3Connection | None = None
        self.session: Session | None = None
        self.closed = False
        self.timer = self._loop.call_later(CONNECT_TIMEOUT_S, self._no_session)

    def connection_made(self, transport) -> None:
        super().connection_made(MeteredDatagramTransport(transport, self.meter))

    def datagram_received(self, data, addr) -> None:
        self.meter.datagram_received(len(data))
        self.endpoint.server.routed = True
        super().datagram_received(data, addr)
        if self.session is not None:
            self.session.acked()

    def quic_event_received(self, event) -> None:
        if isinstance(event, ProtocolNegotiated):
            self.http = H3Connection(self._quic, enable_webtransport=True)
        elif isinstance(event, ConnectionTerminated):
            self.terminated()
        elif isinstance(event, StreamReset) and self.session is not None:
            self.session.incoming.pop(event.stream_id, None)
        if self.http is not None:
            for http_event in self.http.handle_event(event):
                self.http_event(http_event)

    def http_event(self, event) -> None:
        session = self.session
        if isinstance(event, WebTransportStreamDataReceived):
            if session is not None and event.session_id == session.session_id:
                session.stream_data(event.stream_id, event.data, event.stream_ended)
        elif isinstance(event, DatagramReceived):
            if session is not None and event.stream_id == session.session_id:
                session.message(event.data)
        elif isinstance(event, HeadersReceived):
            if session is None or event.stream_id != session.session_id:
                self.endpoint.request(self, event.stream_id, event.headers)
        elif isinstance(event, DataReceived) and session is not None and event.stream_id == session.session_id:
            if event.stream_ended:  # the peer ended the session (its capsule, if any, says why)
                self.endpoint.background(self.end(None, ""))

    def answer(self, stream_id: int, status: int, error: str | None = None) -> None:
        """Answer a request on `stream_id` with `status`: a session's 200, or `{"error": ...}` and the end."""
        headers = [(b":status", str(status).encode())]
        if status == 200:
            self.http.send_headers(stream_id, headers + [(b"sec-webtransport-http3-draft", b"draft02")])
        else:
            self.http.send_headers(stream_id, headers + [(b"content-type", b"application/json")])
            self.http.send_data(stream_id, json.dumps({"error": error}).encode(), end_stream=True)
        self.transmit()

    def _no_session(self) -> None:
        self.timer = None
        if self.session is None and not self.closed:
            self.endpoint.connect_timeouts += 1
            self.close(error_code=0x0, reason_phrase="no WebTransport session")

    async def end(self, code: int | None, reason: str) -> None:
        """End the session (telling the peer `code` and `reason` in the close capsule, when it is the server's
        doing), then, a moment later, the connection. Idempotent."""
        session = self.session
        if session is not None and not session.ended:
            session.ended = True
            session.owner.hub.leave(session.room, session)
            session.stop()
            if session.wakeup is not None and not session.wakeup.done():
                session.wakeup.set_result(None)
            if code is not None and not self.closed:
                self.http.send_data(session.session_id, close_capsule(code, reason), end_stream=True)
                self.transmit()
                await asyncio.sleep(CLOSE_GRACE_S)  # for the capsule to arrive before the connection goes
        if not self.closed:
            self.close()

    def terminated(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        session = self.session
        if session is not None and not session.ended:
            session.ended = True
            session.owner.hub.leave(session.room, session)
            session.stop()
        if session is not None:
            session.owner.sessions.discard(session)
        self.meter.settle_fallback()
        self.endpoint.connections.discard(self)


class MeteredQuicServer(QuicServer):
    """aioquic's server socket: each datagram to its connection (whose meter counts it); what reaches none (a
    stray, or a new connection beyond the cap, dropped) counted under the server's default label."""

    def __init__(self, *, endpoint: Endpoint, **kwargs) -> None:
        super().__init__(**kwargs)
        self.endpoint = endpoint
        self.routed = False

    def datagram_received(self, data, addr) -> None:
        self.routed = False
        if len(self.endpoint.connections) >= self.endpoint.max_connections and self._new_connection(data):
            self.endpoint.connections_refused += 1
        else:
            super().datagram_received(data, addr)
        if not self.routed:
            self.endpoint.default_tally.wire_received_bytes += len(data)

    def _new_connection(self, data: bytes) -> bool:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=self._configuration.connection_id_length)
        except ValueError:
            return False
        return header.packet_type == QuicPacketType.INITIAL and header.destination_cid not in self._protocols


class Endpoint:
    """The app's one HTTP/3 endpoint, shared by both WebTransport transports: the UDP socket, the certificate, the
    CONNECTs routed by path to the transport that mounted it."""

    def __init__(self, app: web.Application, config) -> None:
        self.app = app
        self.config = config
        self.owners: dict[str, WebTransport] = {}  # transport name (the path's last segment) -> its transport
        self.certificate: certs.Certificate | None = None
        self.server: MeteredQuicServer | None = None
        self.host = config.host
        self.port = 0
        self.http_port = 0
        self.connections: set[Connection] = set()
        self.connect_timeouts = self.connections_refused = 0
        self.default_tally: Tally = NULL_TALLY
        self.closing = False
        self._tasks: set[asyncio.Task] = set()
        self._pinger: asyncio.TimerHandle | None = None
        app.on_cleanup.append(self._close)

    @property
    def max_connections(self) -> int:
        return sum(owner.max_sessions for owner in self.owners.values()) + 64  # and some still connecting

    async def open(self, host: str, http_port: int) -> None:
        if self.server is not None:
            return
        self.http_port = http_port
        meter = self.app.get(METER)
        self.default_tally = meter.default if meter is not None else NULL_TALLY
        self.certificate = certs.generate(hosts=tuple(dict.fromkeys((host, *certs.DEFAULT_HOSTS))))
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        heartbeat = float(self.config.knob("webtransport_heartbeat_s"))
        configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
                                          idle_timeout=max(3 * heartbeat, 5.0))
        configuration.certificate = x509.load_pem_x509_certificate(self.certificate.cert_pem)
        configuration.private_key = load_pem_private_key(self.certificate.key_pem, None)
        port = int(self.config.knob("webtransport_port")) or http_port
        loop = asyncio.get_running_loop()
        try:
            _, self.server = await loop.create_datagram_endpoint(
                lambda: MeteredQuicServer(endpoint=self, configuration=configuration,
                                          create_protocol=lambda quic, **kw: self._connection(quic, **kw)),
                local_addr=(host, port))
        except OSError as error:
            raise OSError(error.errno, f"WebTransport's UDP port {port}: {error.strerror} (--webtransport-port)") from None
        self.port = self.server._transport.get_extra_info("sockname")[1]
        self._pinger = loop.call_later(heartbeat, self._ping, heartbeat)

    def _connection(self, quic, **kwargs) -> Connection:
        connection = Connection(quic, endpoint=self, **kwargs)
        self.connections.add(connection)
        return connection

    def _ping(self, heartbeat: float) -> None:
        # A listening member may hear nothing for minutes: a PING keeps its connection inside the idle timeout.
        for connection in tuple(self.connections):
            if not connection.closed:
                connection._quic.send_ping(0)
                connection.transmit()
        self._pinger = asyncio.get_running_loop().call_later(heartbeat, self._ping, heartbeat)

    async def _close(self, app: web.Application) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
        if self.server is not None:
            self.server.close()

    def background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def request(self, conn: Connection, stream_id: int, headers) -> None:
        """A request on the QUIC connection: a WebTransport CONNECT becomes a session of the transport its path
        names; anything else is answered with an error."""
        fields = {}
        for key, value in headers:
            if key in fields:
                return conn.answer(stream_id, 400, f"header {key.decode(errors='replace')} given twice")
            fields[key] = value.decode(errors="replace")
        try:
            if fields.get(b":method") != "CONNECT" or fields.get(b":protocol") != "webtransport":
                raise LookupError("this endpoint serves WebTransport sessions only: CONNECT with :protocol "
                                  "webtransport to /rooms/{room}/" + "|".join(self.owners))
            url = URL(fields.get(b":path", "/"))
            parts = url.path.split("/")
            owner = self.owners.get(parts[3]) if len(parts) == 4 and parts[1] == "rooms" else None
            if owner is None:
                raise LookupError(f"no WebTransport session at {url.path[:200]}: CONNECT /rooms/{{room}}/"
                                  + "|".join(self.owners))
            problem = self.app[GUARD].policy.session_problem(fields.get(b":authority", ""), fields.get(b"origin"),
                                                             self.http_port)
            if problem is not None:
                return conn.answer(stream_id, 403, problem)
            owner.open(conn, stream_id, validate_room(parts[2]), url)
        except LookupError as error:
            conn.answer(stream_id, 404, str(error))
        except InvalidInput as error:
            conn.answer(stream_id, 400, str(error))
        except Unavailable as error:
            conn.answer(stream_id, 503, str(error))
        except ChatError as error:
            conn.answer(stream_id, 400, str(error))


ENDPOINT = web.AppKey("webtransport_endpoint", Endpoint)


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
        if ENDPOINT not in self.app:
            self.app[ENDPOINT] = Endpoint(self.app, self.config)
        self.endpoint = self.app[ENDPOINT]
        self.endpoint.owners[self.name] = self
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
        await self.endpoint.open(host, port)

    def open(self, conn: Connection, stream_id: int, room: str, url: URL) -> None:
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
        session = conn.session = Session(conn, self, stream_id, room)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        self.sessions.add(session)
        self.tally.connections_opened += 1
        hub = self.hub
        hub.join(room, session)  # before reading the backlog, so nothing posted meanwhile is missed
        hub.start_writer(session, room, since, self.limits.page, lambda task: hub.writer_done(
            session, task, self.name, lambda error: hub.close_soon(session, 1011 if error else 1000, "writer stopped")))

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        closed = await self.hub.close_all(code, reason)  # also refuses new sessions from now on
        endpoint = self.endpoint
        if all(owner.hub.closing is not None for owner in endpoint.owners.values()):
            for conn in tuple(endpoint.connections):
                if conn.session is None and not conn.closed:
                    conn.close(error_code=0, reason_phrase=reason)
        return {f"{self.knob_prefix}_sessions_closed": closed}

    def page_sources(self) -> tuple[str, ...]:
        return (f"https://{self.endpoint.host}:{self.endpoint.port}",) if self.endpoint.port else ()

    def gauges(self):
        owners = list(self.endpoint.owners.values())
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
