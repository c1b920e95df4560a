"""The wire contract, one suite over every transport, against real sockets on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import aiohttp
import pytest

from conftest import FLOOD_OK, TRANSPORTS, UNIT
from helpers.receivers import receiver


def Receiver(session, base, transport, room, since=0):  # noqa: N802  (reads as the class it returns)
    return receiver(session, base, transport, room, since)


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


async def post(session, base, room, user="ann", text="hello", sent_at=None, status=201):
    body = {"user": user, "text": text}
    if sent_at is not None:
        body["sent_at"] = sent_at
    async with session.post(f"{base}/rooms/{room}/messages", json=body) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_healthz_names_the_transport(app_server, session, transport):
    server = await app_server(transport)
    async with session.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "ok" and body["transports"] == [transport]
    assert not any(body["compression"].values())  # off unless asked for, whichever transport reports it


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_post_and_receive(app_server, session, transport):
    server = await app_server(transport)
    async with Receiver(session, server.url, transport, "lobby") as member:
        sent = [await post(session, server.url, "lobby", "ann", f"msg {i}", sent_at=100.0 + i) for i in range(5)]
        got = await member.wait_for(5)
    assert [m["id"] for m in sent] == [1, 2, 3, 4, 5]
    assert got == sent  # same message, same format, whatever the transport
    assert {m["sent_at"] for m in got} == {100.0, 101.0, 102.0, 103.0, 104.0}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_since_catches_up(app_server, session, transport):
    server = await app_server(transport)
    for i in range(10):
        await post(session, server.url, "r", text=str(i))
    async with Receiver(session, server.url, transport, "r", since=4) as member:
        await member.wait_for(6)
        await post(session, server.url, "r", text="live")
        await member.wait_for(7)
    assert member.ids() == list(range(5, 12))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_ids_contiguous_under_concurrent_posts(app_server, session, transport):
    server = await app_server(transport)
    async with Receiver(session, server.url, transport, "busy") as member:
        sent = await asyncio.gather(*(post(session, server.url, "busy", f"u{i}", str(i)) for i in range(60)))
        await member.wait_for(60)
    assert sorted(m["id"] for m in sent) == list(range(1, 61))
    assert member.ids() == list(range(1, 61))  # in order, no gap, no duplicate


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_history_paging(app_server, session, transport):
    server = await app_server(transport, **FLOOD_OK)
    async with session.get(f"{server.url}/rooms/empty/history") as resp:
        assert resp.status == 200 and await resp.json() == {"messages": []}
    for i in range(120):
        await post(session, server.url, "h", text=f"t{i}")
    async with session.get(f"{server.url}/rooms/h/history") as resp:
        newest = (await resp.json())["messages"]
    assert [m["id"] for m in newest] == list(range(71, 121))  # default limit 50
    pages, before = [], None
    for _ in range(10):
        query = f"?limit=40&before={before}" if before else "?limit=40"
        async with session.get(f"{server.url}/rooms/h/history{query}") as resp:
            messages = (await resp.json())["messages"]
        if not messages:
            break
        pages.insert(0, messages)
        before = messages[0]["id"]
    ids = [m["id"] for page in pages for m in page]
    assert ids == list(range(1, 121))
    assert [m["text"] for page in pages for m in page][:2] == ["t0", "t1"]


@pytest.mark.parametrize("transport", ["short-polling", "long-polling"])
async def test_poll_says_truncated_when_history_dropped_messages(app_server, session, transport):
    server = await app_server(transport, limits=__import__("servers.core").core.Limits(history=5))
    for i in range(12):
        await post(session, server.url, "r", text=str(i))
    async with session.get(f"{server.url}/rooms/r/messages?since=2") as resp:
        page = await resp.json()
    assert page["truncated"] is True and page["last_id"] == 12
    assert [m["id"] for m in page["messages"]] == [8, 9, 10, 11, 12]
    async with session.get(f"{server.url}/rooms/r/messages?since=7&limit=2") as resp:
        page = await resp.json()
    assert page == {**page, "truncated": False, "last_id": 12} and [m["id"] for m in page["messages"]] == [8, 9]


async def test_websocket_backlog_shows_the_gap_when_history_dropped_messages(app_server, session):
    from servers.core import Limits

    server = await app_server("websocket", limits=Limits(history=5))
    for i in range(12):
        await post(session, server.url, "r", text=str(i))
    async with Receiver(session, server.url, "websocket", "r", since=2) as member:
        await member.wait_for(5)
    assert member.ids() == [8, 9, 10, 11, 12]  # the first id after since=2 is 8: the client sees 5 lost


# One route per transport that only that transport (or its polling sibling) serves.
OWN_ROUTE = {
    "short-polling": "/rooms/r/messages?since=0",
    "long-polling": "/rooms/r/messages?since=0",
    "websocket": "/rooms/r/ws",
    "sse": "/rooms/r/events?since=0",
}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_other_transports_routes_are_404(app_server, session, transport):
    server = await app_server(transport)
    for owner, path in OWN_ROUTE.items():
        if OWN_ROUTE[owner] == OWN_ROUTE[transport]:
            continue  # its own route (an event stream would not end; the ws route wants an upgrade)
        async with session.get(f"{server.url}{path}") as resp:
            body = await resp.json()
            assert resp.status == 404 and transport in body["error"], (owner, body)


def test_every_transport_has_its_own_route_listed():
    assert set(OWN_ROUTE) >= set(TRANSPORTS)


async def test_short_polling_rejects_wait(app_server, session):
    server = await app_server("short-polling")
    async with session.get(f"{server.url}/rooms/r/messages?since=0&wait=5") as resp:
        assert resp.status == 400
        assert "does not hold requests" in (await resp.json())["error"]


async def test_long_poll_is_released_by_a_post_and_times_out_empty(app_server, session):
    server = await app_server("long-polling", long_poll_max_wait_s=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with session.get(f"{server.url}/rooms/r/messages?since=0&wait=60") as resp:  # capped to 1 s
        assert (await resp.json()) == {"messages": [], "last_id": 0, "truncated": False}
    assert loop.time() - started < 10 * UNIT

    async def held_poll():
        async with session.get(f"{server.url}/rooms/r/messages?since=0&wait=1") as resp:
            return await resp.json()

    polls = [asyncio.create_task(held_poll()) for _ in range(3)]
    hub = server.transport("long-polling").hub
    async with asyncio.timeout(5 * UNIT):
        while hub.held < 3:
            await asyncio.sleep(0.01)
    await post(session, server.url, "r", text="wake up")
    pages = await asyncio.gather(*polls)
    # Released by the post, not by the timeout: each answer carries the message.
    assert all([m["text"] for m in p["messages"]] == ["wake up"] for p in pages)
    assert hub.held == 0


async def test_long_poll_misses_nothing_posted_between_polls(app_server, session):
    server = await app_server("long-polling", **FLOOD_OK)
    async with Receiver(session, server.url, "long-polling", "stream") as member:
        for i in range(200):
            await post(session, server.url, "stream", text=str(i))
            if i % 7 == 0:
                await asyncio.sleep(0)  # let polls complete and re-poll between posts
        await member.wait_for(200)
    assert member.ids() == list(range(1, 201))


async def test_abandoned_long_polls_are_not_held(app_server):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 and hard >= 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))
    server = await app_server("long-polling")
    hub = server.transport("long-polling").hub
    request = f"GET /rooms/r/messages?since=0&wait=30 HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    writers = []
    for _ in range(1000):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request)
        writers.append(writer)
    async with asyncio.timeout(20 * UNIT):
        while hub.held < 1000:
            await asyncio.sleep(0.05)
    for writer in writers:
        writer.close()
    async with asyncio.timeout(5 * UNIT):
        while hub.held:
            await asyncio.sleep(0.05)
    assert hub.held == 0


async def test_websocket_sender_hears_its_own_message_and_others_too(app_server, session):
    server = await app_server("websocket")
    url = f"{server.url}/rooms/duo/ws"
    async with session.ws_connect(url) as ann, session.ws_connect(url) as bob:
        await ann.send_json({"type": "send", "user": "ann", "text": "hi bob", "sent_at": 5.5})
        for ws in (ann, bob):
            frame = await ws.receive_json(timeout=5 * UNIT)
            assert frame["type"] == "message" and frame["text"] == "hi bob" and frame["sent_at"] == 5.5
        await bob.send_json({"type": "send", "user": "bob", "text": "hi ann"})
        assert (await ann.receive_json(timeout=5 * UNIT))["id"] == 2


def parse_server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames into (opcode, payload); a truncated tail is dropped."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length, i = data[i] & 0x0F, data[i + 1] & 0x7F, i + 2
        if length == 126:
            length, i = int.from_bytes(data[i : i + 2], "big"), i + 2
        elif length == 127:
            length, i = int.from_bytes(data[i : i + 8], "big"), i + 8
        if i + length > len(data):
            break
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


async def test_slow_websocket_reader_is_closed_with_1013_and_resumes(app_server, session):
    server = await app_server("websocket", ws_send_queue=8, **FLOOD_OK)
    # A reader that stops reading: its socket buffers fill, its queue overflows; the room goes on.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small window: the server's writes back up
    sock.connect(("127.0.0.1", server.port))
    raw_reader, raw_writer = await asyncio.open_connection(sock=sock)
    raw_writer.write(
        b"GET /rooms/flood/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await raw_reader.readuntil(b"\r\n\r\n")
    async with Receiver(session, server.url, "websocket", "flood") as healthy:
        text = "x" * 4000
        for _ in range(250):  # 4 MB in bursts of 4: more than the kernel buffers plus 8 queued frames
            await asyncio.gather(*(post(session, server.url, "flood", text=text) for _ in range(4)))
        await healthy.wait_for(1000, timeout=30 * UNIT)
    assert healthy.ids() == list(range(1, 1001))
    assert server.transport("websocket").hub.overflow_closes == 1

    # Now read what the slow member was sent: contiguous messages, then a close frame with 1013.
    async with asyncio.timeout(10 * UNIT):
        data = await raw_reader.read()  # to EOF: the server closes the connection after the close frame
    frames = parse_server_frames(data)
    opcode, payload = frames[-1]
    assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1013
    seen = [json.loads(p)["id"] for op, p in frames if op == 0x1]
    assert seen == list(range(1, len(seen) + 1)) and len(seen) < 1000
    raw_writer.close()

    # It resumes from the last id it saw and gets the rest, nothing lost.
    async with Receiver(session, server.url, "websocket", "flood", since=seen[-1]) as resumed:
        await resumed.wait_for(1000 - len(seen))
    assert resumed.ids() == list(range(len(seen) + 1, 1001))


async def test_all_mounts_every_transport_over_one_core(app_server, session):
    server = await app_server(TRANSPORTS)
    members = [Receiver(session, server.url, transport, "one") for transport in TRANSPORTS]
    async with contextlib.AsyncExitStack() as stack:
        for member in members:
            await stack.enter_async_context(member)
        for i in range(5):
            await post(session, server.url, "one", text=str(i))
        for member in members:
            await member.wait_for(5)
    assert all(member.received == members[0].received for member in members)
    assert members[0].ids() == [1, 2, 3, 4, 5]


async def test_compression_is_explicit_and_reported(app_server, session):
    server = await app_server("websocket", ws_compress=True)
    async with session.get(f"{server.url}/healthz") as resp:
        assert (await resp.json())["compression"]["websocket_permessage_deflate"] is True
    async with session.ws_connect(f"{server.url}/rooms/z/ws", compress=15) as ws:
        assert ws.compress == 15  # negotiated
    off = await app_server("websocket")
    async with session.ws_connect(f"{off.url}/rooms/z/ws", compress=15) as ws:
        assert ws.compress == 0  # the server declined
