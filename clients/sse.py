"""Server-Sent Events client: read the room's event stream as a browser's EventSource does; send with POST."""

from __future__ import annotations

import time

import gevent
import orjson

from .base import (
    Backoff,
    ChatClient,
    ClientError,
    OnMessage,
    PostSender,
    Report,
    ignore_report,
    ms_since,
)
from .completeness import ResumePoint
from .http import Stream
from .reactor import Watch

# The stream is parsed by a small parser of our own rather than through an HTTP library: a response that never
# ends must be readable and closable from another greenlet, and the parse runs for every event a member receives,
# on the load generator's hot path (chunked decoding, `id:`/`data:` lines: about forty lines here). Whichever HTTP
# carries it (clients/http.py), the body's bytes come here; over HTTP/1.1 they are still chunked.


class StreamEnded(Exception):
    """The server ended the stream (drain, shutdown, a full queue): reconnect with Last-Event-ID."""


class EventStream:
    """The body of one `text/event-stream` response, chunked (HTTP/1.1) or not (HTTP/2, HTTP/1.0): events."""

    def __init__(self, chunked: bool = False) -> None:
        self._raw = bytearray()  # received, not yet de-chunked
        self._text = bytearray()  # de-chunked, not yet parsed into events
        self._chunked = chunked
        self._chunk_left = 0  # body bytes left in the current chunk
        self._ended = False
        self.retry_ms: int | None = None

    def feed(self, data: bytes) -> list[tuple[str | None, bytes]]:
        """Add bytes read elsewhere (the reactor); return the events they complete. `ended` says whether the
        response ended with them (a last chunk)."""
        self._raw += data
        return self.take()

    @property
    def ended(self) -> bool:
        return self._ended

    def end_of_input(self) -> None:
        """The connection (or the h2 stream) ended: an unchunked stream ends here; a chunked one broke mid-stream."""
        if self._chunked:
            raise ConnectionError("the connection closed mid-stream")
        self._ended = True

    def take(self) -> list[tuple[str | None, bytes]]:
        """The complete events among the bytes received so far, as (id or None, data)."""
        self._dechunk()
        text = self._text
        events = []
        end = text.find(b"\n\n")
        while end >= 0:
            event = self._parse(bytes(text[:end]))
            del text[: end + 2]
            if event is not None:
                events.append(event)
            end = text.find(b"\n\n")
        return events

    def _parse(self, block: bytes) -> tuple[str | None, bytes] | None:
        event_id, data = None, []
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line.startswith(b"id:"):
                event_id = (line[4:] if line[3:4] == b" " else line[3:]).decode()
            elif line.startswith(b"retry:"):
                value = line[6:].strip()
                if value.isdigit():
                    self.retry_ms = int(value)
            # A line starting with ":" is a comment (the heartbeat); other fields are ignored, as EventSource does.
        if not data:
            return None
        return event_id, data[0] if len(data) == 1 else b"\n".join(data)

    def _dechunk(self) -> None:
        raw = self._raw
        if not self._chunked:
            self._append(raw)
            raw.clear()
            return
        while raw and not self._ended:
            if self._chunk_left == 0:
                line_end = raw.find(b"\r\n")
                if line_end < 0:
                    return
                size = int(bytes(raw[:line_end]).split(b";")[0], 16)
                if size == 0:
                    self._ended = True
                    return
                del raw[: line_end + 2]
                self._chunk_left = size + 2  # the chunk and its CRLF
            take = min(self._chunk_left, len(raw))
            piece = raw[:take]
            self._chunk_left -= take
            if self._chunk_left < 2:  # part of the chunk's trailing CRLF was taken
                piece = piece[: len(piece) - (2 - self._chunk_left)]
            self._append(piece)
            del raw[:take]

    def _append(self, data: bytes | bytearray) -> None:
        if b"\r" in data:
            data = bytes(data).replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        self._text += data


class SSEClient(PostSender, ChatClient):
    """Joins with `GET /rooms/{room}/events?since=ID` and sends with POST on a second connection.

    When the stream ends (a drain, a shutdown, an overflowing queue) or breaks, it reconnects as
    EventSource does: after the server's `retry:` delay, to the same URL, with `Last-Event-ID` the last id
    it saw, so the server resumes after it; failures back off with jitter. RECONNECT times the gap from
    the stream's end to the new stream being open. A stream silent past `idle_timeout_s` (the server sends a
    comment every 15 s by default) is taken as broken.
    """

    transport = "sse"

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        timeout_s: float = 10.0,
        idle_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self.idle_timeout_s = idle_timeout_s
        self.retry_ms = 1000  # until the server says otherwise (retry:)
        self._since = 0  # the join point: the URL's since=, as EventSource keeps its URL
        self._stream: EventStream | None = None  # the parser of the open stream's body
        self._opened: Stream | None = None  # the open stream (clients/http.py)
        self._watch: Watch | None = None  # the reactor's watch on the open stream: bytes arrive in _on_data
        self._backoff = Backoff()

    def _start_from(self, point: ResumePoint) -> None:
        super()._start_from(point)
        self._since = point.since

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            opened = self._opened = self._open()
            self._stream = EventStream(opened.chunked)
            # What came with the head (a backlog) is parsed now; the rest arrives through the reactor.
            self._watch = opened.watch(self._on_data)
            self._on_data(opened.take_buffered())
        except Exception as error:
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        self.report("CONNECT", self.transport, ms_since(started), 0)

    def _open(self) -> Stream:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id > self._since:
            headers["Last-Event-ID"] = str(self.last_id)
        opened = self.http.open_stream(f"/rooms/{self.room}/events?since={self._since}", headers, self.timeout_s)
        if opened.status != 200 or not opened.headers.get("content-type", "").startswith("text/event-stream"):
            body = opened.take_buffered()[:200]
            opened.close()
            raise ClientError(f"stream answered {opened.status}: {body!r}")
        return opened

    def _receive(self) -> None:
        """Wait for the stream's end (the reactor feeds its bytes to `_on_data` meanwhile), then reconnect."""
        backoff = self._backoff
        while not self.closed:
            stream, watch = self._stream, self._watch
            failure = watch.wait(self.idle_timeout_s) if watch is not None else ClientError("not connected")
            if stream is not None and stream.retry_ms is not None:
                self.retry_ms = stream.retry_ms
            if self.closed:
                return
            if failure is None:
                try:
                    stream.end_of_input()
                    failure = StreamEnded("the stream ended")
                except ConnectionError as error:
                    failure = error
            if not isinstance(failure, StreamEnded):  # an end the server chose is not a failure
                self.report("RECEIVE", self.transport, 0, 0, failure)
            if not self._reconnect(backoff):
                return

    def _on_data(self, data: bytes) -> None:
        """Bytes from the reactor: complete events go to the owner; the last chunk ends the watch."""
        stream = self._stream
        events = stream.feed(data)
        if events:
            received_at = time.time()
            for _, payload in events:
                try:
                    message = orjson.loads(payload)
                except ValueError:
                    self.report("RECEIVE", self.transport, 0, len(payload),
                                ClientError(f"event data is not JSON: {payload[:200]!r}"))
                    continue
                self.deliver(message, received_at)
            if self._backoff.failures:
                self._backoff.reset()
        if stream.ended:
            self._watch.end(StreamEnded("the server ended the stream"))

    def _reconnect(self, backoff: Backoff) -> bool:
        """Reconnect as EventSource does (the server's retry delay first, then backoff on failures), resuming
        after the last id seen; report RECONNECT from the stream's end to the new stream being open."""
        self._drop_stream()
        started = time.perf_counter()
        gevent.sleep(self.retry_ms / 1000)
        while not self.closed:
            try:
                self._connect()
            except Exception:
                if backoff.retry():
                    continue
                self.report("RECONNECT", self.transport, ms_since(started), 0,
                            ClientError(f"gave up after {backoff.failures} attempts"))
                return False
            backoff.recovered()
            self.report("RECONNECT", self.transport, ms_since(started), 0)
            return True
        return False

    def _drop_stream(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()  # before the socket closes: its descriptor number may be reused at once
        self._stream = None
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.close()

    def _disconnect(self) -> None:
        self._drop_stream()
        self.close_sender()
