"""WebSocket client: one connection that receives every message pushed to the room and carries sends."""

from __future__ import annotations

import json
import struct
import time
from collections import OrderedDict

import websocket  # websocket-client

from .base import (
    Backoff,
    ChatClient,
    ClientError,
    OnMessage,
    Report,
    ignore_report,
    ms_since,
)


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
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        # The server pings every 20 s by default, so this long without a frame means the peer is gone.
        self.idle_timeout_s = idle_timeout_s
        self.max_pending_sends = max_pending_sends
        self._ws: websocket.WebSocket | None = None
        self._pending: OrderedDict[tuple[str, float], None] = OrderedDict()  # sends awaiting their echo
        self._unsent: list[tuple[tuple[str, float], str]] = []  # sends made while reconnecting, sent once back

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        if self.room is None:
            raise RuntimeError("join a room before sending")
        if sent_at is None:
            sent_at = time.time()
        key = (user, sent_at)
        frame = json.dumps({"type": "send", "user": user, "text": text, "sent_at": sent_at})
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
            ws.send(frame)
        except Exception:
            # Not (wholly) written, so the server has not got it: the receiver is about to notice the
            # broken socket and reconnect; send it then.
            self._unsent.append((key, frame))

    def _connect(self) -> None:
        url = f"ws://{self.host}:{self.port}/rooms/{self.room}/ws?since={self.last_id}"
        started = time.perf_counter()
        try:
            ws = websocket.create_connection(
                url, timeout=self.timeout_s, enable_multithread=True, skip_utf8_validation=True
            )
        except Exception as error:
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        self.report("CONNECT", self.transport, ms_since(started), 0)
        ws.settimeout(self.idle_timeout_s)
        self._ws = ws

    def _receive(self) -> None:
        backoff = Backoff()
        while not self.closed:
            planned = False
            try:
                opcode, data = self._ws.recv_data()
            except Exception as error:  # silence past idle_timeout_s, a reset, a closed socket
                failure: BaseException = error
            else:
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self._on_frame(data, time.time())
                    backoff.reset()
                    continue
                if opcode != websocket.ABNF.OPCODE_CLOSE:
                    self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"unexpected frame opcode {opcode}"))
                    continue
                # 1012 (a drain) and 1001 (a shutdown) are the server asking us to go elsewhere, not failures.
                planned = close_code(data) in PLANNED_CLOSE_CODES
                failure = ClientError(f"server closed the WebSocket: {close_description(data)}")
            if self.closed:
                return
            if not planned:
                self.report("RECEIVE", self.transport, 0, 0, failure)
            if not self._reconnect(backoff):
                return

    def _reconnect(self, backoff: Backoff) -> bool:
        """Reconnect with backoff, resuming after the last id seen; report RECONNECT with the time from the
        disconnect to the new connection being open (the server sends what we missed right after)."""
        self._drop_socket()
        started = time.perf_counter()
        while backoff.retry():
            if self.closed:
                return False
            try:
                self._connect()  # since= the last id seen: the server resends what we missed
            except Exception:
                continue  # reported by _connect
            backoff.recovered()
            self.report("RECONNECT", self.transport, ms_since(started), 0)
            self._send_unsent()
            return True
        self.report(
            "RECONNECT", self.transport, ms_since(started), 0, ClientError(f"gave up after {backoff.failures} attempts")
        )
        self._fail_unsent(ClientError("never sent: the client gave up reconnecting"))
        return False

    def _send_unsent(self) -> None:
        """Send what was sent while reconnecting, in order; their echoes (SEND) will time the whole wait."""
        while self._unsent and self._ws is not None:
            key, frame = self._unsent.pop(0)
            if key not in self._pending:
                continue  # given up on meanwhile (too many pending)
            try:
                self._ws.send(frame)
            except Exception:
                self._unsent.insert(0, (key, frame))  # broken again: the receiver reconnects, then we retry
                return

    def _fail_unsent(self, error: BaseException) -> None:
        unsent, self._unsent = self._unsent, []
        for key, _ in unsent:
            self._pending.pop(key, None)
            self.report("SEND", self.transport, (time.time() - key[1]) * 1000, 0, error)

    def _on_frame(self, data: bytes | str, received_at: float) -> None:
        try:
            frame = json.loads(data)
            kind = frame.get("type")
        except (ValueError, AttributeError):
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"frame is not a JSON object: {data[:200]!r}"))
            return
        if kind == "message":
            key = (frame.get("user"), frame.get("sent_at"))
            if key in self._pending:
                del self._pending[key]
                self.report("SEND", self.transport, (received_at - key[1]) * 1000, len(data))
                if self.on_send_accepted is not None:
                    self.on_send_accepted(key[1])
            self.deliver(frame, received_at)
        elif kind == "error":
            # Only our sends draw errors; the frame does not say which one, so its echo stays pending.
            self.report("SEND", self.transport, 0, len(data), ClientError(f"server refused a send: {frame.get('error')}"))
        else:
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"unexpected frame type {kind!r}"))

    def _drop_socket(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.shutdown()
            except Exception:
                pass

    def _disconnect(self) -> None:
        self._unsent.clear()  # closing: what was never sent is not a failure of the server
        ws, self._ws = self._ws, None
        if ws is None:
            return
        try:
            # Say goodbye as a closing browser tab does, without waiting for the answer.
            ws.send_close(websocket.STATUS_NORMAL, b"bye")
        except Exception:
            pass
        try:
            ws.shutdown()
        except Exception:
            pass


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
