"""A corpus of bad input against every transport: each probe gets its documented error, and the
server keeps serving without losing what it had accepted."""

from __future__ import annotations

import json
from dataclasses import dataclass

import aiohttp
import pytest

from servers import registry
from conftest import TRANSPORTS, UNIT

POLLING = ("short-polling", "long-polling")
WEBRTC = ("webrtc", "webrtc-unreliable")


@dataclass(frozen=True)
class Probe:
    name: str
    method: str
    path: str
    body: bytes | None = None
    status: int = 400
    only: tuple[str, ...] = TRANSPORTS
    headers: tuple[tuple[str, str], ...] = ()


def body(obj) -> bytes:
    return json.dumps(obj).encode()


M = "/rooms/r/messages"
WS_UPGRADE = (
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)

W = "/rooms/r/webrtc"
SDP_HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
SDP_NO_MEDIA = SDP_HEAD
SDP_AUDIO = SDP_HEAD + "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:0 PCMU/8000\r\n"
SDP_NO_ICE = SDP_HEAD + "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"

PROBES = [
    # POST bodies
    Probe("malformed JSON", "POST", M, b'{"user": "ann", "text":'),
    Probe("JSON array", "POST", M, b"[1, 2]"),
    Probe("JSON string", "POST", M, b'"hello"'),
    Probe("JSON null", "POST", M, b"null"),
    Probe("empty body", "POST", M, b""),
    Probe("missing user", "POST", M, body({"text": "x"})),
    Probe("missing text", "POST", M, body({"user": "ann"})),
    Probe("user is a number", "POST", M, body({"user": 7, "text": "x"})),
    Probe("text is a list", "POST", M, body({"user": "ann", "text": ["x"]})),
    Probe("empty text", "POST", M, body({"user": "ann", "text": ""})),
    Probe("text over 4096 characters", "POST", M, body({"user": "ann", "text": "x" * 4097}), 413),
    Probe("body over 64 KiB", "POST", M, body({"user": "ann", "text": "x" * 70_000}), 413),
    Probe("sent_at is a string", "POST", M, body({"user": "ann", "text": "x", "sent_at": "now"})),
    Probe("sent_at is a boolean", "POST", M, body({"user": "ann", "text": "x", "sent_at": True})),
    Probe("sent_at negative", "POST", M, body({"user": "ann", "text": "x", "sent_at": -5})),
    Probe("sent_at NaN", "POST", M, b'{"user": "ann", "text": "x", "sent_at": NaN}'),
    Probe("unknown field", "POST", M, body({"user": "ann", "text": "x", "admin": True})),
    Probe("user with a space", "POST", M, body({"user": "a b", "text": "x"})),
    Probe("user over 32 characters", "POST", M, body({"user": "u" * 33, "text": "x"})),
    Probe("user with markup", "POST", M, body({"user": "<b>", "text": "x"})),
    Probe("invalid UTF-8", "POST", M, b'{"user": "ann", "text": "\xff\xfe"}'),
    Probe("nested too deeply", "POST", M, b"[" * 50_000),
    Probe("lone surrogate in text", "POST", M, b'{"user": "ann", "text": "\\ud800"}'),
    Probe("room with a bang", "POST", "/rooms/bad!room/messages", body({"user": "ann", "text": "x"})),
    Probe("room over 64 characters", "POST", f"/rooms/{'r' * 65}/messages", body({"user": "ann", "text": "x"})),
    Probe("room with an encoded space", "POST", "/rooms/a%20b/messages", body({"user": "ann", "text": "x"})),
    # History parameters
    Probe("history limit 0", "GET", "/rooms/r/history?limit=0"),
    Probe("history limit 1001", "GET", "/rooms/r/history?limit=1001"),
    Probe("history limit not a number", "GET", "/rooms/r/history?limit=ten"),
    Probe("history before negative", "GET", "/rooms/r/history?before=-1"),
    Probe("history before fractional", "GET", "/rooms/r/history?before=1.5"),
    Probe("history limit twice", "GET", "/rooms/r/history?limit=1&limit=2"),
    Probe("history before huge", "GET", "/rooms/r/history?before=99999999999999999999"),
    Probe("history of an invalid room", "GET", "/rooms/bad!room/history"),
    # Methods and routes
    Probe("DELETE messages", "DELETE", M, status=405),
    Probe("PUT healthz", "PUT", "/healthz", status=405),
    Probe("POST history", "POST", "/rooms/r/history", body({}), 405),
    Probe("unknown route", "GET", "/admin", status=404),
    Probe("nested unknown route", "GET", "/rooms/r/messages/1", status=404),
    # Polling parameters
    Probe("since negative", "GET", f"{M}?since=-1", only=POLLING),
    Probe("since not a number", "GET", f"{M}?since=abc", only=POLLING),
    Probe("since in exponent form", "GET", f"{M}?since=1e3", only=POLLING),
    Probe("since twice", "GET", f"{M}?since=1&since=2", only=POLLING),
    Probe("poll limit 0", "GET", f"{M}?limit=0", only=POLLING),
    Probe("poll limit 1001", "GET", f"{M}?limit=1001", only=POLLING),
    Probe("poll on an invalid room", "GET", "/rooms/bad!room/messages?since=0", only=POLLING),
    Probe("short polling does not hold", "GET", f"{M}?since=0&wait=1", only=("short-polling",)),
    Probe("wait negative", "GET", f"{M}?since=0&wait=-1", only=("long-polling",)),
    Probe("wait not a number", "GET", f"{M}?since=0&wait=soon", only=("long-polling",)),
    Probe("wait infinite", "GET", f"{M}?since=0&wait=inf", only=("long-polling",)),
    Probe("wait NaN", "GET", f"{M}?since=0&wait=nan", only=("long-polling",)),
    # WebSocket upgrade requests
    Probe("ws without an upgrade", "GET", "/rooms/r/ws", only=("websocket",)),
    Probe("ws on an invalid room", "GET", "/rooms/bad!room/ws", only=("websocket",), headers=WS_UPGRADE),
    Probe("ws since negative", "GET", "/rooms/r/ws?since=-1", only=("websocket",), headers=WS_UPGRADE),
    Probe("ws since not a number", "GET", "/rooms/r/ws?since=x", only=("websocket",), headers=WS_UPGRADE),
    Probe("POST to ws", "POST", "/rooms/r/ws", body({}), 405, only=("websocket",)),
    # Event streams: refused before the stream starts
    Probe("events on an invalid room", "GET", "/rooms/bad!room/events", only=("sse",)),
    Probe("events since negative", "GET", "/rooms/r/events?since=-1", only=("sse",)),
    Probe("events since not a number", "GET", "/rooms/r/events?since=x", only=("sse",)),
    Probe("events since twice", "GET", "/rooms/r/events?since=1&since=2", only=("sse",)),
    Probe("Last-Event-ID not a number", "GET", "/rooms/r/events", only=("sse",), headers=(("Last-Event-ID", "x"),)),
    Probe("Last-Event-ID huge", "GET", "/rooms/r/events", only=("sse",),
          headers=(("Last-Event-ID", "9" * 20),)),
    Probe("POST to events", "POST", "/rooms/r/events", body({}), 405, only=("sse",)),
    # WebRTC signaling: refused before any peer connection is made
    Probe("offer not JSON", "POST", W, b'{"type": "offer", "sdp":', only=WEBRTC),
    Probe("offer a JSON array", "POST", W, b"[]", only=WEBRTC),
    Probe("offer without sdp", "POST", W, body({"type": "offer"}), only=WEBRTC),
    Probe("offer sdp a number", "POST", W, body({"type": "offer", "sdp": 7}), only=WEBRTC),
    Probe("offer sdp empty", "POST", W, body({"type": "offer", "sdp": ""}), only=WEBRTC),
    Probe("offer without type", "POST", W, body({"sdp": SDP_NO_MEDIA}), only=WEBRTC),
    Probe("an answer where the offer belongs", "POST", W, body({"type": "answer", "sdp": SDP_NO_MEDIA}), only=WEBRTC),
    Probe("offer with an unknown field", "POST", W, body({"type": "offer", "sdp": SDP_NO_MEDIA, "x": 1}), only=WEBRTC),
    Probe("offer sdp not SDP", "POST", W, body({"type": "offer", "sdp": "hello"}), only=WEBRTC),
    Probe("offer sdp that does not parse", "POST", W, body({"type": "offer", "sdp": "v=0\r\nm=audio x\r\n"}),
          only=WEBRTC),
    Probe("offer without a media section", "POST", W, body({"type": "offer", "sdp": SDP_NO_MEDIA}), only=WEBRTC),
    Probe("offer with audio", "POST", W, body({"type": "offer", "sdp": SDP_AUDIO}), only=WEBRTC),
    Probe("offer without ICE credentials", "POST", W, body({"type": "offer", "sdp": SDP_NO_ICE}), only=WEBRTC),
    Probe("offer as text/plain", "POST", W, body({"type": "offer", "sdp": SDP_NO_MEDIA}), 415, only=WEBRTC,
          headers=(("Content-Type", "text/plain"),)),
    Probe("offer over 64 KiB", "POST", W, body({"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 20_000}), 413,
          only=WEBRTC),
    Probe("offer on an invalid room", "POST", "/rooms/bad!room/webrtc", body({}), only=WEBRTC),
    Probe("offer since negative", "POST", f"{W}?since=-1", body({}), only=WEBRTC),
    Probe("offer since not a number", "POST", f"{W}?since=x", body({}), only=WEBRTC),
    Probe("offer channel unknown", "POST", f"{W}?channel=sometimes", body({}), only=WEBRTC),
    Probe("GET the signaling route", "GET", W, status=404, only=WEBRTC),
]


@dataclass(frozen=True)
class FrameProbe:
    name: str
    data: str | bytes
    close_code: int | None = None  # None: an error frame comes back and the socket stays open


FRAME_PROBES = [
    FrameProbe("malformed JSON", '{"type": "send"'),
    FrameProbe("JSON array", "[]"),
    FrameProbe("missing type", json.dumps({"user": "ann", "text": "x"})),
    FrameProbe("unknown type", json.dumps({"type": "shout", "user": "ann", "text": "x"})),
    FrameProbe("missing text", json.dumps({"type": "send", "user": "ann"})),
    FrameProbe("text over 4096", json.dumps({"type": "send", "user": "ann", "text": "x" * 4097})),
    FrameProbe("invalid user", json.dumps({"type": "send", "user": "a b", "text": "x"})),
    FrameProbe("sent_at a string", json.dumps({"type": "send", "user": "ann", "text": "x", "sent_at": "now"})),
    FrameProbe("unknown field", json.dumps({"type": "send", "user": "ann", "text": "x", "to": "bob"})),
    FrameProbe("nested too deeply", "[" * 50_000),
    FrameProbe("lone surrogate in text", '{"type": "send", "user": "ann", "text": "\\ud800"}'),
    FrameProbe("binary frame", b"\x00\x01binary", close_code=1003),
    FrameProbe("frame over 64 KiB", "x" * (64 * 1024 + 1), close_code=1009),
]


def probes_for(transport: str) -> list[Probe]:
    return [p for p in PROBES if transport in p.only]


def test_corpus_is_large_enough():
    for transport in TRANSPORTS:
        extra = len(FRAME_PROBES) if transport == "websocket" else 0
        assert len(probes_for(transport)) + extra >= 30, transport
    assert len({p.name for p in PROBES}) == len(PROBES)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_http_probes_get_their_documented_error(app_server, transport):
    server = await app_server(transport)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}{M}", json={"user": "ann", "text": "keep me"}) as resp:
            assert resp.status == 201
        failures = []
        for probe in probes_for(transport):
            headers = dict(probe.headers)
            if probe.body is not None:
                headers.setdefault("Content-Type", "application/json")  # 415 otherwise: the hostile corpus tests that
            async with session.request(
                probe.method, f"{server.url}{probe.path}", data=probe.body, headers=headers
            ) as resp:
                text = await resp.text()
                try:
                    error = json.loads(text)["error"]
                except (ValueError, KeyError, TypeError):
                    error = None
                if resp.status != probe.status or not isinstance(error, str) or not error:
                    failures.append(f"{probe.name}: {resp.status} {text[:120]!r}")
                elif "Traceback" in text:
                    failures.append(f"{probe.name}: traceback in the answer")
            async with session.get(f"{server.url}/healthz") as resp:
                assert resp.status == 200, f"server stopped answering after {probe.name}"
        assert not failures, "\n".join(failures)
        async with session.get(f"{server.url}/rooms/r/history") as resp:
            kept = (await resp.json())["messages"]
        assert [m["text"] for m in kept] == ["keep me"]  # nothing accepted was lost, nothing bad was stored


@pytest.mark.parametrize("probe", FRAME_PROBES, ids=lambda p: p.name)
async def test_websocket_frame_probes(app_server, probe):
    server = await app_server("websocket")
    url = f"{server.url}/rooms/r/ws?since=0"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url) as ws:
            if isinstance(probe.data, bytes):
                await ws.send_bytes(probe.data)
            else:
                await ws.send_str(probe.data)
            msg = await ws.receive(timeout=5 * UNIT)
            if probe.close_code is None:
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                reply = json.loads(msg.data)
                assert reply["type"] == "error" and reply["error"], reply
                # The socket is still usable.
                await ws.send_json({"type": "send", "user": "ann", "text": "after"})
                after = await ws.receive_json(timeout=5 * UNIT)
                assert after["type"] == "message" and after["text"] == "after"
            else:
                assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
                assert ws.close_code == probe.close_code
        async with session.get(f"{server.url}/healthz") as resp:
            assert resp.status == 200
        async with session.get(f"{server.url}/rooms/r/history") as resp:
            texts = [m["text"] for m in (await resp.json())["messages"]]
        assert texts == ([] if probe.close_code else ["after"])


@pytest.mark.parametrize("transport", [t for t in TRANSPORTS if registry.get(t).carrier == "tcp"])
async def test_clients_that_reset_right_after_their_request_leave_no_traceback(app_server, transport, caplog):
    # A member that sends its request and resets the connection at once (a closed tab, a killed load generator):
    # its handler finds the transport closing when it writes the answer (a WebSocket's 101, a stream's headers).
    import asyncio
    import socket
    import struct

    server = await app_server(transport)
    path = {"websocket": "/rooms/r/ws?since=0", "sse": "/rooms/r/events"}.get(transport, "/rooms/r/messages?since=0")
    head = "".join(f"{k}: {v}\r\n" for k, v in (WS_UPGRADE if transport == "websocket" else ()))
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n{head}\r\n".encode()
    loop = asyncio.get_running_loop()
    for _ in range(100):
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, request)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
        sock.close()
    await asyncio.sleep(0.3 * UNIT)
    async with aiohttp.ClientSession() as session, session.get(f"{server.url}/healthz") as resp:
        assert resp.status == 200
    assert not [r for r in caplog.records if r.levelno >= 40], [r.getMessage() for r in caplog.records]
