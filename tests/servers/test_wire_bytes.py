"""The server's wire-byte counters move by exactly the bytes a raw-socket client sent and read."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct

import aiohttp
import pytest
from conftest import TRANSPORTS, UNIT

from experiments.figures import metric_total, parse_metrics

HEARTBEAT_OFF = {"ws_heartbeat_s": 3600.0, "sse_heartbeat_s": 3600.0}  # no ping may slip into a counted exchange


class RawClient:
    """One TCP connection that counts every byte it writes and reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.sent = 0
        self.received = 0
        self._buffer = b""

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def _fill(self) -> bool:
        chunk = await asyncio.wait_for(self.reader.read(65536), 5 * UNIT)
        self.received += len(chunk)
        self._buffer += chunk
        return bool(chunk)

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                raise EOFError(f"wanted {n} bytes, connection closed after {len(self._buffer)}")
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    async def read_head(self) -> tuple[int, dict[str, str]]:
        while b"\r\n\r\n" not in self._buffer:
            if not await self._fill():
                raise EOFError("connection closed inside a response head")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
        return int(status_line.split()[1]), headers

    async def read_response(self) -> tuple[int, bytes]:
        status, headers = await self.read_head()
        assert "chunked" not in headers.get("transfer-encoding", ""), "these tests expect Content-Length bodies"
        return status, await self.read_exactly(int(headers.get("content-length", "0")))

    async def read_frame(self) -> tuple[int, bytes]:
        """Read one unmasked server frame; return (opcode, payload)."""
        first, second = await self.read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.read_exactly(8))
        return first & 0x0F, await self.read_exactly(length)

    async def read_until(self, marker: bytes) -> bytes:
        """Read up to and including `marker` (e.g. the end of an event), whatever the framing around it."""
        while marker not in self._buffer:
            if not await self._fill():
                raise EOFError(f"connection closed before {marker!r}")
        data, _, self._buffer = self._buffer.partition(marker)
        return data + marker

    async def read_to_eof(self) -> bytes:
        while await self._fill():
            pass
        data, self._buffer = self._buffer, b""
        return data

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


def http_request(method: str, target: str, port: int, body: bytes = b"", close: bool = False) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post_body(text: str) -> bytes:
    return json.dumps({"user": "alice", "text": text}).encode()


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked as RFC 6455 requires."""
    mask = os.urandom(4)
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def ws_handshake(room: str, port: int, query: str = "") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /rooms/{room}/ws{query} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def scrape(url: str) -> dict:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        return parse_metrics(await response.text())


async def settled(url: str, expect: dict[tuple[str, str], float], before: dict) -> dict:
    """Scrape until every (metric, transport) in `expect` moved by its value since `before`, or time runs out.

    Bytes are counted as they cross the connection, but a connection's close, and the bytes it
    settles, are processed by the server a moment after the client sees EOF.
    """
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while True:
        after = await scrape(url)
        if all(delta(before, after, name, label) == value for (name, label), value in expect.items()):
            return after
        if asyncio.get_running_loop().time() > deadline:
            return after
        await asyncio.sleep(0.02)


def delta(before: dict, after: dict, name: str, transport: str) -> float:
    return metric_total(after, name, transport=transport) - metric_total(before, name, transport=transport)


def assert_moved(before: dict, after: dict, transport: str, **expected: float) -> None:
    got = {name: delta(before, after, f"rtlab_{name}", transport) for name in expected}
    assert got == expected, f"{transport}: server counted {got}, client counted {expected}"


def byte_expectation(transport: str, received: int, sent: int) -> dict[tuple[str, str], float]:
    return {
        ("rtlab_wire_received_bytes_total", transport): received,
        ("rtlab_wire_sent_bytes_total", transport): sent,
    }


async def test_short_polling_bytes_are_exact(app_server):
    server = await app_server("short-polling")
    before = await scrape(server.url)

    c = await RawClient.open(server.port)
    # Over 2 KiB, so aiohttp hands the response to transport.writelines rather than write.
    await c.send(http_request("POST", "/rooms/r1/messages", server.port, post_body("hello " * 500)))
    assert (await c.read_response())[0] == 201
    await c.send(http_request("GET", "/rooms/r1/messages?since=0", server.port))
    status, body = await c.read_response()
    assert status == 200 and len(json.loads(body)["messages"]) == 1
    await c.send(http_request("GET", "/rooms/r1/messages?since=1", server.port))  # empty poll
    assert (await c.read_response())[0] == 200
    await c.send(http_request("GET", "/no/such/route", server.port))
    assert (await c.read_response())[0] == 404
    # Two pipelined requests in one segment, the second closing the connection.
    await c.send(
        http_request("GET", "/healthz", server.port) + http_request("GET", "/rooms/r1/history", server.port, close=True)
    )
    assert (await c.read_response())[0] == 200
    assert (await c.read_response())[0] == 200
    assert await c.read_to_eof() == b""
    await c.close()

    # A request aiohttp cannot parse never reaches a route; its bytes still count.
    bad = await RawClient.open(server.port)
    await bad.send(b"NOT HTTP AT ALL\r\n\r\n")
    await bad.read_to_eof()
    await bad.close()

    sent, received = c.sent + bad.sent, c.received + bad.received
    after = await settled(server.url, byte_expectation("short-polling", sent, received), before)
    assert_moved(
        before, after, "short-polling",
        wire_received_bytes_total=sent, wire_sent_bytes_total=received,
        messages_accepted_total=1, messages_delivered_total=1, polls_total=2, empty_polls_total=1,
        connections_opened_total=2, connections_open=0,
    )


async def test_long_polling_bytes_are_exact(app_server):
    server = await app_server("long-polling")
    before = await scrape(server.url)

    poller = await RawClient.open(server.port)
    await poller.send(http_request("GET", "/rooms/r2/messages?since=0&wait=30", server.port))
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while metric_total(await scrape(server.url), "rtlab_long_polls_held") < 1:
        assert asyncio.get_running_loop().time() < deadline, "the long poll was never held"
        await asyncio.sleep(0.01)

    poster = await RawClient.open(server.port)
    await poster.send(http_request("POST", "/rooms/r2/messages", server.port, post_body("wake up"), close=True))
    assert (await poster.read_response())[0] == 201
    await poster.read_to_eof()
    await poster.close()

    status, body = await poller.read_response()
    assert status == 200 and len(json.loads(body)["messages"]) == 1
    await poller.send(http_request("GET", "/rooms/r2/messages?since=1&wait=0.05", server.port, close=True))
    status, body = await poller.read_response()
    assert status == 200 and json.loads(body)["messages"] == []
    await poller.read_to_eof()
    await poller.close()

    sent, received = poller.sent + poster.sent, poller.received + poster.received
    after = await settled(server.url, byte_expectation("long-polling", sent, received), before)
    assert_moved(
        before, after, "long-polling",
        wire_received_bytes_total=sent, wire_sent_bytes_total=received,
        messages_accepted_total=1, messages_delivered_total=1, polls_total=2, empty_polls_total=1,
        connections_opened_total=2, connections_open=0, long_polls_held=0,
    )


async def websocket_session(port: int, room: str) -> RawClient:
    """Handshake, send a message and read it back, ping, close: every byte counted by the client."""
    c = await RawClient.open(port)
    await c.send(ws_handshake(room, port, "?since=0"))
    status, headers = await c.read_head()
    assert status == 101 and headers["upgrade"].lower() == "websocket"

    await c.send(masked_frame(0x1, json.dumps({"type": "send", "user": "bob", "text": "hi there"}).encode()))
    opcode, payload = await c.read_frame()
    assert opcode == 0x1 and json.loads(payload)["text"] == "hi there"

    await c.send(masked_frame(0x9, b"are you there"))
    assert await c.read_frame() == (0xA, b"are you there")

    await c.send(masked_frame(0x8, struct.pack("!H", 1000) + b"bye"))
    opcode, payload = await c.read_frame()
    assert opcode == 0x8 and struct.unpack("!H", payload[:2])[0] == 1000
    await c.read_to_eof()
    await c.close()
    return c


async def test_websocket_bytes_are_exact(app_server):
    server = await app_server("websocket", **HEARTBEAT_OFF)
    before = await scrape(server.url)

    c = await websocket_session(server.port, "r3")

    after = await settled(server.url, byte_expectation("websocket", c.sent, c.received), before)
    assert_moved(
        before, after, "websocket",
        wire_received_bytes_total=c.sent, wire_sent_bytes_total=c.received,
        messages_accepted_total=1, messages_delivered_total=1,
        connections_opened_total=1, connections_open=0,
    )


async def event_stream_session(port: int, room: str, heartbeats: int = 0) -> RawClient:
    """Open a stream after id 0 (the room holds one message), read the retry line, that event, a live one
    posted on another connection and `heartbeats` comments, then hang up: every byte counted."""
    c = await RawClient.open(port)
    await c.send(http_request("GET", f"/rooms/{room}/events?since=0", port))
    status, headers = await c.read_head()
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert headers["transfer-encoding"] == "chunked"
    assert b"retry: " in await c.read_until(b"\n\n\r\n")
    assert b"id: 1\n" in await c.read_until(b"\n\n\r\n")
    poster = await RawClient.open(port)
    await poster.send(http_request("POST", f"/rooms/{room}/messages", port, post_body("live"), close=True))
    assert (await poster.read_response())[0] == 201
    await poster.read_to_eof()
    await poster.close()
    assert b"id: 2\n" in await c.read_until(b"\n\n\r\n")
    for _ in range(heartbeats):
        assert await c.read_until(b": ping\n\n\r\n")
    await c.close()
    c.sent += poster.sent  # the post's bytes are this session's too
    c.received += poster.received
    return c


async def test_event_stream_bytes_are_exact_heartbeats_and_chunk_framing_included(app_server):
    server = await app_server("sse", sse_heartbeat_s=0.2)
    poster = await RawClient.open(server.port)
    await poster.send(http_request("POST", "/rooms/r6/messages", server.port, post_body("first"), close=True))
    assert (await poster.read_response())[0] == 201
    await poster.read_to_eof()
    await poster.close()
    before = await scrape(server.url)

    c = await event_stream_session(server.port, "r6", heartbeats=2)

    after = await settled(server.url, byte_expectation("sse", c.sent, c.received), before)
    assert_moved(
        before, after, "sse",
        wire_received_bytes_total=c.sent, wire_sent_bytes_total=c.received,
        messages_accepted_total=1, messages_delivered_total=2, connections_opened_total=2, connections_open=0,
    )


async def test_all_transports_attribute_each_request_to_its_transport(app_server):
    server = await app_server(TRANSPORTS, **HEARTBEAT_OFF)
    before = await scrape(server.url)
    port = server.port
    counted = {label: [0, 0] for label in ("common", *TRANSPORTS)}

    async def exchange(c: RawClient, label: str, request: bytes) -> tuple[int, bytes]:
        sent, received = c.sent, c.received
        await c.send(request)
        response = await c.read_response()
        counted[label][0] += c.sent - sent
        counted[label][1] += c.received - received
        return response

    # One keep-alive connection carries requests of three labels, one after another.
    c = await RawClient.open(port)
    assert (await exchange(c, "common", http_request("POST", "/rooms/r4/messages", port, post_body("one"))))[0] == 201
    assert (await exchange(c, "short-polling", http_request("GET", "/rooms/r4/messages?since=0", port)))[0] == 200
    assert (await exchange(c, "long-polling", http_request("GET", "/rooms/r4/messages?since=1&wait=0.05", port)))[0] == 200
    assert (await exchange(c, "short-polling", http_request("GET", "/rooms/r4/messages?since=1&wait=0", port)))[0] == 200
    assert (await exchange(c, "common", http_request("GET", "/healthz", port, close=True)))[0] == 200
    extra = len(await c.read_to_eof())
    counted["common"][1] += extra
    await c.close()

    ws = await websocket_session(port, "r5")
    counted["websocket"] = [ws.sent, ws.received]
    # The stream, then its live post (a common route: the POST is nobody's transport but the server's).
    stream = await RawClient.open(port)
    await stream.send(http_request("GET", "/rooms/r4/events?since=0", port))
    await stream.read_head()
    await stream.read_until(b"\n\n\r\n")  # retry:
    await stream.read_until(b"\n\n\r\n")  # the message posted above
    await stream.close()
    counted["sse"] = [stream.sent, stream.received]

    expect = {}
    for label, (sent, received) in counted.items():
        expect.update(byte_expectation(label, sent, received))
    after = await settled(server.url, expect, before)
    for label, (sent, received) in counted.items():
        assert_moved(before, after, label, wire_received_bytes_total=sent, wire_sent_bytes_total=received)
    assert_moved(before, after, "common", messages_accepted_total=1, connections_opened_total=1)
    assert_moved(before, after, "short-polling", polls_total=2, empty_polls_total=1, messages_delivered_total=1)
    assert_moved(before, after, "long-polling", polls_total=1, empty_polls_total=1, messages_delivered_total=0)
    assert_moved(
        before, after, "websocket", messages_accepted_total=1, messages_delivered_total=1, connections_opened_total=1
    )
    assert_moved(before, after, "sse", messages_delivered_total=1, connections_opened_total=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_scraping_moves_no_figure(app_server, transport):
    server = await app_server(transport)
    first = await scrape(server.url)
    for _ in range(3):
        last = await scrape(server.url)
    counters = [
        "rtlab_wire_received_bytes_total", "rtlab_wire_sent_bytes_total", "rtlab_connections_opened_total",
        "rtlab_connections_open", "rtlab_requests_total",
    ]
    for name in counters:
        assert metric_total(last, name) == metric_total(first, name) == 0, name
