"""An HTTP/3 endpoint (aioquic) in the aiohttp app's own process and event loop, on a UDP port of its own: the socket,
a certificate made at start (servers.certs), one metered protocol per QUIC connection, and each extended CONNECT
handed to the handler its `:protocol` names (aioquic's examples/http3_server.py is the shape). A transport that
serves sessions over HTTP/3 registers its handler; the endpoint knows no transport.

Every datagram of a connection is counted at the socket into that connection's servers.datagrams.DatagramMeter:
the QUIC handshake, acknowledgements, retransmissions and pings included. Its session's handler names the label
(`meter.settle(tally)`); until then the bytes wait. A datagram that reaches no connection (a stray, a new
connection beyond the cap) is counted under the server's default label.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import QuicServer
from aioquic.buffer import Buffer, encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, ProtocolNegotiated, StreamReset
from aioquic.quic.packet import QuicPacketType, pull_quic_header

from . import certs
from .core import ChatError, InvalidInput, Unavailable
from .datagrams import DatagramMeter, MeteredDatagramTransport
from .guard import GUARD
from .metrics import METER, NULL_TALLY, Tally

CLOSE_SESSION_CAPSULE = 0x2843  # CLOSE_WEBTRANSPORT_SESSION: a 32-bit code and a reason, then the CONNECT stream ends
CONNECT_TIMEOUT_S = 10.0  # a QUIC connection with no session this long after its first packet is closed
CLOSE_GRACE_S = 1.0  # between a session's close capsule and its connection's close
SPARE_CONNECTIONS = 64  # connections beyond the sessions' caps, for those still handshaking


class Session(Protocol):
    """What a handler's session is to its connection."""

    session_id: int  # the CONNECT's stream
    ended: bool  # finish() has run

    def stream_data(self, stream_id: int, data: bytes, ended: bool) -> None: ...  # on a stream the peer opened

    def datagram(self, data: bytes) -> None: ...

    def stream_reset(self, stream_id: int) -> None: ...

    def acked(self) -> None: ...  # acknowledgements arrived: room in its streams' buffers, maybe

    def finish(self) -> None: ...  # the session ends: leave the room, stop writing (idempotent)

    def forget(self) -> None: ...  # its connection is gone


# (connection, CONNECT stream, headers by name) -> the session, opened (answered 200); or raise: LookupError 404,
# InvalidInput 400, Unavailable 503, another ChatError 400.
Handler = Callable[["Connection", int, dict[bytes, str]], Session]


def close_capsule(code: int, reason: str) -> bytes:
    body = code.to_bytes(4, "big") + reason.encode()[:1024]
    return encode_uint_var(CLOSE_SESSION_CAPSULE) + encode_uint_var(len(body)) + body


class Connection(QuicConnectionProtocol):
    """One QUIC connection: its datagrams counted in `meter`, HTTP/3 on it, and at most one session."""

    def __init__(self, quic, stream_handler=None, *, endpoint: Endpoint) -> None:
        super().__init__(quic, stream_handler)
        self.endpoint = endpoint
        self.meter = DatagramMeter(endpoint.default_tally)
        self.http: H3Connection | None = None
        self.session: Session | None = None
        self.closed = False
        self.timer: asyncio.TimerHandle | None = self._loop.call_later(CONNECT_TIMEOUT_S, self._no_session)

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
            self.session.stream_reset(event.stream_id)
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
                session.datagram(event.data)
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

    def opened(self, session: Session) -> None:
        self.session = session
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _no_session(self) -> None:
        self.timer = None
        if self.session is None and not self.closed:
            self.endpoint.connect_timeouts += 1
            self.close(error_code=0x0, reason_phrase="no session")

    async def end(self, code: int | None, reason: str) -> None:
        """End the session (telling the peer `code` and `reason` in the close capsule, when it is the server's
        doing), then, a moment later, the connection. Idempotent."""
        session = self.session
        if session is not None and not session.ended:
            session.finish()
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
        if self.session is not None:
            self.session.finish()
            self.session.forget()
        self.meter.settle_fallback()
        self.endpoint.connections.discard(self)

    def unacked_bytes(self, stream_ids: Any) -> int:
        """Bytes our streams `stream_ids` (a deque, pruned here of those acknowledged to their end) hold unacknowledged
        (aioquic's stream senders: private, read in this one place)."""
        known, size = self._quic._streams, 0
        while stream_ids and (stream_ids[0] not in known or known[stream_ids[0]].sender.is_finished):
            stream_ids.popleft()
        for stream_id in stream_ids:
            stream = known.get(stream_id)
            if stream is not None:
                size += len(stream.sender._buffer)
        return size

    def datagrams_waiting(self) -> int:
        return len(self._quic._datagrams_pending)

    def drop_oldest_datagram(self) -> None:
        self._quic._datagrams_pending.popleft()


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
    """The app's one HTTP/3 endpoint: the UDP socket, the certificate, the connections, a PING on each every
    heartbeat, and the CONNECTs, each to the handler of its `:protocol`."""

    def __init__(self, app: web.Application, host: str) -> None:
        self.app = app
        self.host = host
        self.handlers: dict[str, Handler] = {}  # :protocol -> its handler
        self.session_caps: dict[str, int] = {}  # who -> the sessions it may hold (the connections' cap)
        self.certificate: certs.Certificate | None = None
        self.server: MeteredQuicServer | None = None
        self.port = self.http_port = 0
        self.connections: set[Connection] = set()
        self.connect_timeouts = self.connections_refused = 0
        self.default_tally: Tally = NULL_TALLY
        self._tasks: set[asyncio.Task] = set()
        self._pinger: asyncio.TimerHandle | None = None
        app.on_cleanup.append(self._close)

    @property
    def max_connections(self) -> int:
        return sum(self.session_caps.values()) + SPARE_CONNECTIONS

    async def open(self, http_port: int, port: int, heartbeat_s: float) -> None:
        """Listen on UDP `port` (0: the HTTP port's number); ping every connection each `heartbeat_s` (the idle
        timeout is three heartbeats). Once only."""
        if self.server is not None:
            return
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self.http_port = http_port
        meter = self.app.get(METER)
        self.default_tally = meter.default if meter is not None else NULL_TALLY
        self.certificate = certs.generate(hosts=tuple(dict.fromkeys((self.host, *certs.DEFAULT_HOSTS))))
        configuration = QuicConfiguration(is_client=False, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
                                          idle_timeout=max(3 * heartbeat_s, 5.0))
        configuration.certificate = x509.load_pem_x509_certificate(self.certificate.cert_pem)
        configuration.private_key = load_pem_private_key(self.certificate.key_pem, None)
        port = port or http_port
        loop = asyncio.get_running_loop()
        try:
            _, self.server = await loop.create_datagram_endpoint(
                lambda: MeteredQuicServer(endpoint=self, configuration=configuration, create_protocol=self._connection),
                local_addr=(self.host, port))
        except OSError as error:
            raise OSError(error.errno, f"HTTP/3's UDP port {port}: {error.strerror}") from None
        self.port = self.server._transport.get_extra_info("sockname")[1]
        self._pinger = loop.call_later(heartbeat_s, self._ping, heartbeat_s)

    def _connection(self, quic, **kwargs) -> Connection:
        connection = Connection(quic, endpoint=self, **kwargs)
        self.connections.add(connection)
        return connection

    def _ping(self, heartbeat_s: float) -> None:
        # A listening member may hear nothing for minutes: a PING keeps its connection inside the idle timeout.
        for connection in tuple(self.connections):
            if not connection.closed:
                connection._quic.send_ping(0)
                connection.transmit()
        self._pinger = asyncio.get_running_loop().call_later(heartbeat_s, self._ping, heartbeat_s)

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
        """A request on a connection: an extended CONNECT goes to its protocol's handler (which opens the session);
        anything else, or a refused session, is answered with a status and a JSON error."""
        fields: dict[bytes, str] = {}
        for key, value in headers:
            if key in fields:
                return conn.answer(stream_id, 400, f"header {key.decode(errors='replace')} given twice")
            fields[key] = value.decode(errors="replace")
        handler = self.handlers.get(fields.get(b":protocol", "")) if fields.get(b":method") == "CONNECT" else None
        if handler is None:
            return conn.answer(stream_id, 404, "this endpoint serves sessions only: an extended CONNECT with "
                                               f":protocol {' or '.join(self.handlers)}")
        # A page opens sessions on another port and scheme than it came from: its Origin must be this server's
        # HTTP origin (or an allowed one), its :authority one of this server's names.
        problem = self.app[GUARD].policy.session_problem(fields.get(b":authority", ""), fields.get(b"origin"),
                                                         self.http_port)
        if problem is not None:
            return conn.answer(stream_id, 403, problem)
        try:
            session = handler(conn, stream_id, fields)
        except LookupError as error:
            return conn.answer(stream_id, 404, str(error.args[0]) if error.args else "not found")
        except Unavailable as error:
            return conn.answer(stream_id, 503, str(error))
        except (InvalidInput, ChatError) as error:
            return conn.answer(stream_id, 400, str(error))
        conn.opened(session)


ENDPOINT = web.AppKey("http3_endpoint", Endpoint)


def endpoint_of(app: web.Application, host: str) -> Endpoint:
    """The app's HTTP/3 endpoint, made on first use (every transport that serves over HTTP/3 shares it)."""
    if ENDPOINT not in app:
        app[ENDPOINT] = Endpoint(app, host)
    return app[ENDPOINT]
