"""WebSocket fan-out: one frame built per message for every member, written straight through to an idle member's
connection, queued (bounded, 1013 on overflow) only while the connection is paused or the writer is busy."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import WSMsgType
from aiohttp._websocket.writer import WebSocketWriter

from servers.broker import MemoryBroker
from servers.core import ChatCore
from servers.metrics import Tally
from servers.push import PushHub
from servers.websocket import CLOSE_OVERFLOW, Member, encoder, text_frame

HIGH_WATER = 64 * 1024


class Wire:
    """A connection's transport: what was written to it, and a write buffer the test fills or empties."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.buffered = 0

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return HIGH_WATER // 4, HIGH_WATER


class Socket:
    """The WebSocketResponse side a member uses: aiohttp's own send path, held while `gate` is clear."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, bytes] | None = None
        self.gate = asyncio.Event()
        self.gate.set()

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    async def send_frame(self, data: bytes, opcode: WSMsgType) -> None:
        assert opcode == WSMsgType.TEXT
        await self.gate.wait()
        self.sent.append(data)

    async def close(self, code: int, message: bytes) -> bool:
        self.closed_with = (code, message)
        return True


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_prepared_frame_is_byte_for_byte_what_aiohttp_writes(size):
    class Capture:
        def __init__(self):
            self.data = b""

        def write(self, data):
            self.data += bytes(data)

        def is_closing(self):
            return False

    payload = ("é" * size).encode()[:size]
    capture = Capture()
    WebSocketWriter(None, capture, use_mask=False)._write_websocket_frame(payload, WSMsgType.TEXT, 0)
    assert text_frame(payload) == capture.data


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def room_with_member(compress: bool = False, queue: int = 4):
    broker = MemoryBroker(ChatCore())
    hub = PushHub(broker, encoder(compress), (CLOSE_OVERFLOW, "overflow"))
    wire, socket, tally = Wire(), Socket(), Tally("websocket")
    member = Member(socket, queue, tally, None, wire)
    hub.join("r", member)
    hub.start_writer(member, "r", None, 100, lambda task: None)
    await settle()
    return broker, hub, member, wire, socket, tally


def payload_of(frame: bytes) -> bytes:
    """A whole unmasked frame's payload (RFC 6455 §5.2)."""
    length = frame[1] & 0x7F
    return frame[{126: 4, 127: 10}.get(length, 2):]


def ids(payloads: list[bytes]) -> list[int]:
    return [json.loads(payload)["id"] for payload in payloads]


async def test_an_idle_member_gets_the_shared_frame_written_straight_through():
    broker, hub, member, wire, socket, tally = await room_with_member()
    assert member.idle
    first = await broker.post("r", "ann", "hello", None)
    second = await broker.post("r", "bob", "hi", None)
    # Written in the poster's turn: no queue, no writer wake-up, no aiohttp send.
    assert not member.pending and member.writer is None and socket.sent == []
    assert ids(map(payload_of, wire.written)) == [first.id, second.id]
    assert wire.written[0] == text_frame(('{"type":"message",' + first.json[1:]).encode())
    assert tally.messages_delivered == 2 and member.last_id == second.id
    assert tally.payload_sent_bytes == len(first.json.encode()) + len(second.json.encode())
    member.stop()


async def test_a_paused_connection_queues_and_the_writer_sends_in_order_when_it_drains():
    broker, hub, member, wire, socket, tally = await room_with_member()
    wire.buffered = HIGH_WATER + 1  # over the high-water mark: the transport is paused
    socket.gate.clear()  # and aiohttp's send waits for it to drain
    posted = [await broker.post("r", "ann", str(i), None) for i in range(3)]
    await settle()
    assert wire.written == [] and not member.idle
    wire.buffered = 0  # drained: a new message must still wait behind the ones already queued
    posted.append(await broker.post("r", "ann", "late", None))
    assert wire.written == []
    socket.gate.set()
    await settle()
    assert ids(socket.sent) == [m.id for m in posted] and member.idle
    posted.append(await broker.post("r", "ann", "direct again", None))
    assert ids(map(payload_of, wire.written)) == [posted[-1].id]
    assert tally.messages_delivered == len(posted)
    member.stop()


async def test_a_member_that_stays_paused_is_closed_1013_when_its_bounded_queue_overflows():
    broker, hub, member, wire, socket, tally = await room_with_member(queue=2)
    wire.buffered = HIGH_WATER + 1
    socket.gate.clear()
    for i in range(4):  # one taken by the blocked writer, two queued, the fourth overflows
        await broker.post("r", "ann", str(i), None)
    await settle()
    assert hub.overflow_closes == 1 and socket.closed_with == (CLOSE_OVERFLOW, b"overflow")
    assert wire.written == []


async def test_with_compression_every_frame_goes_through_aiohttp_for_its_own_deflate_context():
    broker, hub, member, wire, socket, tally = await room_with_member(compress=True)
    posted = [await broker.post("r", "ann", str(i), None) for i in range(3)]
    await settle()
    assert wire.written == [] and ids(socket.sent) == [m.id for m in posted]
    member.stop()
