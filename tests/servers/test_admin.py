"""Draining one instance (`POST /admin/drain`, loopback only) and the broker/instance flags."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request
from conftest import TRANSPORTS, UNIT

from servers import admin
from servers.app import create_app
from servers.config import ServerConfig


async def test_a_drain_leaves_the_health_check_closes_websockets_with_1012_and_answers_polls(app_server):
    server = await app_server(TRANSPORTS, instance="server-7")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["instance"] == "server-7"
        ws = await session.ws_connect(f"{server.url}/rooms/d/ws?since=0")
        poll = asyncio.create_task(session.get(f"{server.url}/rooms/d/messages?since=0&wait=30"))
        stream = await session.get(f"{server.url}/rooms/d/events?since=0")
        await asyncio.sleep(0.3 * UNIT)  # let the poll be held
        started = time.monotonic()
        async with session.post(f"{server.url}/admin/drain") as resp:
            assert resp.status == 200
            drained = await resp.json()
        assert drained["status"] == "drained" and drained["instance"] == "server-7"
        assert (drained["websockets_closed"], drained["polls_released"], drained["streams_closed"]) == (1, 1, 1)
        msg = await ws.receive(timeout=5 * UNIT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1012
        resp = await asyncio.wait_for(poll, 5 * UNIT)
        assert (await resp.json())["messages"] == []
        assert (await asyncio.wait_for(stream.content.read(), 5 * UNIT)).startswith(b"retry:")  # the stream ended
        assert time.monotonic() - started < 3 * UNIT

        async with session.get(f"{server.url}/healthz") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        # A poll that still arrives is answered at once; an upgrade is refused, so the client tries elsewhere.
        started = time.monotonic()
        async with session.get(f"{server.url}/rooms/d/messages?since=0&wait=30") as resp:
            assert resp.status == 200
        assert time.monotonic() - started < 2 * UNIT
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{server.url}/rooms/d/ws")
        assert refused.value.status == 503
        # Posting and reading still work (stateless), and a second drain answers the first one's result.
        async with session.post(f"{server.url}/rooms/d/messages", json={"user": "ann", "text": "hi"}) as resp:
            assert resp.status == 201
        async with session.post(f"{server.url}/admin/drain") as resp:
            assert resp.status == 200 and (await resp.json())["finished_at"] == drained["finished_at"]


async def test_a_grace_keeps_members_until_it_ends(app_server):
    server = await app_server("websocket")
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server.url}/rooms/g/ws")
        drain = asyncio.create_task(session.post(f"{server.url}/admin/drain?grace=0.5"))
        await asyncio.sleep(0.2 * UNIT)
        async with session.get(f"{server.url}/healthz") as resp:
            assert resp.status == 503  # out of the balancer at once...
        assert not ws.closed  # ...members kept until the grace ends
        resp = await asyncio.wait_for(drain, 5 * UNIT)
        assert (await resp.json())["grace_s"] == 0.5
        msg = await ws.receive(timeout=5 * UNIT)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1012


@pytest.mark.parametrize(
    "peer, loopback",
    [(("127.0.0.1", 5000), True), (("::1", 5000, 0, 0), True), (("10.1.2.3", 5000), False),
     (("192.168.0.9", 5000), False), (None, False)],
)
async def test_only_loopback_peers_may_drain(peer, loopback):
    app = create_app(ServerConfig(port=0))
    transport = mock.Mock()
    transport.get_extra_info.return_value = peer
    request = make_mocked_request("POST", "/admin/drain", app=app, transport=transport)
    assert admin.is_loopback(request) is loopback
    if not loopback:
        resp = await admin.handle_drain(request)
        assert resp.status == 403 and b"loopback" in resp.body
        assert not app[admin.DRAIN].draining


def test_the_cli_takes_a_broker_url_and_refuses_anything_else():
    proc = subprocess.run([sys.executable, "-m", "servers", "--transport", "websocket", "--broker", "mysql://x"],
                          capture_output=True, text=True, timeout=30 * UNIT)
    assert proc.returncode == 2 and "broker must be memory or a redis://host:port/db URL" in proc.stderr


def test_an_unreachable_redis_stops_the_server_with_a_clear_message(tmp_path):
    from experiments.supervisor import free_port

    proc = subprocess.run(
        [sys.executable, "-m", "servers", "--transport", "websocket", "--port", "0",
         "--broker", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True, text=True, timeout=30 * UNIT,
    )
    assert proc.returncode == 1 and "cannot reach Redis" in proc.stderr
    assert "Traceback" not in proc.stderr
