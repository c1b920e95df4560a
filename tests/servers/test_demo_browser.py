"""The teaching demo page end to end, in Debian's Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import asyncio
import re
import struct
import subprocess
import sys
import threading

import pytest
from conftest import ROOT, TRANSPORTS, UNIT, require_binary, spawn_server
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, playwright_sync_api

from experiments.demo_screenshot import viewport
from servers import registry

sync_api = playwright_sync_api()
expect = sync_api.expect

WAIT_MS = 10_000 * UNIT
MARKUP = ("<img src=x onerror=alert(1)>", "<script>alert(1)</script>")


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    server = spawn_server(["--transport", "all"], str(tmp_path_factory.mktemp("demo") / "server.log"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    executable = require_binary("chromium", CHROMIUM)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Watched:
    """A page with every console error, uncaught exception and dialog recorded."""

    def __init__(self, page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("dialog", self._dialog)

    def _console(self, message) -> None:
        if message.type == "error":
            self.errors.append(f"console.error: {message.text}")

    def _dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def pane(self, transport: str):
        return self.page.locator(f"#pane-{transport}")

    def send(self, transport: str, text: str) -> None:
        box = self.pane(transport).locator("form.send input[name=text]")
        box.fill(text)
        box.press("Enter")

    def texts(self, transport: str) -> list[str]:
        return self.pane(transport).locator(".messages .text").all_text_contents()

    def number(self, transport: str, stat: str) -> int:
        return int(self.pane(transport).locator(f".stat-{stat}").text_content().replace(",", ""))


@pytest.fixture
def open_demo(browser, demo_server, request):
    """Open the demo on a fresh page in a room of its own; wait until every pane has joined."""
    contexts = []

    def open_(viewport=(1360, 900), room: str | None = None, server=None) -> Watched:
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
        contexts.append(context)
        watched = Watched(context.new_page())
        room = room or re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[:64]
        watched.page.goto(f"{(server or demo_server).url}/?room={room}")
        # The panes are the transports the server mounts, in its order; each says when it is live.
        expect(watched.page.locator(".pane")).to_have_count(len(TRANSPORTS), timeout=WAIT_MS)
        assert watched.page.locator(".pane").evaluate_all("panes => panes.map(p => p.dataset.transport)") == \
            list(TRANSPORTS)
        for transport in TRANSPORTS:
            expect(watched.pane(transport)).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        return watched

    yield open_
    for context in contexts:
        context.close()


def test_page_loads_without_console_errors(open_demo):
    demo = open_demo()
    page = demo.page
    for transport in TRANSPORTS:
        pane = demo.pane(transport)
        assert pane.locator(".explain").text_content().strip()
        assert pane.locator(".label").text_content() == registry.get(transport).label
        # The pane wears its transport's colour from the registry, the notebooks' colour.
        accent = pane.evaluate("p => getComputedStyle(p).getPropertyValue('--accent').trim()")
        assert accent.lower() == registry.get(transport).colour.lower()
        expect(pane.locator(".wire li").first).to_be_visible(timeout=WAIT_MS)
    page.click("button[data-view=charts]")
    expect(page.locator("#view-charts")).to_be_visible()
    expect(page.locator("#view-panes")).to_be_hidden()
    page.wait_for_timeout(1500 * UNIT)  # at least one chart sample
    page.click("button[data-view=panes]")
    expect(page.locator("#view-panes")).to_be_visible()
    assert demo.errors == [] and demo.dialogs == []


def test_a_message_from_any_pane_reaches_every_pane(open_demo):
    demo = open_demo()
    before = {t: demo.pane(t).locator(".wire li").count() for t in TRANSPORTS}
    requests_before = demo.number("short-polling", "requests")

    demo.send("websocket", "hello from the socket")
    for transport in TRANSPORTS:
        expect(demo.pane(transport).locator(".messages .text")).to_have_text(["hello from the socket"], timeout=WAIT_MS)
    demo.send("short-polling", "and back by polling")
    expect(demo.pane("websocket").locator(".messages .text")).to_have_text(
        ["hello from the socket", "and back by polling"], timeout=WAIT_MS
    )
    last_long_poll = demo.pane("long-polling").locator(".messages .text").last
    expect(last_long_poll).to_have_text("and back by polling", timeout=WAIT_MS)

    # Counters and wire logs moved: polls and the POST, the socket's frames both ways, latencies.
    assert demo.number("short-polling", "requests") > requests_before
    expect(demo.pane("websocket").locator(".stat-frames")).to_have_text(re.compile(r"^1 / [2-9]"), timeout=WAIT_MS)
    for transport in TRANSPORTS:
        assert demo.pane(transport).locator(".wire li").count() > before[transport]
        expect(demo.pane(transport).locator(".stat-latency")).to_have_text(re.compile(r"ms / .*ms"), timeout=WAIT_MS)
        # The server counts this pane's bytes exactly (metrics are on by default).
        exact_sent = demo.pane(transport).locator(".stat-exact-out")
        expect(exact_sent).to_have_text(re.compile(r"^[0-9,.]+ k?B$"), timeout=WAIT_MS)
    assert demo.pane("websocket").locator(".wire li").filter(has_text="frame send").count() == 1
    assert demo.errors == [] and demo.dialogs == []


def test_markup_in_messages_is_shown_as_text_and_never_runs(open_demo):
    demo = open_demo()
    demo.send("websocket", MARKUP[0])
    demo.send("short-polling", MARKUP[1])
    for transport in TRANSPORTS:
        texts = demo.pane(transport).locator(".messages .text")
        expect(texts).to_have_count(2, timeout=WAIT_MS)
        assert sorted(texts.all_text_contents()) == sorted(MARKUP)
        assert demo.pane(transport).locator(".messages img, .messages script").count() == 0
    demo.page.wait_for_timeout(500 * UNIT)  # an onerror would have fired by now
    assert demo.dialogs == [] and demo.errors == []
    # And if someone ever writes markup from a string, the policy refuses it.
    refused = demo.page.evaluate(
        "() => { try { document.body.insertAdjacentHTML('beforeend', '<b>x</b>'); return 'allowed'; }"
        " catch (error) { return error.name; } }"
    )
    assert refused == "TypeError"


def test_pause_stops_polling_and_a_burst_arrives_batched(open_demo):
    demo = open_demo()
    short = demo.pane("short-polling")
    short.locator(".poll-interval").select_option("500")
    short.locator(".pause").click()
    expect(short.locator(".status")).to_have_text("paused")
    demo.page.wait_for_timeout(300 * UNIT)  # a poll in flight when paused may still land
    paused_at = demo.number("short-polling", "requests")
    demo.pane("websocket").locator(".burst").click()  # 20 messages while short polling is paused
    expect(demo.pane("websocket").locator(".messages .text")).to_have_count(20, timeout=WAIT_MS)
    demo.page.wait_for_timeout(700 * UNIT)
    assert demo.number("short-polling", "requests") == paused_at
    short.locator(".pause").click()  # resume: one poll carries the whole burst
    expect(short.locator(".messages .text")).to_have_count(20, timeout=WAIT_MS)
    expect(short.locator(".wire li").filter(has_text="20 msgs")).to_have_count(1, timeout=WAIT_MS)
    expect(demo.pane("long-polling").locator(".messages .text")).to_have_count(20, timeout=WAIT_MS)
    expect(demo.pane("sse").locator(".messages .text")).to_have_count(20, timeout=WAIT_MS)
    assert demo.errors == [] and demo.dialogs == []


def burst_at_once(port: int, room: str, count: int) -> None:
    """POST `count` messages on `count` connections written in one go, so the server handles them all in
    one turn of its loop, before any event stream's writer runs."""

    async def burst() -> None:
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
        for i, (_, writer) in enumerate(connections):
            body = f'{{"user": "burst", "text": "burst {i + 1}"}}'.encode()
            writer.write(f"POST /rooms/{room}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        for reader, writer in connections:
            await asyncio.wait_for(reader.read(), 10 * UNIT)
            writer.close()

    thread = threading.Thread(target=asyncio.run, args=(burst(),))  # its own loop: Playwright's owns this thread
    thread.start()
    thread.join(30 * UNIT)


def test_eventsource_reconnects_by_itself_with_last_event_id_and_misses_nothing(open_demo, tmp_path):
    # Every stream ends after 2 s (as a draining server, or one that wants a balancer to spread streams again, ends
    # them): the page's EventSource comes back on its own with Last-Event-ID, as a class can watch in the wire log,
    # and what was posted while it was away arrives.
    server = spawn_server(["--transport", "all", "--sse-max-stream", "2"], str(tmp_path / "server.log"))
    try:
        demo = open_demo(server=server, room="reconnect")
        sse = demo.pane("sse")
        burst_at_once(server.port, "reconnect", 20)
        expect(sse.locator(".wire li").filter(has_text="EventSource reconnect")).not_to_have_count(0, timeout=WAIT_MS)
        expect(sse.locator(".wire li").filter(has_text="Last-Event-ID:").first).to_be_visible()
        burst_at_once(server.port, "reconnect", 20)
        expect(sse.locator(".messages .text")).to_have_count(40, timeout=WAIT_MS)
        ids = [int(i) for i in sse.locator(".messages li").evaluate_all("items => items.map(i => i.dataset.id)")]
        assert sorted(ids) == ids == list(range(1, 41))  # resumed after the last id seen: none lost, none twice
        assert demo.errors == [] and demo.dialogs == []
    finally:
        server.stop()


def test_the_screenshot_command_pictures_every_pane_after_a_conversation(tmp_path):
    """`make demo-screenshot` (python -m experiments demo-screenshot), which makes docs/demo.png: its own server on a
    free port, every pane live, one message from each seen by all, a page without errors. In a process of its own,
    as a user runs it (and Playwright's sync API runs one per process)."""
    require_binary("chromium", CHROMIUM)
    path = tmp_path / "demo.png"
    proc = subprocess.run([sys.executable, "-m", "experiments", "demo-screenshot", "--out", str(path), "--timeout",
                           str(30 * UNIT)], capture_output=True, text=True, cwd=ROOT, timeout=120 * UNIT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"the demo page with {len(TRANSPORTS)} panes" in proc.stdout
    assert proc.stderr == ""  # the server's own log stays out of the way
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 50_000 < len(data) < 3_000_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) >= (viewport(len(TRANSPORTS))["width"], 1000)


EVIL_PAGE = """<!doctype html><meta charset="utf-8"><title>a page on another site</title>
<script>
const target = "TARGET";
const results = {};
const settle = (name, promise) => promise.then((v) => (results[name] = v), () => (results[name] = "blocked"));
const ws = new Promise((resolve) => {
  const socket = new WebSocket(target.replace("http", "ws") + "/rooms/victim/ws");
  socket.onopen = () => { socket.send(JSON.stringify({type: "send", user: "evil", text: "over the socket"}));
                          resolve("open"); };
  socket.onerror = () => resolve("refused");
});
const events = new Promise((resolve) => {
  const source = new EventSource(target + "/rooms/victim/events");
  source.onopen = () => resolve("open");
  source.onerror = () => { source.close(); resolve("refused"); };
});
const body = JSON.stringify({user: "evil", text: "forged"});
Promise.all([
  ws.then((v) => (results.websocket = v)),
  events.then((v) => (results.events = v)),
  // A "simple" request: no preflight, so it is sent; only the server can refuse it.
  settle("post_text", fetch(target + "/rooms/victim/messages", {method: "POST", mode: "no-cors",
         headers: {"Content-Type": "text/plain"}, body}).then(() => "sent")),
  settle("post_json", fetch(target + "/rooms/victim/messages", {method: "POST",
         headers: {"Content-Type": "application/json"}, body}).then((r) => r.status)),
  settle("read_history", fetch(target + "/rooms/victim/history").then((r) => r.json()).then(() => "read")),
]).then(() => { window.results = results; });
</script>"""


def test_a_page_from_another_origin_can_neither_use_the_socket_nor_post(browser, demo_server, tmp_path):
    """Cross-site WebSocket hijacking and CSRF, tried for real: a page served from another local port."""
    import functools
    import http.server
    import json
    import urllib.request

    (tmp_path / "index.html").write_text(EVIL_PAGE.replace("TARGET", demo_server.url))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/index.html")
        page.wait_for_function("() => window.results !== undefined", timeout=WAIT_MS)
        results = page.evaluate("() => window.results")
        page.close()
    finally:
        evil.shutdown()
    assert results["websocket"] == "refused" and results["events"] == "refused", results
    assert results["read_history"] == "blocked" and results["post_json"] == "blocked", results
    assert results["post_text"] == "sent", results  # the browser sent it; the server refused it (415, 403)
    with urllib.request.urlopen(f"{demo_server.url}/rooms/victim/history", timeout=5 * UNIT) as resp:
        assert json.loads(resp.read())["messages"] == []  # nothing got in
