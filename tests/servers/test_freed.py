"""A member that leaves is freed at once: its connection, its response and its member object go by reference
counting when it closes, not at the next full garbage collection, which a server that keeps its members and
allocates little makes rarely (the soak found WebSocket servers growing ~0.9 MB a minute, WebRTC ones ~2.6 MB:
docs/metrics.md)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest
from aiohttp import web
from conftest import UNIT
from helpers.receivers import post, receiver

from servers.guard import GUARD, GuardedRequestHandler
from servers.push import PushMember


def server_side_objects() -> dict[int, object]:
    """The server's per-connection objects alive now (with gc off, those in a cycle no collector has freed too)."""
    return {id(o): o for o in gc.get_objects() if isinstance(o, (PushMember, web.StreamResponse, GuardedRequestHandler))}


def server_side_alive(before: dict[int, object]) -> list[str]:
    """Those alive now that were not before the test (an earlier test of the same worker may hold its own)."""
    return sorted(type(o).__qualname__ for i, o in server_side_objects().items() if i not in before)


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_member_that_leaves_is_freed_at_once_not_at_a_full_collection(app_server, session, transport):
    server = await app_server(transport)
    hub = server.transport(transport).hub
    gc.collect()
    gc.disable()  # what is not freed by reference counting stays in gc.get_objects()
    before = server_side_objects()
    transports: list[weakref.ref] = []  # the server's asyncio transports of its connections
    try:
        for n in range(3):
            async with receiver(session, server.url, transport, "room") as member:
                await post(session, server.url, "room", text=f"hello {n}")
                await member.wait_for(1)
                transports += [weakref.ref(getattr(o.transport, "_transport", o.transport))  # under the meter's
                               for i, o in server_side_objects().items()
                               if i not in before and isinstance(o, GuardedRequestHandler) and o.transport is not None]
        await session.close()  # the client's keep-alive connection too: its protocol is a server-side object
        connections = server.app[GUARD].connections
        async with asyncio.timeout(5 * UNIT):
            while hub.members or connections.open:  # the server let every one go
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # their handlers' last steps
        assert server_side_alive(before) == []
        assert transports and [type(t()).__qualname__ for t in transports if t() is not None] == []
    finally:
        gc.enable()


async def test_a_webrtc_member_that_leaves_is_freed_at_once_with_its_peer_connection(app_server, session):
    """Its peer connection and everything aiortc and aioice opened for it (ICE, DTLS, SCTP, the data channel) go
    when it closes: aiortc left them in reference cycles (~170 objects, ~140 kB a connection until a full collection;
    servers.rtc.close)."""
    server = await app_server("webrtc")
    webrtc = server.transport("webrtc")
    gc.collect()
    gc.disable()
    try:
        held: list[weakref.ref] = []  # aiortc's and aioice's objects of the server's side (the test's peer has its own)
        ours: dict[int, type] = {}  # rtlab's (slotted: no weak references)
        for n in range(2):
            async with receiver(session, server.url, "webrtc", "room") as member:
                await post(session, server.url, "room", text=f"hello {n}")
                await member.wait_for(1)
                (peer,) = webrtc.peers
                pc = peer.pc
                ice = pc.sctp.transport.transport
                held += [weakref.ref(o) for o in (peer.member.channel, pc, pc.sctp, pc.sctp.transport, ice,
                                                  ice.iceGatherer, ice.iceGatherer._connection)]
                ours |= {id(peer): type(peer), id(peer.member): type(peer.member)}
                del peer, pc, ice
        async with asyncio.timeout(5 * UNIT):
            while webrtc.peers or webrtc.hub.members:  # the server let every one go
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # their handlers' and tasks' last steps
        alive = [o for o in (ref() for ref in held) if o is not None]
        alive += [o for o in gc.get_objects() if ours.get(id(o)) is type(o)]
        assert sorted(type(o).__qualname__ for o in alive) == []
    finally:
        gc.enable()
