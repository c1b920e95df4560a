"""Server-Sent Events' own contract: the stream's head, resuming with Last-Event-ID, heartbeats, the bounded
queue, draining, and bad input answered before a stream starts."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from conftest import FLOOD_OK, UNIT
from helpers.receivers import EventStreamReceiver


async def post(session, base, room, text="hello", user="ann"):
    async with session.post(f"{base}/rooms/{room}/messages", json={"user": user, "text": text}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


async def test_a_stream_says_retry_then_sends_the_backlog_and_live_events(app_server, session):
    server = await app_server("sse", sse_retry_ms=2500)
    for i in range(3):
        await post(session, server.url, "r", str(i))
    async with session.get(f"{server.url}/rooms/r/events?since=1") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert await resp.content.readline() == b"retry: 2500\n"
        assert await resp.content.readline() == b"\n"
        head = [await resp.content.readline() for _ in range(3)]
        assert head[0] == b"id: 2\n" and head[2] == b"\n"
        assert json.loads(head[1][len(b"data: "):])["text"] == "1"
        await resp.content.readline(), await resp.content.readline(), await resp.content.readline()  # id 3
        live = await post(session, server.url, "r", "live")
        lines = [await resp.content.readline() for _ in range(3)]
    # The event's data is the message JSON every transport sends, byte for byte (the POST's 201 body).
    assert lines == [b"id: 4\n", b"data: " + json.dumps(live, separators=(",", ":"), ensure_ascii=False).encode()
                     + b"\n", b"\n"]


async def test_last_event_id_resumes_and_wins_over_since(app_server, session):
    server = await app_server("sse")
    for i in range(6):
        await post(session, server.url, "r", str(i))
    member = EventStreamReceiver(session, server.url, "r", since=0)
    async with session.get(f"{server.url}/rooms/r/events?since=1", headers={"Last-Event-ID": "4"}) as resp:
        task = asyncio.create_task(member.read_events(resp))
        await member.wait_for(2)
        task.cancel()
    assert member.ids() == [5, 6] and member.last_event_id == "6"


async def test_without_since_only_new_messages_arrive(app_server, session):
    server = await app_server("sse")
    await post(session, server.url, "r", "old")
    async with session.get(f"{server.url}/rooms/r/events") as resp:
        member = EventStreamReceiver(session, server.url, "r")
        task = asyncio.create_task(member.read_events(resp))
        await asyncio.sleep(0.2)
        await post(session, server.url, "r", "new")
        await member.wait_for(1)
        task.cancel()
    assert [m["text"] for m in member.received] == ["new"]


async def test_heartbeat_comments_keep_an_idle_stream_open(app_server, session):
    server = await app_server("sse", sse_heartbeat_s=0.1)
    member = EventStreamReceiver(session, server.url, "quiet")
    async with member:
        async with asyncio.timeout(5 * UNIT):
            while member.comments < 3:
                await asyncio.sleep(0.05)
    assert member.received == []


@pytest.mark.parametrize("method, path, headers, status", [
    ("GET", "/rooms/bad!room/events", {}, 400),
    ("GET", "/rooms/r/events?since=-1", {}, 400),
    ("GET", "/rooms/r/events?since=x", {}, 400),
    ("GET", "/rooms/r/events?since=1&since=2", {}, 400),
    ("GET", "/rooms/r/events", {"Last-Event-ID": "x"}, 400),
    ("GET", "/rooms/r/events", {"Last-Event-ID": "-3"}, 400),
    ("GET", "/rooms/r/events", {"Last-Event-ID": "99999999999999999999"}, 400),
    ("HEAD", "/rooms/r/events", {}, 405),
    ("POST", "/rooms/r/events", {}, 405),
])
async def test_bad_requests_are_refused_before_the_stream_starts(app_server, session, method, path, headers, status):
    server = await app_server("sse")
    async with session.request(method, f"{server.url}{path}", headers=headers) as resp:
        assert resp.status == status
        assert resp.content_type == "application/json"
        if method != "HEAD":
            assert (await resp.json())["error"]


async def test_a_slow_reader_is_cut_off_and_resumes_with_last_event_id(app_server, session):
    server = await app_server("sse", sse_send_queue=8, **FLOOD_OK)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the server's writes back up
    sock.connect(("127.0.0.1", server.port))
    raw_reader, raw_writer = await asyncio.open_connection(sock=sock)
    raw_writer.write(b"GET /rooms/flood/events?since=0 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await raw_reader.readuntil(b"\r\n\r\n")
    async with EventStreamReceiver(session, server.url, "flood") as healthy:
        text = "x" * 4000
        for _ in range(250):  # 4 MB in bursts of 4: more than the kernel buffers plus 8 queued events
            await asyncio.gather(*(post(session, server.url, "flood", text) for _ in range(4)))
        await healthy.wait_for(1000, timeout=30 * UNIT)
    assert healthy.ids() == list(range(1, 1001))
    assert server.transport("sse").hub.overflow_closes == 1

    # The slow member's stream: contiguous events, then the end of the chunked response.
    async with asyncio.timeout(10 * UNIT):
        data = await raw_reader.read()
    raw_writer.close()
    assert data.endswith(b"0\r\n\r\n")
    seen = [int(line[4:]) for line in data.split(b"\n") if line.startswith(b"id: ")]
    assert seen == list(range(1, len(seen) + 1)) and len(seen) < 1000

    member = EventStreamReceiver(session, server.url, "flood")
    async with session.get(f"{server.url}/rooms/flood/events", headers={"Last-Event-ID": str(seen[-1])}) as resp:
        task = asyncio.create_task(member.read_events(resp))
        await member.wait_for(1000 - len(seen), timeout=10 * UNIT)
        task.cancel()
    assert member.ids() == list(range(len(seen) + 1, 1001))


async def test_a_drain_ends_every_stream_and_refuses_new_ones(app_server, session):
    server = await app_server("sse")
    async with session.get(f"{server.url}/rooms/r/events?since=0") as stream:
        async with session.post(f"{server.url}/admin/drain") as resp:
            answer = await resp.json()
        assert answer["streams_closed"] == 1
        async with asyncio.timeout(5 * UNIT):
            rest = await stream.content.read()  # the response ends: EventSource would reconnect elsewhere
        assert rest.startswith(b"retry:")
    async with session.get(f"{server.url}/rooms/r/events?since=0") as resp:
        assert resp.status == 503 and "draining" in (await resp.json())["error"]


async def test_a_stream_older_than_its_limit_ends_and_the_client_resumes_with_last_event_id(app_server, session):
    server = await app_server("sse", sse_max_stream_s=0.3)
    await post(session, server.url, "r", "one")
    member = EventStreamReceiver(session, server.url, "r")
    async with session.get(f"{server.url}/rooms/r/events?since=0") as resp:
        async with asyncio.timeout(5 * UNIT):
            await member.read_events(resp)  # returns when the server ends the stream
    assert member.ids() == [1]
    await post(session, server.url, "r", "two")
    async with session.get(f"{server.url}/rooms/r/events?since=0", headers={"Last-Event-ID": "1"}) as resp:
        async with asyncio.timeout(5 * UNIT):
            await member.read_events(resp)
    assert member.ids() == [1, 2]


@pytest.mark.parametrize("version", ["1.1", "1.0"])
async def test_events_written_straight_through_are_framed_as_the_protocol_version_needs(app_server, session, version):
    server = await app_server("sse")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(f"GET /rooms/raw/events HTTP/{version}\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    chunked = b"transfer-encoding: chunked" in head.lower()
    assert chunked == (version == "1.1")
    hub = server.transport("sse").hub
    async with asyncio.timeout(5 * UNIT):
        while hub.members < 1 or not all(m.idle for ms in hub._rooms.rooms() for m in ms):
            await asyncio.sleep(0.01)
    for i in range(3):
        await post(session, server.url, "raw", f"m{i}")
    events = []
    async with asyncio.timeout(5 * UNIT):
        while len([e for e in events if e.startswith(b"id: ")]) < 3:
            if chunked:  # each chunk: its size in hex, CRLF, the bytes, CRLF
                size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
                chunk = await reader.readexactly(size + 2)
                assert chunk.endswith(b"\r\n")
                events += [e for e in chunk[:-2].split(b"\n\n") if e]
            else:
                events += [e for e in (await reader.readuntil(b"\n\n"))[:-2].split(b"\n\n") if e]
    writer.close()
    messages = [e for e in events if e.startswith(b"id: ")]
    assert [json.loads(e.split(b"\ndata: ", 1)[1])["text"] for e in messages] == ["m0", "m1", "m2"]
