"""The member's HTTP: the one seam between a transport client and the HTTP version a run asks for.

A transport client asks its member's HTTP (`ChatClient.http`, one per member) for three things and never
minds which HTTP carries them:

- `requester(timeout_s)`: something that sends one request at a time and returns (status, body): a member
  holds one for its polls and one for its posts, as a page's two concurrent fetches;
- `open_stream(path, headers, timeout_s)`: a response that goes on (an event stream), its body fed through
  the process's receive reactor (clients/reactor.py);
- `open_websocket(path, timeout_s)`: a WebSocket, as a tunnel of bytes both ways; the client frames and
  masks its messages itself (clients/websocket.py), whatever carries them.

What carries them (`configure`, from Locust's `--rtlab-http`, or the base URL's scheme):

- `http://` and HTTP/1.1: the libraries the clients always used (geventhttpclient for requests,
  websocket-client for the WebSocket's handshake, a plain socket for an event stream), one TCP connection
  per concurrent request, as a browser opens them;
- `https://` and HTTP/1.1: the same connections, each through TLS (ALPN `http/1.1`);
- HTTP/2 (`https://`, ALPN `h2`, or `http://` with prior knowledge: h2c): one connection per member,
  every request, stream and WebSocket a stream of it (hyper's `h2`; a WebSocket over RFC 8441's extended
  CONNECT).

Every TLS and HTTP/2 connection is a `Link`: our own socket I/O with TLS done by an `ssl.SSLObject` over
memory buffers, so every byte the member pays (TLS records, h2 frames, HPACK-compressed headers) is counted
on the connection (`Link.bytes_in`/`bytes_out`, `TOTALS` per process), and the receive reactor reads those
sockets as it reads any other. The direct path keeps its libraries: the server's own meter counts it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import time
import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent
import gevent.lock
from gevent.event import AsyncResult, Event
from geventhttpclient.response import HTTPSocketResponse

from . import HTTP_VERSIONS
from .reactor import Watch, reactor

VERSIONS = HTTP_VERSIONS
RECV_BYTES = 65536
MAX_HEAD_BYTES = 16 * 1024
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A member's h2 connection: windows large enough that a busy event stream never waits for a WINDOW_UPDATE (what
# Chromium asks for: 6 MiB per stream, 15 MiB per connection).
H2_STREAM_WINDOW = 6 * 1024 * 1024
H2_CONNECTION_WINDOW = 15 * 1024 * 1024


class HttpError(Exception):
    """The connection or the peer did not behave as HTTP says (ALPN refused, a reset stream, a bad head)."""


# ---- what the run asked for ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The HTTP this process's members speak: `version` ("1.1" or "2"), and the certificate file that verifies
    a TLS peer (`ca_file`; None verifies against the system's roots)."""

    version: str = "1.1"
    ca_file: str | None = None


settings = Settings(os.environ.get("RTLAB_HTTP", "1.1"), os.environ.get("RTLAB_TLS_CA") or None)


def configure(version: str = "1.1", ca_file: str | None = None) -> Settings:
    """Set the HTTP every member made from now on speaks (Locust's --rtlab-http and --rtlab-tls-ca)."""
    global settings
    if version not in VERSIONS:
        raise ValueError(f"HTTP version must be one of {', '.join(VERSIONS)}, got {version!r}")
    settings = Settings(version, ca_file)
    return settings


def tls_context(alpn: str, ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies the peer (against `ca_file` when given) and offers one ALPN protocol."""
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols([alpn])
    return context


def member_http(base_url: str, timeout_s: float, chosen: Settings | None = None) -> MemberHttp:
    """The member's HTTP for `base_url` (http:// or https://) under `chosen` (default: the process's settings)."""
    chosen = chosen or settings
    url = urlsplit(base_url)
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    if chosen.version == "2":
        return Http2(url.hostname, port, tls_context("h2", chosen.ca_file) if tls else None, timeout_s)
    return Http1(url.hostname, port, tls_context("http/1.1", chosen.ca_file) if tls else None, timeout_s)


# ---- one counted connection -----------------------------------------------------------------------------------


@dataclass
class Counts:
    """Bytes read from and written to TCP sockets (TLS records included): per Link, and per process (TOTALS)."""

    bytes_in: int = 0
    bytes_out: int = 0
    connections: int = 0


TOTALS = Counts()
LINKS: weakref.WeakSet[Link] = weakref.WeakSet()  # every Link of this process: `settle()` reads what is left


def settle() -> Counts:
    """Read (and count) what has arrived on every open Link that the reactor does not read (a kept-alive request
    connection between requests), and return the process's totals: the members' bytes as they stand."""
    for link in list(LINKS):
        if not link.closed and not link.watched:
            link.idle_ok()
    return TOTALS


class Link:
    """One TCP connection whose bytes we read and write ourselves, TLS through an SSLObject over memory BIOs.

    `recv`/`sendall`/`settimeout`/`close` make it socket-like for the code that reads an answer's head;
    `watch(on_data)` hands what arrives to the receive reactor, decrypted. Every byte is counted in
    `counts` and `TOTALS` as it crosses the socket.
    """

    def __init__(self, host: str, port: int, timeout_s: float, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.counts = Counts(connections=1)
        TOTALS.connections += 1
        self._plain = bytearray()  # decrypted, not yet taken by recv
        self._lock = gevent.lock.Semaphore()  # one writer at a time: TLS records and frames stay in order
        self._tls: ssl.SSLObject | None = None
        self.alpn: str | None = None
        self.closed = False
        self.watched = False  # the reactor reads it
        LINKS.add(self)
        if tls is not None:
            self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            self._tls = tls.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
            try:
                self._handshake()
            except BaseException:
                self.close()
                raise
            self.alpn = self._tls.selected_alpn_protocol()

    def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._write_raw(self._outgoing.read())
                data = self.sock.recv(RECV_BYTES)
                if not data:
                    raise ConnectionError("the peer closed the connection during the TLS handshake")
                self._count_in(len(data))
                self._incoming.write(data)
        self._write_raw(self._outgoing.read())

    def _count_in(self, n: int) -> None:
        self.counts.bytes_in += n
        TOTALS.bytes_in += n

    def _write_raw(self, data: bytes) -> None:
        if not data:
            return
        self.counts.bytes_out += len(data)
        TOTALS.bytes_out += len(data)
        try:
            written = os.write(self.sock.fileno(), data)  # gevent keeps the descriptor non-blocking
        except BlockingIOError:
            written = 0
        if written < len(data):
            self.sock.sendall(data[written:])  # waits (gevent) for the room the rest needs

    def sendall(self, data: bytes) -> None:
        """Write all of `data` (encrypted first over TLS); writers take turns, so nothing interleaves."""
        with self._lock:
            if self._tls is None:
                self._write_raw(data)
            else:
                self._tls.write(data)
                self._write_raw(self._outgoing.read())

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def feed(self, data: bytes) -> bytes:
        """Count bytes read from the socket and return their plaintext (b"" when they complete no TLS record)."""
        self._count_in(len(data))
        tls = self._tls
        if tls is None:
            return data
        self._incoming.write(data)
        out = []
        while True:
            try:
                chunk = tls.read(RECV_BYTES)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify: the FIN follows
                break
            if not chunk:
                break
            out.append(chunk)
        if self._outgoing.pending and not self._lock.locked():  # what TLS itself must answer (a key update)
            with self._lock:
                self._write_raw(self._outgoing.read())
        return out[0] if len(out) == 1 else b"".join(out)

    def recv(self, n: int = RECV_BYTES) -> bytes:
        """Up to `n` bytes of plaintext, waiting for them; b"" when the peer closed."""
        while not self._plain:
            data = self.sock.recv(RECV_BYTES)
            if not data:
                return b""
            self._plain += self.feed(data)
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    def take_buffered(self) -> bytes:
        """Plaintext read past what recv's callers took (the start of a body after its head)."""
        out = bytes(self._plain)
        self._plain.clear()
        return out

    def watch(self, on_data) -> Watch:
        """From now on, hand each piece of plaintext that arrives to `on_data`, in the reactor's greenlet."""
        feed = self.feed
        self.watched = True

        def on_raw(data: bytes) -> None:
            plain = feed(data)
            if plain:
                on_data(plain)

        return reactor().watch(self.sock, on_raw)

    def idle_ok(self) -> bool:
        """Whether an idle connection can carry the next request: open, with nothing to read but TLS's own
        records (TLS 1.3 sends its session tickets after the handshake)."""
        if self.closed:
            return False
        try:
            data = getattr(self.sock, "_sock", self.sock).recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return bool(data) and not self.feed(data)

    def settimeout(self, timeout_s: float | None) -> None:
        self.sock.settimeout(timeout_s)

    def gettimeout(self) -> float | None:
        return self.sock.gettimeout()

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    shutdown = close


def read_head(link: Link) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP/1.1 response head from `link`; return (status, lower-cased headers, bytes after the head)."""
    raw = bytearray()
    while b"\r\n\r\n" not in raw:
        if len(raw) > MAX_HEAD_BYTES:
            raise HttpError("response head too long")
        data = link.recv(RECV_BYTES)
        if not data:
            raise ConnectionError("the connection closed before the response head ended")
        raw += data
    head, _, rest = bytes(raw).partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"not an HTTP status line: {status_line[:100]!r}")
    return int(parts[1]), headers, rest


def websocket_key() -> tuple[str, str]:
    """A Sec-WebSocket-Key and the Sec-WebSocket-Accept the server must answer it with (RFC 6455 section 4)."""
    key = base64.b64encode(os.urandom(16)).decode()
    return key, base64.b64encode(hashlib.sha1(key.encode() + WEBSOCKET_GUID).digest()).decode()


# ---- what a client gets -----------------------------------------------------------------------------------------


class Stream(ABC):
    """A response that goes on (an event stream), or a WebSocket's tunnel: its head, then bytes both ways."""

    status: int
    headers: dict[str, str]  # lower-cased names
    chunked: bool = False  # HTTP/1.1's chunked framing is still on the body's bytes (de-chunk them)

    @abstractmethod
    def watch(self, on_data) -> Watch:
        """Feed every body byte from now on to `on_data` (in the reactor's greenlet); return the watch that ends
        with the stream. Bytes that came before are in `take_buffered()`."""

    @abstractmethod
    def take_buffered(self) -> bytes: ...

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes up the stream (a WebSocket's frames)."""

    @abstractmethod
    def close(self) -> None: ...


class Requester(ABC):
    @abstractmethod
    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        """Send one request and read the whole answer; return (status, body)."""

    def close(self) -> None:
        pass


class MemberHttp(ABC):
    """One chat member's HTTP to one server (module docstring)."""

    version: str
    tls: bool

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._tls = tls
        self.tls = tls is not None
        self.authority = f"{host}:{port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @abstractmethod
    def requester(self, timeout_s: float) -> Requester: ...

    @abstractmethod
    def open_stream(self, path: str, headers: dict[str, str], timeout_s: float) -> Stream: ...

    @abstractmethod
    def open_websocket(self, path: str, timeout_s: float) -> Stream: ...

    def close(self) -> None:
        pass


# ---- HTTP/1.1 ---------------------------------------------------------------------------------------------------


class Http1(MemberHttp):
    """A connection per concurrent request, as a browser opens them; TLS on each when the URL is https."""

    version = "1.1"

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float) -> None:
        super().__init__(host, port, tls, timeout_s)
        self._idle: list[Link] = []  # kept-alive connections no request holds now, as a browser's pool keeps them

    def take_idle(self) -> Link | None:
        while self._idle:
            link = self._idle.pop()
            if link.idle_ok():
                return link
            link.close()
        return None

    def put_idle(self, link: Link) -> None:
        if not link.closed:
            self._idle.append(link)

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for link in idle:
            link.close()

    def connect(self, timeout_s: float) -> Link:
        link = Link(self.host, self.port, timeout_s, self._tls)
        if self.tls and link.alpn not in (None, "http/1.1"):
            link.close()
            raise HttpError(f"the server chose {link.alpn!r} over http/1.1")
        return link

    def requester(self, timeout_s: float) -> Requester:
        if not self.tls:
            from .base import JsonHttp  # geventhttpclient, as every direct run used it

            return JsonHttp(self.host, self.port, timeout_s)
        return LinkRequester(self, timeout_s)

    def _head(self, method: str, path: str, headers: dict[str, str]) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.authority}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def open_stream(self, path: str, headers: dict[str, str], timeout_s: float) -> Stream:
        link = self.connect(timeout_s)
        try:
            link.sendall(self._head("GET", path, headers))
            status, response_headers, rest = read_head(link)
        except BaseException:
            link.close()
            raise
        return LinkStream(link, status, response_headers, rest)

    def open_websocket(self, path: str, timeout_s: float) -> Stream:
        if not self.tls:
            return WebSocketClientTunnel.connect(f"ws://{self.authority}{path}", timeout_s)
        link = self.connect(timeout_s)
        key, accept = websocket_key()
        try:
            link.sendall(self._head("GET", path, {"Upgrade": "websocket", "Connection": "Upgrade",
                                                  "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}))
            status, headers, rest = read_head(link)
            if status != 101 or headers.get("sec-websocket-accept") != accept:
                raise HttpError(f"the WebSocket handshake answered {status} {headers.get('sec-websocket-accept')!r}")
        except BaseException:
            link.close()
            raise
        return LinkStream(link, status, headers, rest)


class LinkStream(Stream):
    """An HTTP/1.1 stream on a connection of its own: the rest of the connection is its body."""

    def __init__(self, link: Link, status: int, headers: dict[str, str], rest: bytes) -> None:
        self.link, self.status, self.headers = link, status, headers
        self.chunked = "chunked" in headers.get("transfer-encoding", "")
        self._rest = rest + link.take_buffered()

    def watch(self, on_data) -> Watch:
        return self.link.watch(on_data)

    def take_buffered(self) -> bytes:
        rest, self._rest = self._rest, b""
        return rest

    def write(self, data: bytes) -> None:
        self.link.sendall(data)

    def close(self) -> None:
        self.link.close()


class LinkRequester(Requester):
    """Requests one after another on a kept-alive Link; the answer parsed by geventhttpclient's parser, the one
    that reads the direct runs' answers."""

    def __init__(self, http: Http1, timeout_s: float) -> None:
        self.http, self.timeout_s = http, timeout_s
        self._link: Link | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        link = self._link
        if link is None or not link.idle_ok():
            if link is not None:
                link.close()
            link = self._link = self.http.take_idle() or self.http.connect(self.timeout_s)
        headers = {"Content-Type": content_type, "Content-Length": str(len(body))} if body is not None else {}
        try:
            link.sendall(self.http._head(method, path, headers) + (body or b""))
            response = HTTPSocketResponse(link, method=method)
            data = response.read()
            keep = not response.should_close()
        except BaseException:
            self._link = None
            link.close()
            raise
        if not keep:
            self._link = None
            link.close()
        return response.status_code, data

    def close(self) -> None:
        """Give the connection back to the member's pool (the next request may take it), as a page's fetch does."""
        link, self._link = self._link, None
        if link is not None:
            self.http.put_idle(link)


class WebSocketClientTunnel(Stream):
    """A direct WebSocket as the clients always opened it: websocket-client's handshake, then the socket."""

    status, headers = 101, {}

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    def connect(cls, url: str, timeout_s: float) -> WebSocketClientTunnel:
        import websocket  # websocket-client

        ws = websocket.create_connection(url, timeout=timeout_s, enable_multithread=True, skip_utf8_validation=True)
        return cls(ws)

    def watch(self, on_data) -> Watch:
        # The handshake read the socket only up to the end of the answer's head: every frame is still to come.
        return reactor().watch(self.ws.sock, on_data)

    def take_buffered(self) -> bytes:
        return b""

    def write(self, data: bytes) -> None:
        write_frame(self.ws, data)

    def close(self) -> None:
        try:
            self.ws.shutdown()
        except Exception:
            pass


def write_frame(ws, frame: bytes) -> None:
    """Write one whole WebSocket frame on websocket-client's socket: one non-blocking write, which the kernel takes
    whole unless the socket's buffer is full; `sendall` writes what is left, under websocket-client's lock. That
    lock is held only by a write that had to wait (the rest of a frame, websocket-client's own): while it is, this
    frame waits its turn. Greenlets switch only where one waits, so nothing can start a frame between the check
    and the write. (gevent's `sendall` arms a timeout and asks the socket its options, and its lock costs about
    as much again: too much for every message on the generator's hot path.)"""
    sock, lock = ws.sock, ws.lock
    if not lock.locked():
        try:
            written = os.write(sock.fileno(), frame)  # gevent keeps the descriptor non-blocking
        except BlockingIOError:
            written = 0
        if written == len(frame):
            return
        frame = frame[written:]
    with lock:
        sock.sendall(frame)


# ---- HTTP/2 -----------------------------------------------------------------------------------------------------


class Http2(MemberHttp):
    """One h2 connection per member (TLS with ALPN h2, or h2c with prior knowledge); every request, event stream
    and WebSocket a stream of it. A connection that ended is replaced on the next use."""

    version = "2"

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, timeout_s: float) -> None:
        super().__init__(host, port, tls, timeout_s)
        self._connection: H2Connection | None = None
        self.links: list[Link] = []  # every connection this member opened, for its byte counts

    def connection(self, timeout_s: float) -> H2Connection:
        connection = self._connection
        if connection is None or connection.closed:
            link = Link(self.host, self.port, timeout_s, self._tls)
            if self.tls and link.alpn != "h2":
                link.close()
                raise HttpError(f"the server did not agree to h2 (ALPN chose {link.alpn!r})")
            self.links.append(link)
            connection = self._connection = H2Connection(link, self.scheme, self.authority)
        return connection

    def requester(self, timeout_s: float) -> Requester:
        return H2Requester(self, timeout_s)

    def open_stream(self, path: str, headers: dict[str, str], timeout_s: float) -> Stream:
        return self.connection(timeout_s).open("GET", path, headers, timeout_s)

    def open_websocket(self, path: str, timeout_s: float) -> Stream:
        return self.connection(timeout_s).open_websocket(path, timeout_s)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class H2Requester(Requester):
    def __init__(self, http: Http2, timeout_s: float) -> None:
        self.http, self.timeout_s = http, timeout_s

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        connection = self.http.connection(self.timeout_s)
        headers = {"content-type": content_type} if body is not None else {}
        stream = connection.start(method, path, headers, body)
        try:
            status = stream.wait_head(self.timeout_s)
            if not stream.done.wait(self.timeout_s):
                raise TimeoutError(f"no whole answer within {self.timeout_s:g} s")
        except BaseException:
            stream.close()
            raise
        if stream.failure is not None:
            raise stream.failure
        return status, bytes(stream.body)


class H2Stream(Stream):
    """One stream of a member's h2 connection: a request's answer, an event stream, or a WebSocket's tunnel."""

    def __init__(self, connection: H2Connection, stream_id: int) -> None:
        self.connection, self.stream_id = connection, stream_id
        self.status, self.headers = 0, {}
        self.body = bytearray()  # what came before a watch (or the whole answer of a request)
        self.head = AsyncResult()
        self.done = Event()
        self.failure: BaseException | None = None
        self._watch: Watch | None = None

    def wait_head(self, timeout_s: float) -> int:
        try:
            return self.head.get(timeout=timeout_s)
        except gevent.Timeout:
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None

    def on_head(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.headers = {name.decode().lower(): value.decode("latin-1") for name, value in headers}
        self.status = int(self.headers.pop(":status", "0"))
        self.head.set(self.status)

    def on_data(self, data: bytes) -> None:
        watch = self._watch
        if watch is None:
            self.body += data
            return
        watch.last_data = time.monotonic()
        try:
            watch.on_data(data)
        except Exception as error:  # a parser's protocol error ends this stream only
            watch.end(error)
            self.close()

    def on_end(self, failure: BaseException | None) -> None:
        if self.done.is_set():
            return
        self.failure = failure
        if not self.head.ready():
            self.head.set_exception(failure or HttpError("the stream ended before its answer's head"))
        self.done.set()
        if self._watch is not None:
            self._watch.end(failure)

    def watch(self, on_data) -> Watch:
        # Not in the reactor's epoll set (the connection's socket is): the connection feeds it, stream by stream.
        self._watch = watch = Watch(reactor(), -1, on_data)
        if self.done.is_set():
            watch.end(self.failure)
        return watch

    def take_buffered(self) -> bytes:
        out = bytes(self.body)
        self.body.clear()
        return out

    def write(self, data: bytes) -> None:
        self.connection.send(self.stream_id, data)

    def close(self) -> None:
        if not self.done.is_set():
            self.connection.reset(self.stream_id)
            self.on_end(HttpError("closed by the client"))


class H2Connection:
    """hyper's h2 over a Link, read by the receive reactor: it dispatches frames to the member's streams."""

    def __init__(self, link: Link, scheme: str, authority: str) -> None:
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        self._events = h2.events
        self.link = link
        self.scheme, self.authority = scheme.encode(), authority.encode()
        self.closed = False
        self.streams: dict[int, H2Stream] = {}
        self._writing = False
        self._window = Event()  # set when the peer opened a flow-control window
        self.settings_received = Event()
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2 = h2.connection.H2Connection(config)
        codes = h2.settings.SettingCodes
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            codes.ENABLE_PUSH: 0, codes.INITIAL_WINDOW_SIZE: H2_STREAM_WINDOW})
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(H2_CONNECTION_WINDOW - 65535)
        self.flush()
        self.watch = link.watch(self._on_data)
        self._monitor = gevent.spawn(self._wait_end)

    def _wait_end(self) -> None:
        failure = self.watch.wait(7 * 24 * 3600)
        self._fail(failure or ConnectionError("the h2 connection closed"))

    def _fail(self, failure: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self.settings_received.set()
        self._window.set()
        for stream in list(self.streams.values()):
            stream.on_end(failure)
        self.streams.clear()
        self.link.close()

    def flush(self) -> None:
        """Write what h2 has queued; one writer at a time (another greenlet's queue is picked up by the loop)."""
        if self._writing:
            return
        self._writing = True
        try:
            while not self.closed:
                data = self.h2.data_to_send()
                if not data:
                    break
                self.link.sendall(data)
        except OSError as error:
            self._fail(error)
        finally:
            self._writing = False

    def _headers(self, method: str, path: str, headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
        return [(b":method", method.encode()), (b":scheme", self.scheme), (b":authority", self.authority),
                (b":path", path.encode()), *((k.lower().encode(), v.encode()) for k, v in headers.items())]

    def start(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None,
              extra: list[tuple[bytes, bytes]] = ()) -> H2Stream:
        """Open a stream with a request's head (and its whole body, if any)."""
        if self.closed:
            raise ConnectionError("the h2 connection is closed")
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        fields = self._headers(method, path, headers)
        if body is not None:
            fields.append((b"content-length", str(len(body)).encode()))
        self.h2.send_headers(stream_id, [*fields, *extra], end_stream=body is None and not extra)
        if body is not None:
            self.send(stream_id, body, end_stream=True)
        else:
            self.flush()
        return stream

    def open(self, method: str, path: str, headers: dict[str, str], timeout_s: float) -> H2Stream:
        stream = self.start(method, path, headers)
        try:
            stream.wait_head(timeout_s)
        except BaseException:
            stream.close()
            raise
        return stream

    def open_websocket(self, path: str, timeout_s: float) -> H2Stream:
        """RFC 8441: a CONNECT with :protocol websocket, once the server said it takes one; 200 opens the tunnel."""
        if not self.settings_received.wait(timeout_s) or self.closed:
            raise TimeoutError("no SETTINGS from the server")
        if not self.h2.remote_settings.enable_connect_protocol:
            raise HttpError("the server does not take WebSockets over h2 (no SETTINGS_ENABLE_CONNECT_PROTOCOL)")
        stream_id = self.h2.get_next_available_stream_id()
        stream = self.streams[stream_id] = H2Stream(self, stream_id)
        fields = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", self.scheme),
                  (b":path", path.encode()), (b":authority", self.authority), (b"sec-websocket-version", b"13")]
        self.h2.send_headers(stream_id, fields)
        self.flush()
        try:
            status = stream.wait_head(timeout_s)
            if status != 200:
                raise HttpError(f"the WebSocket's CONNECT answered {status}")
        except BaseException:
            stream.close()
            raise
        return stream

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send `data` on a stream as DATA frames, waiting for the peer's flow-control window when it is shut."""
        view, pos = memoryview(data), 0
        while True:
            if self.closed:
                raise ConnectionError("the h2 connection is closed")
            room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size, len(data) - pos)
            if room <= 0 and pos < len(data):
                self._window.clear()
                self.flush()
                if not self._window.wait(30):
                    raise TimeoutError("the peer kept its flow-control window shut")
                continue
            last = pos + room >= len(data)
            self.h2.send_data(stream_id, bytes(view[pos:pos + room]), end_stream=end_stream and last)
            pos += room
            if last:
                break
        self.flush()

    def reset(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id)
        except Exception:  # closed already: nothing to cancel
            return
        self.flush()

    def _on_data(self, data: bytes) -> None:
        events = self._events
        for event in self.h2.receive_data(data):
            kind = type(event)
            if kind is events.DataReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_data(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is events.ResponseReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.on_head(event.headers)
            elif kind is events.StreamEnded:  # h2 reports it apart from the frame that carried END_STREAM
                self._end(event.stream_id, None)
            elif kind is events.StreamReset:
                self._end(event.stream_id, HttpError(f"the server reset the stream (error {event.error_code!r})"))
            elif kind is events.WindowUpdated:
                self._window.set()
            elif kind is events.RemoteSettingsChanged:
                self.settings_received.set()
                self._window.set()
            elif kind is events.ConnectionTerminated:
                self.flush()
                self.watch.end(ConnectionError(f"the server ended the h2 connection (GOAWAY {event.error_code!r})"))
                return
        self.flush()

    def _end(self, stream_id: int, failure: BaseException | None) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.on_end(failure)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.h2.close_connection()
            self.flush()
        except Exception:
            pass
        self.watch.stop()
        self._fail(ConnectionError("closed by the client"))
        self._monitor.kill(block=False)
