"""What only WebTransport does: an HTTP/3 endpoint on a UDP port of its own with a certificate made at start, sessions
opened by CONNECT, pushes on streams or in datagrams, bad input answered (a status, an error message, a stopped
stream, a close code), exact UDP bytes, and sessions bounded and closed with a code the client acts on."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest
from conftest import FLOOD_OK, UNIT
from helpers.receivers import DatagramWebTransportReceiver, WebTransportReceiver, counting_udp_socket, post
from test_webrtc import until
from test_wire_bytes import scrape

from clients.base import ClientError
from clients.webtransport import open_session
from experiments.figures import metric_total
from servers import certs
from servers.quic import ENDPOINT

BOTH = ("webtransport", "webtransport-datagram")
RECEIVER = {"webtransport": WebTransportReceiver, "webtransport-datagram": DatagramWebTransportReceiver}


async def endpoint(session, url: str, transport: str = "webtransport") -> dict:
    async with session.get(f"{url}/rooms/r/{transport}") as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def connect_status(info: dict, path: str, origin: str | None = None) -> tuple[int, str]:
    """Open a session at `path`; return (200, "") or the refusal's status and body."""
    try:
        conn = await open_session("127.0.0.1", info["port"], path, on_frame=lambda d, t: None,
                                  on_end=lambda c, r: None, sha256=bytes.fromhex(info["certificate"]["sha256_hex"]),
                                  origin=origin)
    except ClientError as error:
        text = str(error)
        if "answered " not in text:
            raise
        return int(text.split("answered ")[1].split(":")[0]), text
    conn.close()
    return 200, ""


async def test_the_endpoint_is_on_the_http_ports_number_with_a_short_lived_pinned_certificate(app_server, session):
    server = await app_server(BOTH)
    info = await endpoint(session, server.url)
    assert info["port"] == server.port  # UDP, the HTTP port's number (--webtransport-port otherwise)
    assert info["url"] == f"https://127.0.0.1:{server.port}/rooms/r/webtransport"
    assert (await endpoint(session, server.url, "webtransport-datagram"))["port"] == server.port  # one endpoint
    not_after = dt.datetime.fromisoformat(info["certificate"]["not_after"])
    assert dt.timedelta(0) < not_after - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(days=certs.MAX_DAYS)
    # The page pins this hash: a session to a server with another certificate does not open.
    wrong = dict(info, certificate={"sha256_hex": "00" * 32})
    with pytest.raises(ClientError, match="certificate is not the one its page named"):
        await connect_status(wrong, "/rooms/r/webtransport")


async def test_the_certificate_is_ecdsa_p256_and_its_hash_is_the_one_served(app_server, session):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    server = await app_server("webtransport")
    endpoint_ = server.app[ENDPOINT]
    cert = x509.load_pem_x509_certificate(endpoint_.certificate.cert_pem)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    info = await endpoint(session, server.url)
    assert info["certificate"]["sha256_hex"] == endpoint_.certificate.sha256_hex


@pytest.mark.parametrize("transport", BOTH)
async def test_a_session_sends_and_receives_on_streams_and_datagrams(app_server, session, transport):
    server = await app_server(transport)
    async with RECEIVER[transport](session, server.url, "r") as member:
        await post(session, server.url, "r", "ann", "by post")
        member.send("bob", "on a stream", 1.5, datagram=False)
        member.send("bob", "in a datagram", 2.5, datagram=True)
        await member.wait_for(3)
        assert sorted(m["text"] for m in member.received) == ["by post", "in a datagram", "on a stream"]
        assert member.ids() == [1, 2, 3]
        async with session.get(f"{server.url}/metrics") as resp:
            metrics = await resp.text()
        assert f'rtlab_webtransport_sessions{{transport="{transport}"}} 1.0' in metrics


@pytest.mark.parametrize("transport", BOTH)
async def test_bad_messages_get_an_error_and_the_session_stays_open(app_server, session, transport):
    server = await app_server(transport)
    async with RECEIVER[transport](session, server.url, "r") as member:
        conn = member.conn
        for bad in (b"not json", b"[1]", b'{"type": "hello"}', b'{"type": "send", "user": "bad user!", "text": "x"}',
                    b"\xff\xfe", b'{"type": "send", "user": "a", "text": "' + b"x" * 70_000 + b'"}'):
            conn.send_line(bad)
        conn.send_datagram(b"{}")
        await until(lambda: len(member.others) >= 7)
        errors = [o["error"] for o in member.others if o["type"] == "error"]
        assert len(errors) == 7, member.others
        assert any("not valid JSON" in e for e in errors) and any("UTF-8" in e for e in errors)
        assert any("over 65536 bytes" in e for e in errors) and any('type must be "send"' in e for e in errors)
        member.send("ann", "still here", 1.0)
        await member.wait_for(1)
    async with session.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200


async def test_too_many_streams_at_once_are_stopped_with_an_error(app_server, session):
    server = await app_server("webtransport", webtransport_max_streams=2)
    async with WebTransportReceiver(session, server.url, "r") as member:
        conn = member.conn
        for _ in range(4):  # streams left open: each holds a slot until it ends
            stream_id = conn.http.create_webtransport_stream(conn.session_id, is_unidirectional=True)
            conn._quic.send_stream_data(stream_id, b'{"type": "send"')
        conn.transmit()
        await until(lambda: len(member.others) >= 2)
        assert all("more than 2 streams" in o["error"] for o in member.others)


@pytest.mark.parametrize(("path", "status", "words"), [
    ("/rooms/r/nothing", 404, "no WebTransport session"),
    ("/elsewhere", 404, "no WebTransport session"),
    ("/rooms/bad!room/webtransport", 400, "room"),
    ("/rooms/r/webtransport?since=-1", 400, "since"),
    ("/rooms/r/webtransport?since=1&since=2", 400, "more than once"),
])
async def test_bad_connects_are_answered_with_a_status_and_a_json_error(app_server, session, path, status, words):
    server = await app_server("webtransport")
    got, text = await connect_status(await endpoint(session, server.url), path)
    assert got == status and words in text, text


async def test_a_foreign_page_is_refused_and_the_servers_own_page_is_not(app_server, session):
    server = await app_server("webtransport")
    info = await endpoint(session, server.url)
    status, text = await connect_status(info, "/rooms/r/webtransport", origin="https://evil.example")
    assert status == 403 and "Origin" in text
    assert (await connect_status(info, "/rooms/r/webtransport", origin=server.url))[0] == 200


async def test_a_request_that_is_not_a_session_gets_404_json(app_server, session):
    server = await app_server("webtransport")
    info = await endpoint(session, server.url)
    conn = await open_session("127.0.0.1", info["port"], "/rooms/r/webtransport", on_frame=lambda d, t: None,
                              on_end=lambda c, r: None)
    got: list = []
    stream_id = conn._quic.get_next_available_stream_id()
    conn.http_event = lambda event: got.append(event)
    conn.http.send_headers(stream_id, [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1"),
                                       (b":path", b"/")], end_stream=True)
    conn.transmit()
    await until(lambda: any(getattr(e, "stream_ended", False) for e in got))
    assert dict(got[0].headers)[b":status"] == b"404"
    assert "serves sessions only" in json.loads(b"".join(e.data for e in got[1:]))["error"]
    conn.close()


async def test_sessions_beyond_the_cap_get_503_and_one_per_connection(app_server, session):
    server = await app_server("webtransport", webtransport_max_sessions=1)
    async with WebTransportReceiver(session, server.url, "r") as member:
        info = await endpoint(session, server.url)
        status, text = await connect_status(info, "/rooms/r/webtransport")
        assert status == 503 and "most webtransport sessions (1)" in text
        conn = member.conn  # a second CONNECT on a connection that has its session
        answered = asyncio.get_running_loop().create_future()
        second = conn._quic.get_next_available_stream_id()
        original = conn.http_event
        conn.http_event = lambda e: (answered.done() or getattr(e, "stream_id", None) != second
                                     or answered.set_result(e)) and original(e)
        conn.http.send_headers(second, [(b":method", b"CONNECT"), (b":protocol", b"webtransport"),
                                        (b":scheme", b"https"), (b":authority", b"127.0.0.1"),
                                        (b":path", b"/rooms/r/webtransport")])
        conn.transmit()
        async with asyncio.timeout(5 * UNIT):
            head = await answered
        assert dict(head.headers)[b":status"] == b"400"
    await until(lambda: not server.transport("webtransport").sessions)


@pytest.mark.parametrize("transport", BOTH)
async def test_drain_and_shutdown_close_sessions_with_a_code(app_server, session, transport):
    server = await app_server(transport)
    async with RECEIVER[transport](session, server.url, "r") as member:
        async with session.post(f"{server.url}/admin/drain") as resp:
            assert resp.status == 200, await resp.text()
        await until(lambda: member.ended is not None)
        assert member.ended[0] == 1012
        info = await endpoint(session, server.url, transport)
        status, text = await connect_status(info, f"/rooms/r/{transport}")
        assert status == 503 and "draining" in text
    other = await app_server(transport)
    async with RECEIVER[transport](session, other.url, "r") as member:
        await other.stop()
        assert member.ended is not None and member.ended[0] == 1001


@pytest.mark.parametrize("transport", BOTH)
async def test_udp_bytes_are_counted_exactly_at_the_servers_socket(app_server, session, transport):
    # The server's counts for the transport move by exactly what the client's own socket sent and received: the
    # QUIC handshake, acknowledgements, the session's CONNECT, pushes, sends, pings and the close.
    server = await app_server((transport, "websocket"), **FLOOD_OK)
    info = await endpoint(session, server.url, transport)
    before = await scrape(server.url)
    received, ended = [], []
    count = __import__("helpers.receivers", fromlist=["DatagramCount"]).DatagramCount()
    conn = await open_session("127.0.0.1", info["port"], f"/rooms/r/{transport}", sock=counting_udp_socket(count),
                              on_frame=lambda d, t: received.append(d), on_end=lambda c, r: ended.append(c),
                              sha256=bytes.fromhex(info["certificate"]["sha256_hex"]))
    for i in range(20):
        await post(session, server.url, "r", "ann", f"message {i}")
        conn.send_line(json.dumps({"type": "send", "user": "bob", "text": f"sent {i}"}).encode())
    await until(lambda: len(received) >= 40)
    conn.close_session(0, "done")
    await until(lambda: not server.transport(transport).endpoint.connections)
    await asyncio.sleep(0.2 * UNIT)
    conn._transport.close()
    after = await scrape(server.url)
    moved = {kind: metric_total(after, f"rtlab_wire_{kind}_bytes_total", transport=transport)
             - metric_total(before, f"rtlab_wire_{kind}_bytes_total", transport=transport)
             for kind in ("received", "sent")}
    # At least a datagram a send (aioquic sends each at once) beside the handshake's; acknowledgements may ride along.
    assert count.sent > 20 and moved == {"received": count.sent_bytes, "sent": count.received_bytes}
