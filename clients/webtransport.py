"""WebTransport client: an aioquic session on the process's asyncio bridge (clients/bridge.py), under gevent members.

`SessionConnection` and `open_session` are plain asyncio (the tests' receivers use them too); the Locust clients
run them on the bridge's loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable
from typing import Any, ClassVar

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, DatagramReceived, HeadersReceived, WebTransportStreamDataReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted

from . import bridge as asyncio_bridge
from .base import ClientError, JsonHttp
from .completeness import ResumePoint

CLOSE_SESSION_CAPSULE = 0x2843  # CLOSE_WEBTRANSPORT_SESSION: the server's code and reason
MAX_DATAGRAM_BYTES = 1100  # a send larger than this goes on a stream of its own, as the server's pushes do
MAX_LINE_BYTES = 1 << 20  # a push stream's line longer than this is not the server's: the session is given up
# A QUIC peer learns the other end is gone by silence: no TCP reset tells it. The member pings every second and its
# connection ends after 3.5 s without an answer (aioquic's idle timeout), as WebRTC's member checks ICE consent; its
# socket is connected, so a port with no server behind it (a killed instance) ends the session at once (ICMP).
KEEPALIVE_S = 1.0
IDLE_TIMEOUT_S = 3.5


class SessionConnection(QuicConnectionProtocol):
    """One QUIC connection with one WebTransport session on it (aioquic, HTTP/3, draft-02). What the server pushes
    goes to `on_frame(data, received_at)` (a line of a stream, or a datagram) as it arrives; the session's end to
    `on_end(code, reason)` (the server's close capsule, else None and what ended it)."""

    def __init__(self, quic: QuicConnection, stream_handler=None, *, on_frame: Callable[[bytes, float], None],
                 on_end: Callable[[int | None, str], None], sha256: bytes | None = None,
                 keepalive_s: float | None = None) -> None:
        super().__init__(quic, stream_handler)
        self.keepalive_s = keepalive_s
        self.pinger: asyncio.TimerHandle | None = None
        self.http = H3Connection(quic, enable_webtransport=True)
        self.on_frame = on_frame
        self.on_end = on_end
        self.sha256 = sha256  # the certificate the server said it has, pinned as a browser's serverCertificateHashes
        self.session_id: int | None = None
        self.answered: asyncio.Future[tuple[int, bytes]] = self._loop.create_future()
        self.body = bytearray()  # an error's JSON, or the close capsule
        self.lines: dict[int, bytearray] = {}
        self.ended = False

    def quic_event_received(self, event) -> None:
        if isinstance(event, HandshakeCompleted) and self.sha256 is not None:
            certificate = self._quic.tls._peer_certificate
            from cryptography.hazmat.primitives.serialization import Encoding

            if certificate is None or hashlib.sha256(certificate.public_bytes(Encoding.DER)).digest() != self.sha256:
                self.close(error_code=0x0128, reason_phrase="certificate hash mismatch")  # CRYPTO_ERROR bad_certificate
                self._end(None, "the server's certificate is not the one its page named")
                return
        elif isinstance(event, ConnectionTerminated):
            self._end(None, f"connection closed ({event.reason_phrase or event.error_code})")
        for http_event in self.http.handle_event(event):
            self.http_event(http_event)

    def http_event(self, event) -> None:
        if isinstance(event, WebTransportStreamDataReceived):
            buffer = self.lines.get(event.stream_id)
            if buffer is None:
                buffer = self.lines[event.stream_id] = bytearray()
            buffer += event.data
            received_at = time.time()
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self.on_frame(line, received_at)
            if event.stream_ended:
                if buffer:
                    self.on_frame(bytes(buffer), received_at)
                del self.lines[event.stream_id]
            elif len(buffer) > MAX_LINE_BYTES:
                self.close(reason_phrase="a push line too long")
                self._end(None, "a push line too long")
        elif isinstance(event, DatagramReceived):
            if event.stream_id == self.session_id:
                self.on_frame(event.data, time.time())
        elif isinstance(event, HeadersReceived) and event.stream_id == self.session_id:
            status = dict(event.headers).get(b":status", b"0")
            if not self.answered.done():
                self.answered.set_result((int(status) if status.isdigit() else 0, b""))
            if event.stream_ended:
                self._end(None, "the server ended the session")
        elif isinstance(event, DataReceived) and event.stream_id == self.session_id:
            self.body += event.data[: 4096 - len(self.body)]
            if event.stream_ended:
                self._end(*parse_close(bytes(self.body)))

    def error_received(self, exc: Exception) -> None:  # ICMP: nothing listens on the server's port any more
        self._end(None, f"the server is gone ({exc})")
        self._transport.close()

    def _keepalive(self) -> None:
        if not self.ended:
            self._quic.send_ping(0)
            self.transmit()
            self.pinger = self._loop.call_later(self.keepalive_s, self._keepalive)

    def _end(self, code: int | None, reason: str) -> None:
        if self.pinger is not None:
            self.pinger.cancel()
        if not self.answered.done():
            self.answered.set_exception(ClientError(f"no answer to the CONNECT: {reason}"))
        if not self.ended:
            self.ended = True
            self.on_end(code, reason)

    async def open_session(self, authority: str, path: str, origin: str | None = None) -> None:
        """Send the CONNECT for `path` and wait for the server's answer; raise ClientError unless it is 200."""
        self.session_id = self._quic.get_next_available_stream_id()
        headers = [(b":method", b"CONNECT"), (b":protocol", b"webtransport"), (b":scheme", b"https"),
                   (b":authority", authority.encode()), (b":path", path.encode()),
                   (b"sec-webtransport-http3-draft02", b"1")]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.http.send_headers(self.session_id, headers)
        self.transmit()
        status, _ = await self.answered
        if status != 200:
            await asyncio.sleep(0.05)  # the error's body follows its head
            raise ClientError(f"CONNECT answered {status}: {bytes(self.body)[:200]!r}")
        if self.keepalive_s:
            self.pinger = self._loop.call_later(self.keepalive_s, self._keepalive)

    def send_line(self, data: bytes) -> None:
        """Send one message on a stream of its own (one line, then the stream's end)."""
        stream_id = self.http.create_webtransport_stream(self.session_id, is_unidirectional=True)
        self._quic.send_stream_data(stream_id, data + b"\n", end_stream=True)
        self.transmit()

    def send_datagram(self, data: bytes) -> None:
        self.http.send_datagram(self.session_id, data)
        self.transmit()

    def close_session(self, code: int = 0, reason: str = "") -> None:
        if not self.ended and self.session_id is not None:
            body = code.to_bytes(4, "big") + reason.encode()[:1024]
            capsule = Buffer(capacity=16 + len(body))
            capsule.push_uint_var(CLOSE_SESSION_CAPSULE)
            capsule.push_uint_var(len(body))
            capsule.push_bytes(body)
            self.http.send_data(self.session_id, capsule.data, end_stream=True)
        self.close()


def parse_close(body: bytes) -> tuple[int | None, str]:
    """(code, reason) of a CLOSE_WEBTRANSPORT_SESSION capsule; (None, why) for anything else."""
    buf = Buffer(data=body)
    try:
        if buf.pull_uint_var() == CLOSE_SESSION_CAPSULE:
            length = buf.pull_uint_var()
            payload = buf.pull_bytes(length)
            return int.from_bytes(payload[:4], "big"), payload[4:].decode(errors="replace")
    except BufferReadError:
        pass
    return None, "the server ended the session"


async def open_session(host: str, port: int, path: str, *, on_frame: Callable[[bytes, float], None],
                       on_end: Callable[[int | None, str], None], sha256: bytes | None = None,
                       origin: str | None = None, sock: Any = None, keepalive_s: float | None = None
                       ) -> SessionConnection:
    """Connect to the HTTP/3 endpoint at `host`:`port` (an address), open a session at `path`, return it open.
    aioquic's own `connect` resolves the name in an executor and binds every address; this binds loopback (or
    the socket given: the bridge's real one) and pins the certificate by its hash, as a page does."""
    loop = asyncio.get_running_loop()
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, max_datagram_frame_size=65536,
                                      server_name=host, verify_mode=ssl.CERT_NONE)  # the hash is checked instead
    if keepalive_s:
        configuration.idle_timeout = IDLE_TIMEOUT_S
    quic = QuicConnection(configuration=configuration)
    if sock is None:
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((host, 0))
    sock.connect((host, port))  # only the server's datagrams, and its port's ICMP errors, reach this socket
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: SessionConnection(quic, on_frame=on_frame, on_end=on_end, sha256=sha256, keepalive_s=keepalive_s),
        sock=sock)
    try:
        protocol.connect((host, port))
        await protocol.wait_connected()
        await protocol.open_session(f"{host}:{port}", path, origin)
    except BaseException:
        protocol.close()
        transport.close()
        raise
    return protocol


class WebTransportClient(asyncio_bridge.BridgedClient):
    """At every (re)connect, reads where the endpoint is (`GET /rooms/{room}/webtransport` on the HTTP port: its UDP
    port and its certificate's SHA-256), then opens a session at the same path (`?since=ID`) with CONNECT over QUIC on
    the process's asyncio thread; the WebSocket's messages both ways (clients.bridge.BridgedClient): each send on a
    stream of its own, each push a line of a stream. The session's end carries the server's close code (1001
    shutdown, 1012 drain: reconnect)."""

    transport = "webtransport"
    what = "WebTransport session"
    datagrams: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn: SessionConnection | None = None  # touched on the loop's thread only
        self._resume = ResumePoint(0)  # streams: a reconnect resumes after the first gap, not the newest id

    def _start_from(self, point: ResumePoint) -> None:
        super()._start_from(point)
        self._resume = point.copy()

    def resume_point(self) -> ResumePoint:
        # Streams: after the first gap, with what arrived above it (dropped once when the resume sends it again).
        return super().resume_point() if self.datagrams else self._resume.copy()

    def deliver(self, message: dict, received_at: float) -> None:
        message_id = message.get("id")
        if not self.datagrams and isinstance(message_id, int) and not self._resume.arrived(message_id):
            return  # had arrived before the reconnect; the resume asked for it again with the gap before it
        super().deliver(message, received_at)

    def _open_connection(self, generation: int) -> None:
        # Asked again at every (re)connect, as the page does: after a drain the balancer sends the member to another
        # instance, with a port and a certificate of its own.
        http = JsonHttp(self.host, self.port, self.timeout_s)
        try:
            status, body = http.request("GET", f"/rooms/{self.room}/{self.transport}")
            if status != 200:
                raise ClientError(f"GET /rooms/{self.room}/{self.transport} answered {status}: {body[:200]!r}")
            info = http.decode(body)
            endpoint = (int(info["port"]), bytes.fromhex(info["certificate"]["sha256_hex"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ClientError(f"the server did not say where its WebTransport endpoint is: {error!r}") from None
        finally:
            http.close()
        # Datagrams: after the newest id seen (a gap there is a loss, not a message on its way).
        since = self.last_id if self.datagrams else self._resume.resume()
        self._bridge.call(self._open, generation, endpoint, since, timeout_s=self.timeout_s)

    async def _open(self, generation: int, endpoint: tuple[int, bytes], since: int) -> None:
        await self._close_current()
        port, sha256 = endpoint
        to_gevent, arrived, lost = self._bridge.to_gevent, self._arrived, self._connection_lost
        conn = await open_session(
            self.host, port, f"/rooms/{self.room}/{self.transport}?since={since}",
            on_frame=lambda data, received_at: to_gevent(arrived, generation, data, received_at),
            on_end=lambda code, reason: to_gevent(lost, generation, code, reason), sha256=sha256,
            sock=asyncio_bridge.udp_socket((self.host, 0)), keepalive_s=KEEPALIVE_S)
        if self.closed or generation != self._current:
            conn.close()
            raise ClientError("superseded")
        self._conn = conn

    def _transmit(self, frame: str) -> bool:
        conn = self._conn
        if conn is None or conn.ended:
            return False
        data = frame.encode()
        if self.datagrams and len(data) <= MAX_DATAGRAM_BYTES:
            conn.send_datagram(data)
        else:
            conn.send_line(data)
        return True

    async def _close_current(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close_session()  # the capsule and QUIC's CONNECTION_CLOSE go out now (aioquic sends at once)
            conn._transport.close()  # not waiting out QUIC's draining period: a member leaves at once, as a page does


class DatagramWebTransportClient(WebTransportClient):
    """The same member on a session whose messages travel as QUIC datagrams both ways: a message lost on the way
    stays lost, and the receivers count it as lost (the price of this transport, not a client error)."""

    transport = "webtransport-datagram"
    datagrams = True
    expects_loss = True
