"""The delivered messages' own bytes are counted by the server, exactly, for every transport."""

from __future__ import annotations

import aiohttp
import pytest
from conftest import TRANSPORTS, UNIT
from helpers.receivers import receiver

from experiments.figures import metric_total, parse_metrics


async def payload_counter(session, url: str) -> float:
    async with session.get(f"{url}/metrics") as resp:
        return metric_total(parse_metrics(await resp.text()), "rtlab_message_payload_sent_bytes_total")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_payload_counter_equals_the_messages_json_bytes(app_server, transport):
    server = await app_server(transport)
    texts = ["hello", "héllo wörld ✓", "x" * 300]  # non-ASCII: bytes, not characters
    async with aiohttp.ClientSession() as session:
        stored = []
        for text in texts:
            async with session.post(f"{server.url}/rooms/p/messages", json={"user": "ann", "text": text}) as resp:
                stored.append(await resp.read())  # the 201 body is the message's JSON, as every transport sends it
        before = await payload_counter(session, server.url)
        async with receiver(session, server.url, transport, "p", since=0) as member:
            await member.wait_for(3)
            # Nothing more arrives (an empty poll, a heartbeat): no payload.
            await session.get(f"{server.url}/rooms/p/history")
            after = await payload_counter(session, server.url)
    assert member.ids() == [1, 2, 3]
    assert after - before == sum(map(len, stored))


async def test_a_websocket_frame_counts_the_message_without_its_envelope(app_server):
    server = await app_server("websocket")
    async with aiohttp.ClientSession() as session:
        before = await payload_counter(session, server.url)
        async with session.ws_connect(f"{server.url}/rooms/p/ws") as ws:
            await ws.send_json({"type": "send", "user": "bob", "text": "live ✓"})
            live = await ws.receive(timeout=5 * UNIT)
        after = await payload_counter(session, server.url)
    assert after - before == len(live.data.encode()) - len('"type":"message",')
