"""Kernel-level cross-check: a loopback packet capture sees the same TCP payload the server counted, plus headers."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import REQUIRE_ALL, UNIT
from test_wire_bytes import (
    RawClient,
    http_request,
    post_body,
    scrape,
    websocket_session,
)

from experiments.figures import metric_total
from experiments.tcpcount import PortCapture


def capture_or_skip(port: int) -> PortCapture:
    try:
        return PortCapture(port).start()
    except (PermissionError, AttributeError, OSError) as error:  # not root, not Linux, no loopback
        reason = f"a loopback packet capture needs CAP_NET_RAW on Linux ({error})"
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {reason}")
        pytest.skip(reason)


@pytest.mark.parametrize("transport", ["short-polling", "websocket", "sse"])
async def test_capture_payload_matches_the_server_counters(app_server, transport):
    server = await app_server(transport, ws_heartbeat_s=3600.0, sse_heartbeat_s=0.1)
    if transport == "sse":  # posted before the capture starts: it sees one connection only
        poster = await RawClient.open(server.port)
        await poster.send(http_request("POST", "/rooms/k1/messages", server.port, post_body("over the wire"), close=True))
        await poster.read_response()
        await poster.read_to_eof()
        await poster.close()
    before = await scrape(server.url)  # scrapes happen outside the capture: it sees one connection only
    capture = capture_or_skip(server.port)
    try:
        if transport == "websocket":
            await websocket_session(server.port, "k1")
        elif transport == "sse":  # the stream's head, retry, the event and a heartbeat, then the client hangs up
            c = await RawClient.open(server.port)
            await c.send(http_request("GET", "/rooms/k1/events?since=0", server.port))
            await c.read_head()
            await c.read_until(b"id: 1\n")
            await c.read_until(b": ping\n\n\r\n")
            await c.close()
        else:
            c = await RawClient.open(server.port)
            await c.send(http_request("POST", "/rooms/k1/messages", server.port, post_body("over the wire")))
            await c.read_response()
            await c.send(http_request("GET", "/rooms/k1/messages?since=0", server.port, close=True))
            await c.read_response()
            await c.read_to_eof()
            await c.close()
        # Every payload byte of a direction precedes its FIN, so once both FINs are seen, all is.
        deadline = asyncio.get_running_loop().time() + 5 * UNIT
        while not (capture.snapshot().to_server.fin and capture.snapshot().from_server.fin):
            assert asyncio.get_running_loop().time() < deadline, capture.snapshot()
            await asyncio.sleep(0.02)
    finally:
        counts = capture.stop()
    after = await scrape(server.url)

    def moved(name: str) -> float:
        return metric_total(after, name) - metric_total(before, name)

    assert counts.dropped == 0
    assert counts.to_server.payload_bytes == moved("rtlab_wire_received_bytes_total")
    assert counts.from_server.payload_bytes == moved("rtlab_wire_sent_bytes_total")
    # What the payload counters leave out: headers, the handshake, bare ACKs.
    assert counts.to_server.syn == counts.from_server.syn == 1
    assert counts.to_server.header_bytes >= 40 * counts.to_server.packets  # IPv4 20 + TCP 20 at least
    assert counts.to_server.bare_acks + counts.from_server.bare_acks >= 1


async def test_capture_counts_only_its_port(app_server):
    server = await app_server("short-polling")
    capture = capture_or_skip(server.port)
    try:
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other.listen()
        s = socket.create_connection(other.getsockname())
        s.sendall(b"x" * 1000)
        s.close()
        other.close()
        await asyncio.sleep(0.1)
    finally:
        counts = capture.stop()
    assert counts.to_server.packets == counts.from_server.packets == 0
