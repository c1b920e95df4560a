"""Polling's own contract: short polling never holds, long polling holds until a post or the wait runs out,
misses nothing between polls, and lets abandoned polls go; both say when history dropped messages."""

from __future__ import annotations

import asyncio

import pytest
from conftest import FLOOD_OK, UNIT
from helpers.receivers import post, receiver


def Receiver(session, base, transport, room, since=0):  # noqa: N802  (reads as the class it returns)
    return receiver(session, base, transport, room, since)


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


async def test_poll_answers_are_shared_right_and_their_cache_is_bounded(app_server, session, monkeypatch):
    from servers import polling

    monkeypatch.setattr(polling, "ANSWER_CACHE_BYTES", 4096)
    server = await app_server("short-polling")
    route = server.app[polling.POLL_ROUTE]
    for i in range(30):
        await post(session, server.url, "r", text="x" * 100 + str(i))
    for _ in range(2):  # the second round is served from the cache: the same pages
        for since in range(30):
            async with session.get(f"{server.url}/rooms/r/messages?since={since}") as resp:
                page = await resp.json()
            assert [m["id"] for m in page["messages"]] == list(range(since + 1, 31)) and page["last_id"] == 30
            assert route.cached_bytes <= 4096
    await post(session, server.url, "r", text="new")  # a new message: no kept answer is served again
    async with session.get(f"{server.url}/rooms/r/messages?since=29") as resp:
        assert [m["id"] for m in (await resp.json())["messages"]] == [30, 31]


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
