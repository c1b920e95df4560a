"""The wire contract, one suite over every transport, against real sockets on free ports."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from conftest import FLOOD_OK, TRANSPORTS
from helpers.receivers import post, receiver


def Receiver(session, base, transport, room, since=0):  # noqa: N802  (reads as the class it returns)
    return receiver(session, base, transport, room, since)


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


# One route per transport that only that transport (or its polling sibling) serves.
OWN_ROUTE = {
    "short-polling": "/rooms/r/messages?since=0",
    "long-polling": "/rooms/r/messages?since=0",
    "websocket": "/rooms/r/ws",
    "sse": "/rooms/r/events?since=0",
    "webrtc": "/rooms/r/webrtc",  # a POST route (the offer): a GET here is 404 wherever WebRTC is not mounted
    "webrtc-unreliable": "/rooms/r/webrtc",
    "webtransport": "/rooms/r/webtransport",  # where to CONNECT (on the UDP port): 404 where it is not mounted
    "webtransport-datagram": "/rooms/r/webtransport-datagram",
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
