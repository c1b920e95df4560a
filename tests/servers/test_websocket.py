"""The WebSocket's own contract: the sender hears its own message, a slow reader is closed with 1013 and
resumes, the backlog shows a history gap, and compression is explicit."""

from __future__ import annotations

import asyncio
import json
import socket

from conftest import FLOOD_OK, UNIT
from helpers.receivers import post, receiver

from servers.core import Limits


def Receiver(session, base, transport, room, since=0):  # noqa: N802  (reads as the class it returns)
    return receiver(session, base, transport, room, since)


async def test_websocket_backlog_shows_the_gap_when_history_dropped_messages(app_server, session):

    server = await app_server("websocket", limits=Limits(history=5))
    for i in range(12):
        await post(session, server.url, "r", text=str(i))
    async with Receiver(session, server.url, "websocket", "r", since=2) as member:
        await member.wait_for(5)
    assert member.ids() == [8, 9, 10, 11, 12]  # the first id after since=2 is 8: the client sees 5 lost


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


async def test_compression_is_explicit_and_reported(app_server, session):
    server = await app_server("websocket", ws_compress=True)
    async with session.get(f"{server.url}/healthz") as resp:
        assert (await resp.json())["compression"]["websocket_permessage_deflate"] is True
    async with session.ws_connect(f"{server.url}/rooms/z/ws", compress=15) as ws:
        assert ws.compress == 15  # negotiated
    off = await app_server("websocket")
    async with session.ws_connect(f"{off.url}/rooms/z/ws", compress=15) as ws:
        assert ws.compress == 0  # the server declined
