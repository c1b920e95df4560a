"""Check clients.websocket.write_text under gevent (run as a subprocess: it monkey-patches, which the pytest
process must not): frames bigger than the socket's buffer (a partial write, then sendall) and frames written
while another greenlet holds websocket-client's lock mid-frame arrive whole, unmixed, in order. Prints JSON."""

from gevent import monkey

monkey.patch_all()

import json
import socket
import sys
import threading
from types import SimpleNamespace

import gevent

from clients.websocket import write_text

BIG = 4 * 1024 * 1024  # far past a socketpair's send buffer


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split masked client frames into (first byte, unmasked payload); raise on a truncated or mixed stream."""
    out, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        length, head = second & 0x7F, 2
        if length == 126:
            length, head = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            length, head = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
        if not second & 0x80:
            raise ValueError(f"an unmasked frame at byte {pos}")
        key = data[pos + head:pos + head + 4]
        start = pos + head + 4
        if start + length > len(data):
            raise ValueError(f"a frame cut short at byte {pos}")
        mask = int.from_bytes((key * (length // 4 + 1))[:length], "big")
        payload = (int.from_bytes(data[start:start + length], "big") ^ mask).to_bytes(length, "big")
        out.append((first, payload))
        pos = start + length
    return out


def main() -> int:
    writer, reader = socket.socketpair()
    ws = SimpleNamespace(sock=writer, lock=threading.Lock())
    received = bytearray()

    def read_slowly() -> None:
        while True:
            gevent.sleep(0.001)
            chunk = reader.recv(65536)
            if not chunk:
                return
            received.extend(chunk)

    def pong_holding_the_lock() -> None:
        # As websocket-client's pong does when the socket's buffer is full: the lock held from the frame's first
        # byte to its last, with a wait between. A text frame written in the middle would break the stream.
        with ws.lock:
            writer.sendall(b"\x8a\x84\x00\x00\x00\x00po")
            gevent.sleep(0.05)
            writer.sendall(b"ng")

    texts = [b"a" * BIG, b"small-1", b"b" * BIG, b"small-2"]
    reading = gevent.spawn(read_slowly)
    write_text(ws, texts[0])  # cannot go out in one write: the rest through sendall, the reader draining meanwhile
    holder = gevent.spawn(pong_holding_the_lock)
    gevent.sleep(0)  # the holder takes the lock
    locked_while_writing = ws.lock.locked()
    for text in texts[1:]:
        write_text(ws, text)
    holder.join()
    writer.shutdown(socket.SHUT_WR)
    reading.join(timeout=30)
    got = frames(bytes(received))
    print(json.dumps({
        "locked_while_writing": locked_while_writing,
        "frames": [[first, len(payload)] for first, payload in got],
        "texts_intact": [payload for first, payload in got if first == 0x81] == texts,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
