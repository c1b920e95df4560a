"""The peers of other stacks (FastAPI on uvicorn, websockets' broadcast(), Django Channels on daphne,
sse-starlette), each run as `python -m servers --transport NAME` through the process seam (servers/peers/process.py),
held to the parts of rtlab's wire contract their members use (docs/api.md), and to what the runner needs of them:
the ready file, one integer per delivered message on /metrics, /healthz with their compression settings."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from conftest import UNIT, require_packages
from helpers.receivers import receiver

from experiments.figures import metric_total, parse_metrics
from servers import registry
from servers.__main__ import main as servers_main

PROCESS_PEERS = [t.name for t in registry.transports(registry.PEER) if t.process]
WEBSOCKET_PEERS = [name for name in PROCESS_PEERS if registry.get(name).compare_with == "websocket"]


@pytest.fixture
def peer(server_process):
    def start(name: str):
        require_packages(name)
        return server_process(name)

    return start


async def metrics_of(session, url: str) -> dict:
    async with session.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        return parse_metrics(await resp.text())


def test_the_four_process_peers_are_registered_as_peers_of_rtlabs_transports():
    assert sorted(PROCESS_PEERS) == ["channels-websocket", "fastapi-websocket", "sse-starlette", "websockets-broadcast"]
    for name in PROCESS_PEERS:
        entry = registry.get(name)
        assert entry.group == registry.PEER and not entry.server and entry.packages
        assert entry.compare_with in ("websocket", "sse")
    with pytest.raises(ValueError, match="not both"):
        registry.register(registry.Transport(name="both-ways", label="x", colour="#000000", server="a:b",
                                             process="c:d", client="e:f", group=registry.PEER, counts_payload=False))


def test_a_missing_optional_package_is_named_with_its_install_command(monkeypatch, capsys):
    monkeypatch.setattr(registry, "missing_packages", lambda name: ["fastapi"])
    assert servers_main(["--transport", "fastapi-websocket", "--port", "0"]) == 2
    assert "fastapi-websocket needs fastapi: pip install -e '.[peers]'" in capsys.readouterr().err


@pytest.fixture
async def page_session():
    """A session whose requests carry an Origin, as a page's do (Channels' tutorial refuses sockets without one)."""
    sessions = []

    def make(url: str) -> aiohttp.ClientSession:
        sessions.append(aiohttp.ClientSession(headers={"Origin": url}))
        return sessions[-1]

    yield make
    for s in sessions:
        await s.close()


@pytest.mark.parametrize("name", WEBSOCKET_PEERS)
async def test_a_websocket_peer_speaks_rtlabs_contract(peer, page_session, name):
    server = peer(name)
    session = page_session(server.url)
    url = f"{server.url}/rooms/r/ws"
    async with session.ws_connect(f"{url}?since=0") as ann, session.ws_connect(f"{url}?since=0") as bob:
        for i in range(3):
            await ann.send_json({"type": "send", "user": "ann", "text": str(i), "sent_at": 1.5})
        for ws in (ann, bob):
            frames = [await ws.receive_json(timeout=5 * UNIT) for _ in range(3)]
            assert [f["id"] for f in frames] == [1, 2, 3] and frames[0]["type"] == "message"
            assert set(frames[0]) == {"type", "id", "room", "user", "text", "sent_at", "ts"}
            assert frames[0]["sent_at"] == 1.5 and frames[2]["text"] == "2"
    async with session.get(f"{server.url}/rooms/r/history?limit=1") as resp:  # where a member joins
        assert [m["id"] for m in (await resp.json())["messages"]] == [3]
    async with receiver(session, server.url, "websocket", "r", since=1) as member:  # since= catches up
        await member.wait_for(2)
    assert member.ids() == [2, 3]
    metrics = await metrics_of(session, server.url)
    assert metric_total(metrics, "rtlab_messages_delivered_total", transport=name) == 3 * 2 + 2
    assert metric_total(metrics, "rtlab_messages_accepted_total", transport=name) == 3
    assert not any(key[0].startswith("rtlab_wire") for key in metrics)  # no meter: the capture counts its bytes


async def test_the_sse_starlette_peer_speaks_rtlabs_contract(peer, session):
    server = peer("sse-starlette")
    async with receiver(session, server.url, "sse", "r") as member:
        sent = await asyncio.gather(*(session.post(f"{server.url}/rooms/r/messages",
                                                   json={"user": f"u{i}", "text": str(i)}) for i in range(20)))
        assert all(resp.status == 201 for resp in sent)
        assert {(await resp.json())["id"] for resp in sent} == set(range(1, 21))
        await member.wait_for(20)
    assert member.ids() == list(range(1, 21))
    async with receiver(session, server.url, "sse", "r", since=17) as late:  # since= catches up
        await late.wait_for(3)
    assert late.ids() == [18, 19, 20]
    headers = {"Last-Event-ID": "19"}  # a reconnecting EventSource's resume point wins over since=
    async with session.get(f"{server.url}/rooms/r/events?since=0", headers=headers) as resp:
        assert resp.content_type == "text/event-stream"
        assert (await resp.content.readline()).rstrip(b"\r\n") == b"id: 20"
    metrics = await metrics_of(session, server.url)
    assert metric_total(metrics, "rtlab_messages_delivered_total") == 20 + 3 + 1
    assert metric_total(metrics, "rtlab_messages_accepted_total") == 20


@pytest.mark.parametrize("name", PROCESS_PEERS)
async def test_healthz_names_the_libraries_and_their_compression(peer, session, name):
    server = peer(name)
    assert server.ready["transports"] == [name] and server.ready["pid"] == server.proc.pid
    async with session.get(f"{server.url}/healthz") as resp:
        health = json.loads(await resp.text())
    assert health["transports"] == [name]
    assert all(health["versions"][p] for p in registry.get(name).packages if p in health["versions"])
    assert "compression" in health
    if name == "fastapi-websocket":  # uvicorn's choices, recorded: its defaults
        assert health["server"]["ws_per_message_deflate"] is True
        assert health["server"]["ws"] and health["server"]["http"] and health["server"]["loop"]


@pytest.mark.parametrize("name", WEBSOCKET_PEERS)
async def test_the_negotiated_extensions_are_what_healthz_says(peer, page_session, name):
    """rtlab's client offers no permessage-deflate, so none is negotiated; a browser's offer is answered as the
    peer's settings say (uvicorn: accepted, its default; websockets: compression=None; daphne: not accepted)."""
    server = peer(name)
    session = page_session(server.url)
    offer = {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    async with session.ws_connect(f"{server.url}/rooms/x/ws", headers=offer, autoclose=True) as ws:
        accepted = ws._response.headers.get("Sec-WebSocket-Extensions", "")
    async with session.get(f"{server.url}/healthz") as resp:
        health = json.loads(await resp.text())
    assert ("permessage-deflate" in accepted) == bool(health["compression"]["websocket_permessage_deflate"])
    if name == "fastapi-websocket":
        assert health["compression"]["offered_by_members"]["permessage-deflate"] == 1
