"""The demo page's server side: where it is mounted, its security headers, and exact bytes per client id."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from types import SimpleNamespace

import aiohttp
from conftest import ROOT, TRANSPORTS, UNIT

from servers import registry
from servers.demo import ClientLedgers

STATIC = ROOT / "servers" / "static"
HEARTBEAT_OFF = {"ws_heartbeat_s": 3600.0, "sse_heartbeat_s": 3600.0}  # no ping in an exchange counted to the byte


async def get(url: str) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, dict(response.headers), await response.text()


async def test_page_is_mounted_with_several_transports_or_when_asked(app_server):
    for transport in TRANSPORTS:
        server = await app_server(transport)
        status, _, body = await get(server.url + "/")
        assert status == 404 and "error" in json.loads(body)
    server = await app_server(TRANSPORTS)
    status, headers, body = await get(server.url + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8" and "<title>" in body
    one = await app_server("sse", demo=True)
    assert (await get(one.url + "/"))[0] == 200
    assert (await get((await app_server(TRANSPORTS[:2], demo=False)).url + "/"))[0] == 404


async def test_the_panes_are_the_mounted_transports_with_the_registry_colours(app_server):
    server = await app_server(TRANSPORTS[::-1])
    status, _, body = await get(server.url + "/demo/transports")
    panes = json.loads(body)["transports"]
    assert status == 200 and [p["name"] for p in panes] == list(TRANSPORTS[::-1])  # /healthz's order
    for pane in panes:
        entry = registry.get(pane["name"])
        assert (pane["label"], pane["colour"]) == (entry.label, entry.colour)
        assert pane["module"] == f"/static/transports/{pane['name']}.js"
        status, headers, source = await get(server.url + pane["module"])
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert source == entry.browser.read_text()
    # A transport the server does not mount has no pane and no module here.
    partial = await app_server(TRANSPORTS[:2])
    assert [p["name"] for p in json.loads((await get(partial.url + "/demo/transports"))[2])["transports"]] == \
        list(TRANSPORTS[:2])
    assert (await get(f"{partial.url}/static/transports/{TRANSPORTS[-1]}.js"))[0] == 404


async def test_page_and_assets_carry_a_policy_that_forbids_inline_script(app_server):
    server = await app_server(TRANSPORTS)
    for path, kind in (("/", "text/html"), ("/static/demo.js", "text/javascript"), ("/static/pane.js", "text/javascript"),
                       ("/static/demo.css", "text/css"), ("/demo/transports", "application/json"),
                       *((f"/static/transports/{t}.js", "text/javascript") for t in TRANSPORTS)):
        status, headers, _ = await get(server.url + path)
        assert status == 200 and headers["Content-Type"].startswith(kind)
        policy = headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe" not in policy
        assert "require-trusted-types-for 'script'" in policy and "frame-ancestors 'none'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
    # Only the listed files are served.
    for path in ("/static/index.html", "/static/../servers/app.py", "/static/%2e%2e/app.py"):
        assert (await get(server.url + path))[0] == 404


def test_page_source_has_no_inline_script_no_html_sinks_and_no_third_party():
    html = (STATIC / "index.html").read_text()
    assert [tag for tag in re.findall(r"<script[^>]*>", html)] == ['<script type="module" src="/static/demo.js">']
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"<style|\sstyle=", html), "inline style"
    scripts = [STATIC / "demo.js", STATIC / "pane.js", *(registry.get(t).browser for t in TRANSPORTS)]
    for path in [STATIC / "index.html", STATIC / "demo.css", *scripts]:
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to another origin"
    for path in scripts:
        assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function",
                             path.read_text()), path.name
    # The page names no transport: its panes come from the server (/demo/transports).
    for path in (STATIC / "index.html", STATIC / "demo.js", STATIC / "pane.js", STATIC / "demo.css"):
        assert not [t for t in TRANSPORTS if re.search(rf"\b{t}\b", path.read_text())], path.name


class Raw:
    """One TCP connection that counts the bytes it writes and reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.sent = self.received = 0

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)

    async def read(self, n: int) -> bytes:
        data = await asyncio.wait_for(self.reader.readexactly(n), 5 * UNIT)
        self.received += n
        return data

    async def read_head(self) -> dict[str, str]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5 * UNIT)
        self.received += len(head)
        lines = head.decode("latin-1").split("\r\n")[1:-2]
        return {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}

    async def response(self) -> bytes:
        headers = await self.read_head()
        return await self.read(int(headers["content-length"]))

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def client_bytes(url: str, *ids: str) -> dict:
    status, _, body = await get(f"{url}/demo/clients/bytes?ids={','.join(ids)}")
    assert status == 200
    answer = json.loads(body)
    assert answer["exact"] is True
    return answer["clients"]


async def test_bytes_are_counted_exactly_per_client_id_across_requests_and_connections(app_server):
    server = await app_server(TRANSPORTS, **HEARTBEAT_OFF)
    host = f"Host: 127.0.0.1:{server.port}\r\n"
    poller, other = await Raw.open(server.port), await Raw.open(server.port)

    # Two clients take turns on one keep-alive connection; a third request names no client.
    await poller.send(f"GET /rooms/r/messages?since=0&client=ann-sp HTTP/1.1\r\n{host}\r\n".encode())
    await poller.response()
    ann_in, ann_out = poller.sent, poller.received
    body = b'{"user": "bob", "text": "hello"}'
    await poller.send(
        f"POST /rooms/r/messages?client=bob-lp HTTP/1.1\r\n{host}Content-Length: {len(body)}\r\n\r\n".encode() + body
    )
    await poller.response()
    bob_in, bob_out = poller.sent - ann_in, poller.received - ann_out
    await poller.send(f"GET /rooms/r/history HTTP/1.1\r\n{host}\r\n".encode())
    await poller.response()
    # Ann again, on another connection: her ledger spans connections.
    before = other.sent, other.received
    await other.send(f"GET /rooms/r/messages?since=1&client=ann-sp HTTP/1.1\r\n{host}\r\n".encode())
    await other.response()
    ann_in, ann_out = ann_in + other.sent - before[0], ann_out + other.received - before[1]

    # A WebSocket: the upgrade and every frame, both ways, are the socket's client's.
    socket = await Raw.open(server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    await socket.send(
        f"GET /rooms/r/ws?client=cy-ws HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await socket.read_head()
    payload = json.dumps({"type": "send", "user": "cy", "text": "over the socket"}).encode()
    mask = os.urandom(4)
    await socket.send(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    first, length = await socket.read(2)
    await socket.read(length)  # the echo: {"type":"message",...}
    assert first == 0x81 and length < 126

    # An event stream: its request, its head and every chunk it has written, heartbeats included.
    stream = await Raw.open(server.port)
    await stream.send(f"GET /rooms/r/events?client=dee-sse HTTP/1.1\r\n{host}\r\n".encode())
    await stream.read_head()
    retry = await asyncio.wait_for(stream.reader.readuntil(b"\n\n\r\n"), 5 * UNIT)  # one chunk: retry: ...
    stream.received += len(retry)

    counts = await client_bytes(server.url, "ann-sp", "bob-lp", "cy-ws", "dee-sse", "nobody")
    assert counts == {
        "ann-sp": {"bytes_in": ann_in, "bytes_out": ann_out},
        "bob-lp": {"bytes_in": bob_in, "bytes_out": bob_out},
        "cy-ws": {"bytes_in": socket.sent, "bytes_out": socket.received},
        "dee-sse": {"bytes_in": stream.sent, "bytes_out": stream.received},
    }
    # Asking for the counts is counted nowhere: not for a client, not under a transport in /metrics.
    assert await client_bytes(server.url, "ann-sp", "bob-lp", "cy-ws", "dee-sse") == counts
    _, _, metrics = await get(server.url + "/metrics")
    assert "/demo/" not in metrics and 'route="GET /"' not in metrics
    for raw in (poller, other, socket, stream):
        await raw.close()


async def test_bad_client_ids_are_ignored_and_bad_asks_refused(app_server):
    server = await app_server(TRANSPORTS)
    status, _, _ = await get(f"{server.url}/rooms/r/messages?since=0&client=no%20spaces")
    assert status == 200  # like any unknown parameter, a malformed client id is ignored...
    assert await client_bytes(server.url, "ok") == {}  # ...and counted for nobody
    for query in ("ids=a,<b>", "ids=" + ",".join(["a"] * 17), "ids=a&ids=b"):
        status, _, body = await get(f"{server.url}/demo/clients/bytes?{query}")
        assert status == 400 and "error" in json.loads(body)


async def test_client_bytes_say_not_exact_when_metrics_are_off(app_server):
    server = await app_server(TRANSPORTS, metrics=False)
    status, _, body = await get(f"{server.url}/demo/clients/bytes?ids=a")
    assert status == 200 and json.loads(body) == {"exact": False, "clients": {}}


def test_client_ledgers_forget_the_least_recently_active_beyond_the_limit():
    ledgers = ClientLedgers(limit=3)

    def request(client: str):
        return SimpleNamespace(query={"client": client})

    for client in ("a", "b", "c"):
        ledgers.client_of(request(client)).bytes_in += 1
    ledgers.client_of(request("a"))  # a is active again; b is now the oldest
    ledgers.client_of(request("d"))
    assert len(ledgers) == 3 and ledgers.get("b") is None
    assert ledgers.get("a").bytes_in == 1 and ledgers.get("d") is not None
    assert ledgers.client_of(request("bad id")) is None and ledgers.client_of(SimpleNamespace(query={})) is None
