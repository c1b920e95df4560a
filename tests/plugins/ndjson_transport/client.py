"""The NDJSON stream's client part (gevent): read lines from an HTTP/1.0 response (no chunking, ended by
close), send with POST; reconnect with since= the last id seen."""

from __future__ import annotations

import json
import socket
import time

from clients.base import Backoff, ChatClient, ClientError, PostSender, ms_since


class NdjsonClient(PostSender, ChatClient):
    transport = "ndjson"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._sock: socket.socket | None = None
        self._buffer = b""

    def _connect(self) -> None:
        started = time.perf_counter()
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            sock.sendall(f"GET /rooms/{self.room}/ndjson?since={self.last_id} HTTP/1.0\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ClientError("closed before the head")
                data += chunk
            head, _, self._buffer = data.partition(b"\r\n\r\n")
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                raise ClientError(f"stream answered {head[:100]!r}")
            sock.settimeout(60.0)
        except Exception as error:
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        self._sock = sock
        self.report("CONNECT", self.transport, ms_since(started), 0)

    def _receive(self) -> None:
        backoff = Backoff()
        while not self.closed:
            try:
                while True:
                    *lines, self._buffer = self._buffer.split(b"\n")
                    received_at = time.time()
                    for line in lines:
                        if line:
                            self.deliver(json.loads(line), received_at)
                            backoff.reset()
                    chunk = self._sock.recv(65536)
                    if not chunk:
                        break
                    self._buffer += chunk
            except Exception as error:
                if self.closed:
                    return
                self.report("RECEIVE", self.transport, 0, 0, error)
            self._drop()
            started = time.perf_counter()
            while not self.closed:
                try:
                    self._connect()
                    break
                except Exception:
                    if not backoff.retry():
                        return
            self.report("RECONNECT", self.transport, ms_since(started), 0)

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is not None:
            sock.close()

    def _disconnect(self) -> None:
        self._drop()
        self.close_sender()
