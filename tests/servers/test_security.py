"""Hostile pages and hostile clients (docs/security.md): foreign Origins and Host names on every route of every
transport, requests without an Origin still served, text/plain and form posts, floods, connection caps, and
connections that never finish a request."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from conftest import TRANSPORTS, UNIT

from servers.guard import OriginPolicy, SendLimiter, TokenBucket, normal_origin, split_host

EVIL = "http://evil.example"
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
           "Sec-WebSocket-Version": "13"}


def routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves, its path parameters filled in."""
    found = []
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = re.sub(r"\{[^}]+\}", "r", route.resource.canonical)
        found.append((route.method, path))
    return sorted(set(found))


async def ask(session, base: str, method: str, path: str, headers: dict) -> tuple[int, str]:
    headers = dict(headers)
    body = None
    if method == "POST":
        body, headers["Content-Type"] = b'{"user": "ann", "text": "x"}', "application/json"
    if path.endswith("/ws"):
        headers |= UPGRADE
    async with session.request(method, f"{base}{path}?since=0", data=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=5 * UNIT)) as resp:
        # An event stream or an upgrade that was served would not end: read only what says refused or not.
        return resp.status, (await resp.text()) if resp.status >= 400 else ""


async def test_a_foreign_origin_is_refused_on_every_route_of_every_transport(app_server):
    server = await app_server(TRANSPORTS, demo=True)
    pairs = routes(server.app)
    assert {"/rooms/r/ws", "/rooms/r/events", "/rooms/r/messages", "/rooms/r/history", "/admin/drain"} <= {
        p for _, p in pairs}
    async with aiohttp.ClientSession() as session:
        for method, path in pairs:
            status, text = await ask(session, server.url, method, path, {"Origin": EVIL})
            assert status == 403 and "may not use this server" in json.loads(text)["error"], (method, path, status)
        # Nothing got through: no message stored, no drain started.
        async with session.get(f"{server.url}/rooms/r/history") as resp:
            assert (await resp.json())["messages"] == []
        async with session.get(f"{server.url}/healthz") as resp:
            assert (await resp.json())["status"] == "ok"


async def test_requests_without_an_origin_or_from_the_servers_own_pages_are_served(app_server):
    server = await app_server(TRANSPORTS, allow_origins=("http://lab.example:9000",))
    own = f"http://127.0.0.1:{server.port}"
    async with aiohttp.ClientSession() as session:
        for origin in (None, own, "http://lab.example:9000", "HTTP://LAB.example:9000/"):
            headers = {"Origin": origin} if origin else {}
            async with session.post(f"{server.url}/rooms/r/messages", json={"user": "ann", "text": "hi"},
                                    headers=headers) as resp:
                assert resp.status == 201, (origin, await resp.text())
            async with session.ws_connect(f"{server.url}/rooms/r/ws", headers=headers) as ws:
                assert not ws.closed
        # The page of another port on the same host is another origin.
        async with session.get(f"{server.url}/rooms/r/history", headers={"Origin": "http://127.0.0.1:1"}) as resp:
            assert resp.status == 403
        for origin in ("null", "file://", "http://127.0.0.1:abc", "javascript:alert(1)"):
            async with session.get(f"{server.url}/rooms/r/history", headers={"Origin": origin}) as resp:
                assert resp.status == 403, origin


async def test_a_host_name_the_server_does_not_know_is_refused(app_server):
    server = await app_server("websocket", allow_hosts=("lab.example",))
    async with aiohttp.ClientSession() as session:
        for host, status in ((f"127.0.0.1:{server.port}", 200), (f"localhost:{server.port}", 200),
                             (f"[::1]:{server.port}", 200), ("10.1.2.3", 200), ("lab.example:80", 200),
                             ("rebind.evil.example", 403), ("localhost.evil.example", 403)):
            async with session.get(f"{server.url}/rooms/r/history", headers={"Host": host}) as resp:
                assert resp.status == status, host
        # A page on a name that resolves here calls itself by that name: same "origin", but refused by Host.
        headers = {"Host": f"rebind.evil.example:{server.port}", "Origin": f"http://rebind.evil.example:{server.port}"}
        async with session.get(f"{server.url}/rooms/r/history", headers=headers) as resp:
            assert resp.status == 403 and "not a name of this server" in (await resp.json())["error"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None, "application/json-patch+json"])
async def test_a_post_body_must_be_json(app_server, content_type):
    server = await app_server("short-polling")
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/rooms/r/messages", data=b'{"user": "ann", "text": "x"}',
                                headers=headers, skip_auto_headers=["Content-Type"]) as resp:
            assert resp.status == 415 and "application/json" in (await resp.json())["error"]
        async with session.post(f"{server.url}/rooms/r/messages", data=b'{"user": "ann", "text": "ok"}',
                                headers={"Content-Type": "application/json; charset=utf-8"}) as resp:
            assert resp.status == 201
        async with session.get(f"{server.url}/rooms/r/history") as resp:
            assert [m["text"] for m in (await resp.json())["messages"]] == ["ok"]


def test_a_token_bucket_allows_its_burst_then_its_rate():
    now = [100.0]
    limiter = SendLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.check("ann") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.check("ann") == pytest.approx(0.5)  # one token comes every 1/rate s
    assert limiter.check("bob") == 0.0  # a member of its own
    now[0] += 0.5
    assert limiter.check("ann") == 0.0 and limiter.check("ann") > 0
    now[0] += 100
    assert [limiter.check("ann") for _ in range(4)][:3] == [0.0, 0.0, 0.0]  # full again, never beyond burst
    assert limiter.refused == 3
    small = SendLimiter(rate=1.0, burst=1, clock=lambda: now[0], max_keys=2)
    for key in ("a", "b", "c"):
        small.check(key)
    assert len(small._buckets) == 2  # bounded: the least recently used is forgotten
    bucket = TokenBucket(1.0, 2, 0.0)
    assert (bucket.take(0.0), bucket.take(0.0), bucket.take(0.0)) == (0.0, 0.0, 1.0)


async def test_a_flood_of_posts_gets_429_with_retry_after_and_other_members_go_on(app_server):
    server = await app_server("long-polling", send_rate_per_s=2.0, send_burst=3)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for i in range(6):
            async with session.post(f"{server.url}/rooms/r/messages", json={"user": "spam", "text": str(i)}) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    retry = resp.headers["Retry-After"]
                    assert retry.isdigit() and int(retry) >= 1 and "faster than 2" in (await resp.json())["error"]
        assert statuses == [201, 201, 201, 429, 429, 429]
        async with session.post(f"{server.url}/rooms/r/messages", json={"user": "ann", "text": "me too"}) as resp:
            assert resp.status == 201
        async with session.post(f"{server.url}/rooms/elsewhere/messages", json={"user": "spam", "text": "x"}) as resp:
            assert resp.status == 201  # a member is a name in a room
        await asyncio.sleep(0.6)
        async with session.post(f"{server.url}/rooms/r/messages", json={"user": "spam", "text": "later"}) as resp:
            assert resp.status == 201  # its bucket refilled
        async with session.get(f"{server.url}/metrics") as resp:
            assert 'rtlab_guard_sends_refused_total{transport="long-polling"} 3.0' in await resp.text()


async def test_a_websocket_flood_gets_error_frames_then_close_1008(app_server):
    server = await app_server("websocket", send_rate_per_s=0.5, send_burst=3)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/rooms/w/ws") as ws:
            for i in range(3):
                await ws.send_json({"type": "send", "user": "spam", "text": str(i)})
                assert (await ws.receive_json(timeout=5 * UNIT))["type"] == "message"
            for _ in range(2):  # refused, told why, still open
                await ws.send_json({"type": "send", "user": "spam", "text": "more"})
                frame = await ws.receive_json(timeout=5 * UNIT)
                assert frame["type"] == "error" and "faster than 0.5" in frame["error"]
            await ws.send_json({"type": "send", "user": "spam", "text": "and more"})  # the third refusal running
            msg = await ws.receive(timeout=5 * UNIT)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 1008
        async with session.get(f"{server.url}/rooms/w/history") as resp:
            assert len((await resp.json())["messages"]) == 3


async def open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def test_connections_over_the_caps_are_answered_503_and_closed(app_server):
    server = await app_server("short-polling", max_connections_per_client=5, max_connections=8)
    held = [await open_raw(server.port) for _ in range(5)]
    for reader, writer in held:  # the five are served
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)).startswith(b"HTTP/1.1 200")
    reader, writer = await open_raw(server.port)
    refused = await asyncio.wait_for(reader.read(), 5 * UNIT)  # answered and closed at once
    assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused
    assert b"your address holds its most connections here (5)" in refused
    writer.close()
    held[0][1].close()  # one leaves: a newcomer is served
    await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/metrics") as resp:
            text = await resp.text()
    assert 'rtlab_guard_connections_refused_total{transport="short-polling"} 1.0' in text
    for _, writer in held[1:]:
        writer.close()


async def test_half_open_requests_are_closed_within_the_timeout_while_healthz_answers(app_server):
    server = await app_server("websocket", request_head_timeout_s=1.0)
    half = []
    for _ in range(500):
        reader, writer = await open_raw(server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        half.append((reader, writer))
    loop = asyncio.get_running_loop()
    opened = loop.time()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/healthz", timeout=aiohttp.ClientTimeout(total=1 * UNIT)) as resp:
            assert resp.status == 200  # served at once beside 500 stalled heads
    answers = await asyncio.wait_for(asyncio.gather(*(reader.read() for reader, _ in half)), 10 * UNIT)
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers)  # every one answered and closed
    assert loop.time() - opened < 5 * UNIT
    for _, writer in half:
        writer.close()
    # A connection that says nothing, and a POST whose body never comes, are closed too.
    silent_reader, silent = await open_raw(server.port)
    assert (await asyncio.wait_for(silent_reader.read(), 5 * UNIT)).startswith(b"HTTP/1.1 408")
    slow_reader, slow = await open_raw(server.port)
    slow.write(b"POST /rooms/r/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100\r\n\r\n{\"user\"")
    assert (await asyncio.wait_for(slow_reader.read(), 5 * UNIT)).startswith(b"HTTP/1.1 408")
    silent.close()
    slow.close()
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/metrics") as resp:
            assert 'rtlab_guard_request_timeouts_total{transport="websocket"} 502.0' in await resp.text()


async def test_an_idle_keep_alive_connection_is_closed(app_server):
    server = await app_server("short-polling", keepalive_timeout_s=0.5)
    reader, writer = await open_raw(server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
    length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
    await reader.readexactly(length)
    assert await asyncio.wait_for(reader.read(), 5 * UNIT) == b""  # closed by the server once idle
    writer.close()


def test_origins_and_hosts_are_compared_as_browsers_send_them():
    assert normal_origin("HTTP://Example.COM:80") == "http://example.com"
    assert normal_origin("https://a.example:443/") == "https://a.example"
    assert normal_origin("http://[::1]:8080") == "http://[::1]:8080"
    assert normal_origin("null") is None and normal_origin("http://a.example/path") is None
    assert split_host("[::1]:8080") == ("::1", 8080) and split_host("Localhost") == ("localhost", None)
    with pytest.raises(ValueError, match="--allow-origin"):
        OriginPolicy(allow_origins=["not an origin"])
