"""Watching an instance (`GET /admin/events`, servers/observe.py): what it holds and each message's fan-out, as JSON
lines; loopback only, bounded, and nothing kept while nobody watches."""

from __future__ import annotations

import asyncio
import json
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import TRANSPORTS, UNIT

from servers import observe
from servers.app import create_app
from servers.config import ServerConfig


class Events:
    """One watcher of an instance's event stream."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self, kind: str | None = None) -> dict:
        while True:
            line = await asyncio.wait_for(self.response.content.readline(), 5 * UNIT)
            assert line, "the stream ended"
            event = json.loads(line)
            if kind is None or event["event"] == kind:
                return event


async def watch(session: aiohttp.ClientSession, url: str) -> Events:
    response = await session.get(f"{url}/admin/events")
    assert response.status == 200 and response.content_type == "application/jsonl"
    return Events(response)


async def test_the_stream_says_what_the_instance_holds_and_where_each_message_goes(app_server):
    server = await app_server(TRANSPORTS, instance="server-7")
    async with aiohttp.ClientSession() as session:
        events = await watch(session, server.url)
        hello = await events.next()
        assert hello["event"] == "hello" and hello["instance"] == "server-7" and hello["broker"] == "memory"
        assert hello["transports"] == list(TRANSPORTS) and hello["draining"] is False

        ws = await session.ws_connect(f"{server.url}/rooms/hall/ws?since=0&client=page-ws")
        opened = await events.next("open")
        assert (opened["transport"], opened["room"], opened["client"]) == ("websocket", "hall", "page-ws")
        assert opened["route"] == "GET /rooms/{room}/ws"
        poll = asyncio.create_task(session.get(f"{server.url}/rooms/hall/messages?since=0&wait=10&client=page-lp"))
        held = await events.next("open")
        assert (held["transport"], held["client"]) == ("long-polling", "page-lp")
        stream = await session.get(f"{server.url}/rooms/hall/events?since=0&client=a%20b")  # a malformed id: none
        assert (await events.next("open"))["client"] is None
        await asyncio.sleep(0.2 * UNIT)  # the poll is held

        async with session.post(f"{server.url}/rooms/hall/messages", json={"user": "ann", "text": "hi",
                                                                           "sent_at": 12.5}) as resp:
            assert resp.status == 201
        got = {}
        while len(got) < 2:
            event = await events.next()
            if event["event"] in ("fanout", "posted"):
                got[event["event"]] = event
        assert got["posted"] == {**got["posted"], "room": "hall", "id": 1, "user": "ann", "sent_at": 12.5,
                                 "broker": "memory", "instance": "server-7"}
        # Counted before the listeners ran: the held poll is one of the members the message reached here.
        assert got["fanout"]["held"] == {"long-polling": 1, "websocket": 1, "sse": 1}
        assert got["fanout"]["members"] == 3 and got["fanout"]["id"] == 1
        # The held poll was answered: its request closes (with the number its open had).
        closes = {}
        while held["n"] not in closes:
            event = await events.next("close")
            closes[event["n"]] = event["status"]
        assert closes[held["n"]] == 200
        await asyncio.wait_for(poll, 5 * UNIT)
        await ws.close()
        assert (await events.next("close"))["n"] == opened["n"]
        stream.close()


async def test_a_message_reaching_several_transports_is_one_fanout_and_nothing_is_kept_unwatched(app_server):
    server = await app_server(TRANSPORTS)
    observer = server.app[observe.OBSERVER]
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{server.url}/rooms/r/ws") for _ in range(2)]
        stream = await session.get(f"{server.url}/rooms/r/events")
        async with session.post(f"{server.url}/rooms/r/messages", json={"user": "bob", "text": "x"}) as resp:
            assert resp.status == 201
        assert not observer.watching and observer._seen == {} and observer._requests == 0  # nobody watched

        events = await watch(session, server.url)
        await events.next("hello")
        async with session.post(f"{server.url}/rooms/r/messages", json={"user": "bob", "text": "y"}) as resp:
            assert resp.status == 201
        fanouts = []
        while True:
            event = await events.next()
            if event["event"] == "fanout":
                fanouts.append(event)
            if event["event"] == "close":  # the post's: every fanout of its message came before
                break
        assert [(f["id"], f["held"]) for f in fanouts] == [(2, {"websocket": 2, "sse": 1})]
        events.response.close()
        for ws in sockets:
            await ws.close()
        stream.close()
        for _ in range(50):
            if not observer.watching:
                break
            await asyncio.sleep(0.05)
        assert not observer.watching and observer._seen == {}


async def test_watchers_are_bounded_and_the_stream_is_not_counted_as_traffic(app_server):
    server = await app_server("websocket")
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(f"{server.url}/admin/events") for _ in range(observe.MAX_WATCHERS)]
        for response in streams:
            assert response.status == 200
            await response.content.readline()
        async with session.get(f"{server.url}/admin/events") as refused:
            assert refused.status == 503 and "watchers" in (await refused.json())["error"]
        async with session.get(f"{server.url}/metrics") as resp:
            assert "/admin/events" not in await resp.text()
        for response in streams:
            response.close()


async def test_a_slow_watcher_loses_events_counted_not_memory():
    observer = observe.Observer(ServerConfig(port=0))
    watcher = observer.watch()
    for n in range(observe.QUEUE_EVENTS + 5):
        observer.emit({"event": "close", "n": n, "status": 200})
    assert len(watcher.lines) == observe.QUEUE_EVENTS and watcher.dropped == 5


@pytest.mark.parametrize("peer", [("10.1.2.3", 5000), None])
async def test_only_loopback_peers_may_watch(peer):
    app = create_app(ServerConfig(port=0))
    transport = mock.Mock()
    transport.get_extra_info.return_value = peer
    request = make_mocked_request("GET", "/admin/events", app=app, transport=transport)
    resp = await observe.handle_events(request)
    assert resp.status == 403 and b"loopback" in resp.body
    assert not app[observe.OBSERVER].watching


async def test_the_stream_ends_when_the_server_stops(app_server):
    server = await app_server("websocket")
    async with aiohttp.ClientSession() as session:
        events = await watch(session, server.url)
        await events.next("hello")
        stopping = asyncio.create_task(server.stop())
        assert await asyncio.wait_for(events.response.content.read(), 5 * UNIT) == b""
        await asyncio.wait_for(stopping, 5 * UNIT)
