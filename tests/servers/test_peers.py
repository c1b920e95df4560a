"""Each peer under the contract it claims: the floors speak rtlab's wire contract (rtlab's own clients drive
them), the Socket.IO peers Socket.IO's (python-socketio's client drives them); a peer's server runs alone."""

from __future__ import annotations

import asyncio
import time

import pytest
import socketio
from conftest import UNIT
from helpers.receivers import receiver

from experiments.figures import metric_total, parse_metrics
from servers import registry

PEERS = registry.names(registry.PEER)


async def scrape(session, url: str) -> dict:
    async with session.get(f"{url}/metrics") as resp:
        return parse_metrics(await resp.text())


def test_every_peer_is_compared_with_one_of_rtlabs_own_transports():
    assert set(PEERS) == {"floor-websocket", "floor-long-polling", "floor-short-polling", "floor-sse",
                          "socketio-websocket", "socketio-polling", "fastapi-websocket", "websockets-broadcast",
                          "channels-websocket", "sse-starlette"}
    for name in PEERS:
        entry = registry.get(name)
        assert entry.compare_with in registry.names() and not entry.counts_payload
    assert not set(PEERS) & set(registry.expand("all"))  # "all" is rtlab's own


async def test_a_peer_serves_alone(app_server):
    with pytest.raises(ValueError, match="serves every chat route itself: mount it alone"):
        await app_server(("floor-websocket", "websocket"))


async def test_the_websocket_floor_speaks_rtlabs_contract(app_server, session):
    server = await app_server("floor-websocket")
    url = f"{server.url}/rooms/r/ws"
    async with session.ws_connect(f"{url}?since=0") as ann, session.ws_connect(f"{url}?since=0") as bob:
        for i in range(3):
            await ann.send_json({"type": "send", "user": "ann", "text": str(i), "sent_at": 1.5})
        for ws in (ann, bob):
            frames = [await ws.receive_json(timeout=5 * UNIT) for _ in range(3)]
            assert [f["id"] for f in frames] == [1, 2, 3] and frames[0]["type"] == "message"
            assert set(frames[0]) == {"type", "id", "room", "user", "text", "sent_at", "ts"}
    async with session.get(f"{server.url}/rooms/r/history?limit=1") as resp:  # where a member joins
        assert [m["id"] for m in (await resp.json())["messages"]] == [3]
    async with receiver(session, server.url, "websocket", "r", since=1) as member:  # since= catches up
        await member.wait_for(2)
    assert member.ids() == [2, 3]
    metrics = await scrape(session, server.url)
    assert metric_total(metrics, "rtlab_messages_delivered_total") == 3 * 2 + 2
    assert metric_total(metrics, "rtlab_wire_sent_bytes_total") > 0
    assert not any(name == "rtlab_message_payload_sent_bytes_total" for name, _ in metrics)  # absent, not 0


async def test_the_long_polling_floor_speaks_rtlabs_contract(app_server, session):
    server = await app_server("floor-long-polling")
    async with receiver(session, server.url, "long-polling", "r") as member:
        sent = await asyncio.gather(*(session.post(f"{server.url}/rooms/r/messages",
                                                   json={"user": f"u{i}", "text": str(i)}) for i in range(20)))
        assert all(resp.status == 201 for resp in sent)
        await member.wait_for(20)
    assert member.ids() == list(range(1, 21))  # contiguous, in order, once
    started = time.monotonic()
    async with session.get(f"{server.url}/rooms/r/messages?since=20&wait=0.3") as resp:
        assert (await resp.json()) == {"messages": [], "last_id": 20, "truncated": False}
    assert time.monotonic() - started >= 0.25  # held until the wait ran out
    metrics = await scrape(session, server.url)
    assert metric_total(metrics, "rtlab_polls_total") >= 2 and metric_total(metrics, "rtlab_empty_polls_total") >= 1


async def test_the_short_polling_floor_answers_every_poll_at_once(app_server, session):
    server = await app_server("floor-short-polling")
    started = time.monotonic()
    async with session.get(f"{server.url}/rooms/r/messages?since=0") as resp:  # nothing yet: an empty answer, now
        assert (await resp.json()) == {"messages": [], "last_id": 0, "truncated": False}
    assert time.monotonic() - started < 1 * UNIT
    async with receiver(session, server.url, "short-polling", "r") as member:
        sent = await asyncio.gather(*(session.post(f"{server.url}/rooms/r/messages",
                                                   json={"user": f"u{i}", "text": str(i)}) for i in range(5)))
        assert all(resp.status == 201 for resp in sent)
        await member.wait_for(5)
    assert member.ids() == [1, 2, 3, 4, 5]
    metrics = await scrape(session, server.url)
    assert metric_total(metrics, "rtlab_polls_total") >= 2 and metric_total(metrics, "rtlab_empty_polls_total") >= 1


async def test_the_event_stream_floor_speaks_rtlabs_contract(app_server, session):
    server = await app_server("floor-sse")
    async with receiver(session, server.url, "sse", "r") as member:
        sent = await asyncio.gather(*(session.post(f"{server.url}/rooms/r/messages",
                                                   json={"user": f"u{i}", "text": str(i)}) for i in range(20)))
        assert all(resp.status == 201 for resp in sent)
        await member.wait_for(20)
    assert member.ids() == list(range(1, 21))
    async with receiver(session, server.url, "sse", "r", since=17) as late:  # since= catches up
        await late.wait_for(3)
    assert late.ids() == [18, 19, 20]
    headers = {"Last-Event-ID": "19"}  # a reconnecting EventSource's resume point wins over since=
    async with session.get(f"{server.url}/rooms/r/events?since=0", headers=headers) as resp:
        assert resp.content_type == "text/event-stream"
        assert await resp.content.readline() == b"id: 20\n"
    metrics = await scrape(session, server.url)
    assert metric_total(metrics, "rtlab_messages_delivered_total") == 20 + 3 + 1
    assert metric_total(metrics, "rtlab_messages_accepted_total") == 20


@pytest.mark.parametrize("peer, transport", [("socketio-websocket", "websocket"), ("socketio-polling", "polling")])
async def test_the_socketio_peers_speak_socketio_over_one_engineio_transport(app_server, peer, transport):
    server = await app_server(peer)
    clients = []
    try:
        for _ in range(2):
            client = socketio.AsyncClient()
            received = []
            client.on("message", received.append)
            await client.connect(server.url, transports=[transport], wait_timeout=5 * UNIT)
            assert client.transport() == transport
            assert await client.call("join", {"room": "r", "since": 0}, timeout=5 * UNIT) == 0
            clients.append((client, received))
        (ann, ann_got), (bob, bob_got) = clients
        ids = [await ann.call("send", {"user": "ann", "text": f"t{i}", "sent_at": 2.5}, timeout=5 * UNIT)
               for i in range(3)]
        assert ids == [1, 2, 3]  # the ack carries the id the message was stored as
        async with asyncio.timeout(5 * UNIT):
            while len(bob_got) < 3 or len(ann_got) < 3:
                await asyncio.sleep(0.02)
        assert [m["id"] for m in bob_got] == [1, 2, 3] and bob_got == ann_got
        assert set(bob_got[0]) == {"id", "room", "user", "text", "sent_at", "ts"} and bob_got[0]["sent_at"] == 2.5
        late = socketio.AsyncClient()
        late_got = []
        late.on("message", late_got.append)
        await late.connect(server.url, transports=[transport], wait_timeout=5 * UNIT)
        await late.call("join", {"room": "r", "since": 1}, timeout=5 * UNIT)  # caught up from id 1 on
        clients.append((late, late_got))
        async with asyncio.timeout(5 * UNIT):
            while len(late_got) < 2:
                await asyncio.sleep(0.02)
        assert [m["id"] for m in late_got] == [2, 3]
    finally:
        for client, _ in clients:  # without waiting for a held poll to come back (python-engineio's disconnect does)
            await client.eio.disconnect(abort=True)
    other = "polling" if transport == "websocket" else "websocket"
    refused = socketio.AsyncClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(server.url, transports=[other], wait_timeout=2 * UNIT)
