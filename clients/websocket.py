"""WebSocket client: one connection that receives every message pushed to the room and carries sends."""

from __future__ import annotations

import os
import struct
import time
from collections import OrderedDict

import orjson

from .base import (
    Backoff,
    ChatClient,
    ClientError,
    OnMessage,
    Report,
    ignore_report,
    ms_since,
)
from .http import Stream, write_frame
from .reactor import Watch

OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA


class WebSocketClient(ChatClient):
    """Joins with `GET /rooms/{room}/ws?since=ID`; sends `{"type":"send",...}` frames on the same socket.

    The server echoes a member's own message back to it; the SEND latency is the time from the
    send's due time (`sent_at`) to that echo. When the server closes the socket (1012 drain, 1001
    shutdown, 1013 overflow), the connection breaks (1006: a crash) or it goes silent, the client
    reconnects with jittered exponential backoff and `since=` the last id it saw, so a resumable
    interruption loses nothing, and reports RECONNECT with how long it took. A close it was asked
    for (1012, 1001) is not a RECEIVE failure; any other break is. Sends made while reconnecting
    are kept and sent once connected again (their SEND latency includes the wait).
    """

    transport = "websocket"

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
        max_pending_sends: int = 10_000,
        max_message_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        # The server pings every 20 s by default, so this long without a frame means the peer is gone.
        self.idle_timeout_s = idle_timeout_s
        self.max_pending_sends = max_pending_sends
        self.max_message_bytes = max_message_bytes  # a longer frame from the server is a protocol error
        self._watch: Watch | None = None  # the reactor's watch on the open socket: frames arrive in _on_data
        self._backoff = Backoff()
        self._partial = b""  # the start of a frame whose end has not arrived yet
        self._fragments: list[bytes] | None = None  # a fragmented message's frames so far
        self._fragment_opcode = OPCODE_TEXT
        self._close_payload: bytes | None = None  # the server's close frame, once it came
        self._ws: Stream | None = None  # the open WebSocket's tunnel (clients/http.py): frames go up it
        self._pending: OrderedDict[tuple[str, float], None] = OrderedDict()  # sends awaiting their echo
        self._unsent: list[tuple[tuple[str, float], str]] = []  # sends made while reconnecting, sent once back

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        if self.room is None:
            raise RuntimeError("join a room before sending")
        if sent_at is None:
            sent_at = time.time()
        key = (user, sent_at)
        frame = orjson.dumps({"type": "send", "user": user, "text": text, "sent_at": sent_at})
        self._pending[key] = None
        if len(self._pending) > self.max_pending_sends:
            (_, old_sent_at), _ = self._pending.popitem(last=False)
            self.report("SEND", self.transport, (time.time() - old_sent_at) * 1000, 0, ClientError("no echo"))
        ws = self._ws
        if ws is None:
            # Reconnecting: keep it, as a chat page keeps what its user typed, and send it once back.
            self._unsent.append((key, frame))
            return
        try:
            ws.write(masked_text_frame(frame, os.urandom(4)))
        except Exception:
            # Not (wholly) written, so the server has not got it: the receiver is about to notice the
            # broken socket and reconnect; send it then.
            self._unsent.append((key, frame))

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            ws = self.http.open_websocket(f"/rooms/{self.room}/ws?since={self.last_id}", self.timeout_s)
        except Exception as error:
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        self.report("CONNECT", self.transport, ms_since(started), 0)
        self._ws = ws
        self._partial, self._fragments, self._close_payload = b"", None, None
        self._watch = ws.watch(self._on_data)
        buffered = ws.take_buffered()  # frames that came with the handshake's answer
        if buffered:
            self._on_data(buffered)

    def _receive(self) -> None:
        """Wait for the socket's end (the reactor feeds its frames to `_on_data` meanwhile), then reconnect."""
        backoff = self._backoff
        while not self.closed:
            watch = self._watch
            failure = watch.wait(self.idle_timeout_s) if watch is not None else ClientError("not connected")
            if self.closed:
                return
            close, self._close_payload = self._close_payload, None
            if close is not None:
                # 1012 (a drain) and 1001 (a shutdown) are the server asking us to go elsewhere, not failures.
                planned = close_code(close) in PLANNED_CLOSE_CODES
                failure = ClientError(f"server closed the WebSocket: {close_description(close)}")
            else:
                planned = False
                failure = failure or ClientError("the connection closed without a close frame (1006)")
            if not planned:
                self.report("RECEIVE", self.transport, 0, 0, failure)
            if not self._reconnect(backoff):
                return

    def _on_data(self, data: bytes) -> None:
        """Bytes from the reactor: split them into frames (server frames are unmasked) and handle each."""
        if self._partial:
            data = self._partial + data
            self._partial = b""
        received_at = time.time()  # every frame in these bytes arrived now
        end = len(data)
        pos = 0
        while end - pos >= 2:
            first, second = data[pos], data[pos + 1]
            if second & 0x80:
                raise ClientError("the server sent a masked frame")
            length = second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                head = 10
            if length > self.max_message_bytes:
                raise ClientError(f"a frame of {length} bytes is over the limit of {self.max_message_bytes}")
            if end - pos < head + length:
                break
            payload = data[pos + head:pos + head + length]
            pos += head + length
            if first == 0x81:  # a whole text frame: every chat message
                self._on_frame(payload, received_at)
                continue
            if first & 0x70:
                raise ClientError("a frame with RSV bits set: no extension was negotiated")
            self._on_raw_frame(first & 0x0F, bool(first & 0x80), payload, received_at)
        if pos < end:
            self._partial = data[pos:]

    def _on_raw_frame(self, opcode: int, fin: bool, payload: bytes, received_at: float) -> None:
        if opcode == OPCODE_CONTINUATION:
            if self._fragments is None:
                raise ClientError("a continuation frame with no message to continue")
            self._fragments.append(payload)
            if not fin:
                return
            opcode, payload = self._fragment_opcode, b"".join(self._fragments)
            self._fragments = None
        elif not fin and opcode in (OPCODE_TEXT, OPCODE_BINARY):
            self._fragment_opcode, self._fragments = opcode, [payload]
            return
        if opcode == OPCODE_TEXT:
            self._on_frame(payload, received_at)
        elif opcode == OPCODE_PING:
            ws = self._ws
            if ws is not None:
                try:
                    ws.write(masked_frame(OPCODE_PONG, payload, os.urandom(4)))
                except Exception:
                    pass  # broken: the reactor sees the end next
        elif opcode == OPCODE_CLOSE:
            self._close_payload = payload
            if self._watch is not None:
                self._watch.end(None)
        elif opcode != OPCODE_PONG:
            self.report("RECEIVE", self.transport, 0, len(payload), ClientError(f"unexpected frame opcode {opcode}"))

    def _reconnect(self, backoff: Backoff) -> bool:
        """Reconnect with backoff, resuming after the last id seen; report RECONNECT with the time from the
        disconnect to the new connection being open (the server sends what we missed right after)."""
        self._drop_socket()
        if self._reconnect_with(backoff, time.perf_counter()):
            self._send_unsent()
            return True
        self._fail_unsent(ClientError("never sent: the client gave up reconnecting"))
        return False

    def _send_unsent(self) -> None:
        """Send what was sent while reconnecting, in order; their echoes (SEND) will time the whole wait."""
        while self._unsent and self._ws is not None:
            key, frame = self._unsent.pop(0)
            if key not in self._pending:
                continue  # given up on meanwhile (too many pending)
            try:
                self._ws.write(masked_text_frame(frame, os.urandom(4)))
            except Exception:
                self._unsent.insert(0, (key, frame))  # broken again: the receiver reconnects, then we retry
                return

    def _fail_unsent(self, error: BaseException) -> None:
        unsent, self._unsent = self._unsent, []
        for key, _ in unsent:
            self._pending.pop(key, None)
            self.report("SEND", self.transport, (time.time() - key[1]) * 1000, 0, error)

    def _on_frame(self, data: bytes, received_at: float) -> None:
        try:
            frame = orjson.loads(data)
            kind = frame.get("type")
        except (ValueError, AttributeError):
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"frame is not a JSON object: {data[:200]!r}"))
            return
        if kind == "message":
            if self._pending:  # a send of ours awaits its echo: is this it?
                self._accept_echo(self._pending, frame, received_at, len(data))
            if self._backoff.failures:
                self._backoff.reset()  # the connection delivers again
            self.deliver(frame, received_at)
        elif kind == "error":
            # Only our sends draw errors; the frame does not say which one, so its echo stays pending.
            self.report("SEND", self.transport, 0, len(data), ClientError(f"server refused a send: {frame.get('error')}"))
        else:
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"unexpected frame type {kind!r}"))

    def _stop_watching(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()  # before the socket closes: its descriptor number may be reused at once

    def _drop_socket(self) -> None:
        self._stop_watching()
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.close()

    def _disconnect(self) -> None:
        self._unsent.clear()  # closing: what was never sent is not a failure of the server
        self._stop_watching()
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            # Say goodbye as a closing browser tab does, without waiting for the answer.
            ws.write(masked_frame(OPCODE_CLOSE, struct.pack("!H", 1000) + b"bye", os.urandom(4)))
        except Exception:
            pass
        ws.close()


def write_text(ws, payload: bytes) -> None:
    """Send one text message as a single frame on websocket-client's socket, masked as a client must (RFC 6455
    section 5.3); websocket-client's `send` builds the same frame through its ABNF object, an encode and a length
    check: about 40 µs of the load generator's CPU per message sent (py-spy)."""
    write_frame(ws, masked_text_frame(payload, os.urandom(4)))


def masked_text_frame(payload: bytes, key: bytes) -> bytes:
    """A final text frame carrying `payload`, masked with the four bytes of `key`."""
    return masked_frame(OPCODE_TEXT, payload, key)


def masked_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    """A final frame of `opcode` carrying `payload`, masked with the four bytes of `key`."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = struct.pack("!BBH", first, 0xFE, n)
    else:
        head = struct.pack("!BBQ", first, 0xFF, n)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "big")
    return head + key + (int.from_bytes(payload, "big") ^ mask).to_bytes(n, "big")


PLANNED_CLOSE_CODES = (1001, 1012)  # going away (shutdown), service restart (drain)


def close_code(data: bytes) -> int | None:
    """Return the code of a close frame's payload, or None when it has none."""
    return struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None


def close_description(data: bytes) -> str:
    """Describe a close frame's payload: its code and reason."""
    if len(data) < 2:
        return "no close code"
    (code,) = struct.unpack("!H", data[:2])
    reason = data[2:].decode("utf-8", "replace")
    return f"{code} {reason}".strip()
