"""The delivered messages' own bytes are counted by the server, exactly, for every transport."""

from __future__ import annotations

import aiohttp
import pytest

from conftest import TRANSPORTS, UNIT
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
        if transport == "websocket":
            async with session.ws_connect(f"{server.url}/rooms/p/ws?since=0") as ws:
                for _ in texts:
                    await ws.receive(timeout=5 * UNIT)
                await ws.send_json({"type": "send", "user": "bob", "text": "live ✓"})
                live = await ws.receive(timeout=5 * UNIT)
            expected = sum(map(len, stored)) + len(live.data.encode()) - len('"type":"message",')
        else:
            wait = "&wait=1" if transport == "long-polling" else ""
            async with session.get(f"{server.url}/rooms/p/messages?since=0{wait}") as resp:
                assert len((await resp.json())["messages"]) == 3
            async with session.get(f"{server.url}/rooms/p/messages?since=3") as resp:  # empty: no payload
                assert (await resp.json())["messages"] == []
            expected = sum(map(len, stored))
        after = await payload_counter(session, server.url)
    assert after - before == expected
