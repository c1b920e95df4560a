"""What only WebRTC does: SDP signaling, ICE on loopback only, the chat on a data channel, reliability chosen by
the offered channel, exact UDP bytes, and peer connections that are bounded, timed out and never leaked."""

from __future__ import annotations

import asyncio
import inspect
import json
import re

import aiohttp
import pytest
from conftest import FLOOD_OK, UNIT
from helpers.receivers import UnreliableWebRTCReceiver, WebRTCReceiver, count_datagrams, post
from test_wire_bytes import RawClient, http_request, scrape

from experiments.figures import metric_total
from servers import rtc

BOTH = ("webrtc", "webrtc-unreliable")


async def until(predicate, timeout: float = 5 * UNIT):
    """Wait until predicate() (a value, or an awaitable one) is true; return it."""
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)


async def peers_are(url: str, count: int, transport: str | None = None) -> None:
    await until(lambda: _is(peers(url, transport), count))


async def _is(value, expected) -> bool:
    return (await value) == expected


async def peers(url: str, transport: str | None = None) -> float:
    metrics = await scrape(url)
    if transport is None:
        return metric_total(metrics, "rtlab_webrtc_peer_connections")
    return metric_total(metrics, "rtlab_webrtc_peer_connections", transport=transport)


async def offer(unreliable: bool = False, label: str = "chat"):
    """A client peer connection with its chat channel and its gathered offer (no server asked yet)."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection(rtc.configuration())
    channel = pc.createDataChannel(label, **({"ordered": False, "maxRetransmits": 0} if unreliable else {}))
    with rtc.gathering():
        await pc.setLocalDescription(await pc.createOffer())
    return pc, channel


async def connect(session, url: str, room: str, unreliable: bool = False, query: str = "", label: str = "chat"):
    """Offer, take the answer, and return (pc, channel, messages queue) once the exchange has begun."""
    from aiortc import RTCSessionDescription

    pc, channel = await offer(unreliable, label)
    inbox: asyncio.Queue = asyncio.Queue()
    channel.on("message", lambda data: inbox.put_nowait(json.loads(data)))
    async with session.post(f"{url}/rooms/{room}/webrtc?since=0{query}",
                            json={"type": "offer", "sdp": pc.localDescription.sdp}) as resp:
        assert resp.status == 200, await resp.text()
        answer = await resp.json()
    assert answer["type"] == "answer"
    await pc.setRemoteDescription(RTCSessionDescription(**answer))
    return pc, channel, inbox


async def next_of(inbox: asyncio.Queue, kind: str) -> dict:
    async with asyncio.timeout(5 * UNIT):
        while True:
            item = await inbox.get()
            if item["type"] == kind:
                return item


@pytest.mark.parametrize("addresses", [("127.0.0.1",), ("127.0.0.2",)])
async def test_the_answer_offers_host_candidates_on_the_configured_addresses_only(app_server, session, addresses):
    server = await app_server("webrtc", webrtc_ice_addresses=addresses)
    pc, channel, inbox = await connect(session, server.url, "ice")
    try:
        answer = pc.remoteDescription.sdp
        assert rtc.candidate_addresses(answer) and set(rtc.candidate_addresses(answer)) == set(addresses)
        assert all(" typ host" in line for line in answer.splitlines() if line.startswith("a=candidate:"))
        await until(lambda: channel.readyState == "open")
        channel.send(json.dumps({"type": "send", "user": "ann", "text": "over loopback"}))
        assert (await next_of(inbox, "message"))["text"] == "over loopback"  # the sender hears its own message
    finally:
        await pc.close()


def test_gathering_uses_exactly_the_addresses_given():
    import aioice.ice

    rtc.install()
    with rtc.gathering(("127.0.0.1", "::1")):
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "::1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1"]  # the default: loopback
    for bad in ("0.0.0.0", "localhost", "224.0.0.251"):
        with pytest.raises(ValueError):
            rtc.check_addresses([bad])
    sdp = "v=0\r\na=candidate:1 1 udp 1 abc.local 5000 typ host\r\na=candidate:2 1 udp 1 127.0.0.1 5001 typ host\r\n"
    assert rtc.candidate_addresses(rtc.without_unresolvable_candidates(sdp)) == ["127.0.0.1"]


async def test_a_peer_that_offers_only_mdns_candidates_connects_and_no_name_is_resolved(app_server, session):
    """As a browser does: its host candidates are `.local` names. The server drops them (resolving one would join
    the mDNS group on every interface) and learns the peer's address from its checks."""
    import aioice.ice
    from aiortc import RTCSessionDescription

    server = await app_server("webrtc")
    pc, channel = await offer()
    sdp = re.sub(r"(a=candidate:\S+ \d+ udp \d+ )127\.0\.0\.1 ", r"\g<1>0d9a6c1e-5d5e-4d3a-9e7a-2b1c3d4e5f60.local ",
                 pc.localDescription.sdp)
    assert ".local" in sdp and "127.0.0.1" not in rtc.candidate_addresses(sdp)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    try:
        async with session.post(f"{server.url}/rooms/m/webrtc", json={"type": "offer", "sdp": sdp}) as resp:
            assert resp.status == 200
            await pc.setRemoteDescription(RTCSessionDescription(**await resp.json()))
        await asyncio.wait_for(opened.wait(), 5 * UNIT)
        assert getattr(aioice.ice._mdns, "protocol", None) is None  # no mDNS socket was ever opened
    finally:
        await pc.close()


def test_the_ice_address_flags_replace_loopback_and_refuse_what_is_not_an_address(capsys):
    from servers.__main__ import parse_args

    config = parse_args(["--transport", "all", "--webrtc-ice-address", "10.0.0.1", "--webrtc-ice-address", "::1"])
    assert config.knob("webrtc_ice_addresses") == ("10.0.0.1", "::1")
    assert config.knob("webrtc_unreliable_ice_addresses") == ("127.0.0.1",)
    with pytest.raises(SystemExit):
        parse_args(["--transport", "webrtc", "--webrtc-ice-address", "lan"])
    assert "not an IP address" in capsys.readouterr().err


@pytest.mark.parametrize("transport", BOTH)
async def test_chat_on_the_channel_backlog_posts_and_errors_that_keep_it_open(app_server, session, transport):
    server = await app_server(transport)
    for i in range(3):
        await post(session, server.url, "c", text=f"before {i}")
    kind = WebRTCReceiver if transport == "webrtc" else UnreliableWebRTCReceiver
    async with kind(session, server.url, "c", since=1) as member:
        await member.wait_for(2)  # the backlog after since=1, sent when the channel opens
        await post(session, server.url, "c", text="over HTTP")
        member.send("bob", "over the channel", sent_at=123.5)
        got = await member.wait_for(4)
        for bad in ("{", "[]", json.dumps({"type": "shout", "user": "a", "text": "x"}),
                    json.dumps({"type": "send", "user": "a b", "text": "x"}),
                    json.dumps({"type": "send", "user": "a", "text": "x" * 4097}), "[" * 50_000, b"\x00binary"):
            member.channel.send(bad)
        member.send("bob", "still open")
        await member.wait_for(5)
        errors = await until(lambda: len(member.others) >= 7 and member.others)
    assert [m["id"] for m in got[:4]] == [2, 3, 4, 5] and got[3]["sent_at"] == 123.5
    assert [m["text"] for m in member.received] == ["before 1", "before 2", "over HTTP", "over the channel",
                                                    "still open"]
    assert [e["type"] for e in errors] == ["error"] * 7 and all(e["error"] for e in errors)
    async with session.get(f"{server.url}/rooms/c/history") as resp:
        assert len((await resp.json())["messages"]) == 6  # nothing bad was stored


async def test_udp_bytes_are_exact_at_both_ends(app_server):
    """The server's wire counters move by the signaling exchange (counted on a raw TCP connection) plus every UDP
    datagram the test peer's own sockets sent and received: STUN, DTLS, SCTP, all of it."""
    from aiortc import RTCSessionDescription

    server = await app_server("webrtc", demo=True)  # the demo page's per-client ledgers count them too
    before = await scrape(server.url)
    pc, channel = await offer()
    datagrams = count_datagrams(pc)
    opened = asyncio.Event()
    channel.on("open", opened.set)
    inbox: asyncio.Queue = asyncio.Queue()
    channel.on("message", inbox.put_nowait)
    tcp = await RawClient.open(server.port)
    body = json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}).encode()
    await tcp.send(http_request("POST", "/rooms/b/webrtc?since=0&client=pane-1", server.port, body, close=True))
    status, answer = await tcp.read_response()
    assert status == 200
    await tcp.read_to_eof()
    await tcp.close()
    try:
        await pc.setRemoteDescription(RTCSessionDescription(**json.loads(answer)))
        await asyncio.wait_for(opened.wait(), 5 * UNIT)
        for i in range(3):
            channel.send(json.dumps({"type": "send", "user": "ann", "text": f"datagram {i}"}))
            await asyncio.wait_for(inbox.get(), 5 * UNIT)

        async def both_ends() -> tuple[dict, dict]:
            after = await scrape(server.url)
            server_counted = {name: metric_total(after, name, transport="webrtc")
                              - metric_total(before, name, transport="webrtc")
                              for name in ("rtlab_wire_received_bytes_total", "rtlab_wire_sent_bytes_total")}
            peer_counted = {"rtlab_wire_received_bytes_total": tcp.sent + datagrams.sent_bytes,
                            "rtlab_wire_sent_bytes_total": tcp.received + datagrams.received_bytes}
            return server_counted, peer_counted, after

        # Until the last SACKs have crossed (and any consent check in flight has its answer).
        try:
            await until(lambda: _same(both_ends()))
        except TimeoutError:
            pass
        server_counted, peer_counted, after = await both_ends()
        assert server_counted == peer_counted, f"server counted {server_counted}, the peer's sockets {peer_counted}"
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/demo/clients/bytes?ids=pane-1") as r:
            ledger = (await r.json())["clients"]["pane-1"]
        assert ledger == {"bytes_in": peer_counted["rtlab_wire_received_bytes_total"],
                          "bytes_out": peer_counted["rtlab_wire_sent_bytes_total"]}
        assert datagrams.sent > 5 and datagrams.received > 5  # ICE checks, the DTLS handshake, SCTP, the messages
        assert metric_total(after, "rtlab_messages_accepted_total") == 3
        assert metric_total(after, "rtlab_messages_delivered_total") == 3
    finally:
        await pc.close()


async def _same(ends) -> bool:
    server_counted, peer_counted, _ = await ends
    return server_counted == peer_counted


async def test_peer_connections_are_cleaned_up_whether_they_close_fail_or_never_connect(app_server, session):
    server = await app_server("webrtc", webrtc_connect_timeout_s=0.5 * UNIT)
    members = [WebRTCReceiver(session, server.url, "leak") for _ in range(3)]
    for member in members:
        await member.__aenter__()
    assert await peers(server.url) == 3
    await members[0].pc.close()  # the peer hangs up
    members[1].channel.close()  # the peer closes its chat channel only
    await peers_are(server.url, 1)
    # An offer whose peer never takes the answer: closed after the connect timeout.
    pc, _ = await offer()
    async with session.post(f"{server.url}/rooms/leak/webrtc",
                            json={"type": "offer", "sdp": pc.localDescription.sdp}) as resp:
        assert resp.status == 200
    assert await peers(server.url) == 2
    await peers_are(server.url, 1)
    assert metric_total(await scrape(server.url), "rtlab_webrtc_connect_timeouts_total") == 1
    await pc.close()
    for member in members:
        await member.__aexit__(None, None, None)
    await peers_are(server.url, 0)


async def test_peer_connections_are_capped(app_server, session):
    server = await app_server("webrtc", webrtc_max_peers=1)
    async with WebRTCReceiver(session, server.url, "cap"):
        pc, _ = await offer()
        async with session.post(f"{server.url}/rooms/cap/webrtc",
                                json={"type": "offer", "sdp": pc.localDescription.sdp}) as resp:
            assert resp.status == 503 and "most" in (await resp.json())["error"]
        await pc.close()
        assert metric_total(await scrape(server.url), "rtlab_webrtc_offers_refused_total") == 1
    await peers_are(server.url, 0)
    async with WebRTCReceiver(session, server.url, "cap") as member:  # room again
        await post(session, server.url, "cap")
        await member.wait_for(1)


async def test_the_channel_decides_reliability_and_the_hint_labels_the_signaling(app_server, session):
    server = await app_server(BOTH)
    # channel=unreliable: the offer is the unreliable transport's, request and datagrams alike.
    async with UnreliableWebRTCReceiver(session, server.url, "k", query="&channel=unreliable"):
        assert await peers(server.url, "webrtc-unreliable") == 1 and await peers(server.url, "webrtc") == 0
    await peers_are(server.url, 0)
    # No hint: answered by the reliable transport, handed to the unreliable one when its channel opens.
    async with UnreliableWebRTCReceiver(session, server.url, "k") as member:
        assert await peers(server.url, "webrtc-unreliable") == 1 and await peers(server.url, "webrtc") == 0
        await post(session, server.url, "k")
        await member.wait_for(1)
    metrics = await scrape(server.url)
    assert metric_total(metrics, "rtlab_requests_total", transport="webrtc-unreliable") == 1
    assert metric_total(metrics, "rtlab_requests_total", transport="webrtc") == 1
    assert metric_total(metrics, "rtlab_wire_sent_bytes_total", transport="webrtc-unreliable") > 2 * 1000

    # A channel that is neither, or not labelled chat, or whose kind is not mounted: an error, then closed.
    alone = await app_server("webrtc-unreliable")
    for url, unreliable, label in ((server.url, False, "other"), (alone.url, False, "chat")):
        pc, channel, inbox = await connect(session, url, "k", unreliable=unreliable, label=label)
        try:
            error = await next_of(inbox, "error")
            assert "chat" in error["error"] or "reliable" in error["error"]
            await peers_are(url, 0)
        finally:
            await pc.close()


async def test_a_drain_closes_channels_with_1012_and_refuses_new_offers(app_server, session):
    server = await app_server(BOTH)
    async with WebRTCReceiver(session, server.url, "d") as member:
        async with session.post(f"{server.url}/admin/drain") as resp:
            drained = await resp.json()
        assert drained["webrtc_peers_closed"] == 1 and drained["webrtc_unreliable_peers_closed"] == 0
        await asyncio.wait_for(member.closed.wait(), 5 * UNIT)
        assert member.others[-1]["type"] == "close" and member.others[-1]["code"] == 1012
    pc, _ = await offer()
    async with session.post(f"{server.url}/rooms/d/webrtc",
                            json={"type": "offer", "sdp": pc.localDescription.sdp}) as resp:
        assert resp.status == 503
    await pc.close()
    assert await peers(server.url) == 0


async def test_a_flood_gets_errors_then_a_close_with_1008(app_server, session):
    server = await app_server("webrtc", send_rate_per_s=1.0, send_burst=3)
    async with WebRTCReceiver(session, server.url, "f") as member:
        for i in range(10):
            member.send("ann", f"flood {i}")
        await asyncio.wait_for(member.closed.wait(), 5 * UNIT)
        assert [o["type"] for o in member.others][-1] == "close" and member.others[-1]["code"] == 1008
        assert [o["type"] for o in member.others] == ["error", "error", "close"]
    await peers_are(server.url, 0)


async def test_a_reader_that_stops_acknowledging_is_closed_with_1013_and_the_room_goes_on(app_server, session):
    server = await app_server("webrtc", webrtc_send_queue=4, **FLOOD_OK)
    async with WebRTCReceiver(session, server.url, "slow") as slow, WebRTCReceiver(session, server.url, "slow") as fast:
        # The slow peer's sockets stop taking datagrams: no SACK comes back, SCTP's window and then the channel's
        # buffer fill, and its queue overflows.
        connection = slow.pc.sctp.transport.transport.iceGatherer._connection
        for protocol in connection._protocols:
            protocol.datagram_received = lambda data, addr: None
        for i in range(120):
            await post(session, server.url, "slow", text=f"{i:04d} " + "x" * 1000)
        await fast.wait_for(120)
        await peers_are(server.url, 1)
    metrics = await scrape(server.url)
    assert metric_total(metrics, "rtlab_webrtc_overflow_closes_total") == 1
    assert server.transport("webrtc").hub.overflow_closes == 1
    await peers_are(server.url, 0)


async def test_shutdown_closes_channels_with_1001(app_server, session):
    server = await app_server("webrtc-unreliable")
    async with UnreliableWebRTCReceiver(session, server.url, "s") as member:
        await server.transport("webrtc-unreliable").close_members(1001, "server shutdown")  # what SIGTERM runs
        await asyncio.wait_for(member.closed.wait(), 5 * UNIT)
        assert member.others[-1] == {"type": "close", "code": 1001, "reason": "server shutdown"}
    assert await peers(server.url) == 0
