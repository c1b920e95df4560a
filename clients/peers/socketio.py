"""The Socket.IO peers' client: Engine.IO v4 and Socket.IO v5 spoken for real, on one Engine.IO transport
(WebSocket, or HTTP long polling), answering the server's pings, with acknowledged emits.

Written against the protocol rather than with python-socketio's own client: that client spends a thread and
a `requests` session per member, and at the peers experiment's load its CPU saturated the load generator
before the server, so the run measured the generator (docs/peers.md). This one uses the same pieces as
rtlab's own clients (websocket-client; geventhttpclient keep-alive connections). tests/servers/test_peers.py
checks the server with python-socketio's client; tests/clients/test_clients_transports.py this client
against the server.

A member connects, emits `join` {room, since} (the server sends the backlog after `since`, then acks once the
member is in the room), sends with `send` {user, text, sent_at} (acked with the id it was stored as), and
receives every message of the room as a `message` event.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable

import gevent.event
import websocket  # websocket-client

from ..base import Backoff, ChatClient, ClientError, JsonHttp, OnMessage, Report, ignore_report, ms_since

PATH = "/socket.io/?EIO=4"
SEPARATOR = "\x1e"  # between Engine.IO packets in one polling payload
# Engine.IO packet types
OPEN, CLOSE, PING, PONG, MESSAGE, NOOP = "0", "1", "2", "3", "4", "6"
# Socket.IO packet types, inside an Engine.IO message
CONNECT, DISCONNECT, EVENT, ACK, CONNECT_ERROR = "0", "1", "2", "3", "4"


class SocketIOClient(ChatClient):
    """One Engine.IO session per member; SEND is timed to the server's ack (the message is stored then)."""

    engineio_transport = "websocket"
    transport = "socketio-websocket"

    def __init__(self, base_url: str, on_message: OnMessage, report: Report = ignore_report, *,
                 timeout_s: float = 10.0, idle_timeout_s: float = 60.0) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self.idle_timeout_s = idle_timeout_s  # the server pings every 25 s
        self._acks: dict[int, Callable[[list], None]] = {}
        self._ack_ids = itertools.count(1)
        self._joined: gevent.event.Event | None = None

    # ---- what one transport does: open a session, send packets, read packets ----

    def _open(self) -> None:
        raise NotImplementedError

    def _send_packets(self, packets: list[str]) -> None:
        raise NotImplementedError

    def _read_packets(self) -> list[str]:
        """Block until the server says something; return its Engine.IO packets (empty: keep waiting)."""
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    # ---- Socket.IO over it ----

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            self._open()
            self._send_packets([MESSAGE + CONNECT])
            while True:  # the server's CONNECT answer (after its OPEN, which _open read)
                packets = self._read_packets()
                if any(p.startswith(MESSAGE + CONNECT) for p in packets):
                    break
                if any(p.startswith(MESSAGE + CONNECT_ERROR) or p.startswith(CLOSE) for p in packets):
                    raise ClientError(f"Socket.IO refused the connection: {packets}")
                self._handle(packets)
            # Joining: the backlog after `since` comes first, then the ack once the member is in the room.
            joined = self._joined = gevent.event.Event()
            self._emit("join", {"room": self.room, "since": self.last_id}, lambda data: joined.set())
            while not joined.is_set():
                self._handle(self._read_packets())
        except Exception as error:
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            self._close()
            raise
        self.report("CONNECT", self.transport, ms_since(started), 0)

    def _emit(self, event: str, data: dict, on_ack: Callable[[list], None] | None = None) -> None:
        ack = ""
        if on_ack is not None:
            ack_id = next(self._ack_ids)
            self._acks[ack_id] = on_ack
            ack = str(ack_id)
        self._send_packets([MESSAGE + EVENT + ack + json.dumps([event, data], separators=(",", ":"))])

    def _handle(self, packets: list[str]) -> None:
        received_at = time.time()
        for p in packets:
            kind = p[:1]
            if kind == MESSAGE:
                self._on_socketio(p[1:], received_at)
            elif kind == PING:
                self._send_packets([PONG])
            elif kind == CLOSE:
                raise ConnectionError("the server closed the Engine.IO session")

    def _on_socketio(self, packet: str, received_at: float) -> None:
        kind = packet[:1]
        if kind == EVENT:
            start = packet.index("[")
            name, data = json.loads(packet[start:])
            if name == "message":
                self.deliver(data, received_at)
        elif kind == ACK:
            start = packet.index("[")
            callback = self._acks.pop(int(packet[1:start]), None)
            if callback is not None:
                callback(json.loads(packet[start:]))
        elif kind == DISCONNECT:
            raise ConnectionError("the server disconnected the Socket.IO namespace")

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        if self.room is None:
            raise RuntimeError("join a room before sending")
        if sent_at is None:
            sent_at = time.time()

        def accepted(data: list) -> None:
            self.report("SEND", self.transport, (time.time() - sent_at) * 1000, 0)
            if self.on_send_accepted is not None:
                self.on_send_accepted(sent_at)

        try:
            self._emit("send", {"user": user, "text": text, "sent_at": sent_at}, accepted)
        except Exception as error:
            self.report("SEND", self.transport, (time.time() - sent_at) * 1000, 0, error)

    def _receive(self) -> None:
        backoff = Backoff()
        while not self.closed:
            try:
                while not self.closed:
                    packets = self._read_packets()
                    self._handle(packets)
                    if packets:
                        backoff.reset()
                return
            except Exception as error:  # a close, a reset, silence past idle_timeout_s
                if self.closed:
                    return
                self.report("RECEIVE", self.transport, 0, 0, error)
            self._close()
            self._acks.clear()
            started = time.perf_counter()
            while not self.closed:
                try:
                    self._connect()  # since= the last id seen: the server sends what was missed
                    break
                except Exception:
                    if not backoff.retry():
                        self.report("RECONNECT", self.transport, ms_since(started), 0,
                                    ClientError(f"gave up after {backoff.failures} attempts"))
                        return
            backoff.recovered()
            self.report("RECONNECT", self.transport, ms_since(started), 0)

    def _disconnect(self) -> None:
        self._close()  # as a closing tab does: the server notices (a closed socket, or pings unanswered)


class SocketIOWebSocketClient(SocketIOClient):
    """Engine.IO over a WebSocket: one packet per text frame."""

    engineio_transport = "websocket"
    transport = "socketio-websocket"
    _ws: websocket.WebSocket | None = None

    def _open(self) -> None:
        ws = websocket.create_connection(f"ws://{self.host}:{self.port}{PATH}&transport=websocket",
                                         timeout=self.timeout_s, enable_multithread=True, skip_utf8_validation=True)
        opened = ws.recv()
        if not opened.startswith(OPEN):
            ws.close()
            raise ClientError(f"Engine.IO did not open: {opened[:200]!r}")
        ws.settimeout(self.idle_timeout_s)
        self._ws = ws

    def _send_packets(self, packets: list[str]) -> None:
        for p in packets:
            self._ws.send(p)

    def _read_packets(self) -> list[str]:
        return [self._ws.recv()]

    def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.shutdown()
            except Exception:
                pass


class SocketIOPollingClient(SocketIOClient):
    """Engine.IO over HTTP long polling: one GET held by the server at a time, packets POSTed on a second
    keep-alive connection, as a browser's two concurrent requests would."""

    engineio_transport = "polling"
    transport = "socketio-polling"
    _sid: str | None = None
    _poll: JsonHttp | None = None
    _post: JsonHttp | None = None

    def _open(self) -> None:
        ping_interval_s = 25.0
        self._poll = JsonHttp(self.host, self.port, self.timeout_s + ping_interval_s + 20)
        self._post = JsonHttp(self.host, self.port, self.timeout_s)
        status, body = self._poll.request("GET", f"{PATH}&transport=polling")
        text = body.decode()
        if status != 200 or not text.startswith(OPEN):
            raise ClientError(f"Engine.IO did not open: {status} {text[:200]!r}")
        self._sid = json.loads(text[1:].split(SEPARATOR)[0])["sid"]

    def _send_packets(self, packets: list[str]) -> None:
        status, body = self._post.request("POST", f"{PATH}&transport=polling&sid={self._sid}",
                                          SEPARATOR.join(packets).encode(), content_type="text/plain;charset=UTF-8")
        if status != 200:
            raise ConnectionError(f"Engine.IO POST answered {status}: {body[:200]!r}")

    def _read_packets(self) -> list[str]:
        status, body = self._poll.request("GET", f"{PATH}&transport=polling&sid={self._sid}")
        if status != 200:
            raise ConnectionError(f"Engine.IO poll answered {status}: {body[:200]!r}")
        return [p for p in body.decode().split(SEPARATOR) if p and p != NOOP]

    def _close(self) -> None:
        for http in (self._poll, self._post):
            if http is not None:
                http.close()
        self._poll = self._post = None
