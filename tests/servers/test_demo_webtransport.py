"""The demo's WebTransport panes in Debian's Chromium: the browser's own WebTransport against the server's HTTP/3
endpoint (its certificate pinned by the hash the server hands the page), on streams and on datagrams.

(Chromium's --disable-quic, in the shared launch flags, does not stop WebTransport: it keeps the browser from
trying QUIC for ordinary requests, which no server here offers anyway.)"""

from __future__ import annotations

import re

import pytest
from conftest import UNIT, require_binary, spawn_server
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, playwright_sync_api
from test_demo_webrtc import history, post, send_from

sync_api = playwright_sync_api()
expect = sync_api.expect

WAIT_MS = 10_000 * UNIT
VARIANTS = ("webtransport", "webtransport-datagram")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = spawn_server(["--transport", "all"], str(tmp_path_factory.mktemp("demo-wt") / "server.log"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    executable = require_binary("chromium", CHROMIUM)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server, request):
    """The demo in a room of the test's own, every WebTransport pane live; console errors collected in page.errors."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(f"uncaught: {error}"))
    page.room = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[-64:]
    page.goto(f"{server.url}/?room={page.room}")
    for transport in VARIANTS:
        expect(page.locator(f"#pane-{transport}")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    yield page
    context.close()


@pytest.mark.parametrize("transport", VARIANTS)
def test_the_pane_opens_a_session_and_its_wire_log_shows_streams_or_datagrams(page, server, transport):
    pane = page.locator(f"#pane-{transport}")
    wire = pane.locator(".wire li")
    expect(wire.filter(has_text=re.compile(rf"GET {transport}\s*200 "))).to_have_count(1)
    expect(wire.filter(has_text="session open")).to_have_text([re.compile("certificate pinned by its SHA-256")])
    carrier = "datagram" if transport.endswith("-datagram") else r"stream \d+"

    posted = post(server, page.room, "curl", "posted over HTTP")
    expect(pane.locator(".messages .text")).to_have_text(["posted over HTTP"], timeout=WAIT_MS)
    expect(wire.filter(has_text=re.compile(rf"{carrier}: message #{posted['id']}"))).to_have_count(1)

    send_from(page, transport, f"hello from {transport}")
    expect(pane.locator(".messages .text")).to_have_text(["posted over HTTP", f"hello from {transport}"],
                                                         timeout=WAIT_MS)
    expect(wire.filter(has_text=re.compile(rf"^.*{carrier.split(' ')[0]}: send"))).to_have_count(1)
    expect(page.locator("#pane-websocket .messages .text").last).to_have_text(f"hello from {transport}",
                                                                             timeout=WAIT_MS)
    assert [m["text"] for m in history(server, page.room) if m["user"] == transport] == [f"hello from {transport}"]
    # The server counted this pane's exact bytes on its datagrams, the QUIC handshake (kilobytes) and all.
    for way in ("in", "out"):
        expect(pane.locator(f".stat-exact-{way}")).to_have_text(re.compile(r"^([2-9],\d{3} B|[\d.]+ kB)$"),
                                                               timeout=WAIT_MS)
    assert page.errors == []


def test_paused_panes_close_their_sessions_and_catch_up_on_resume(page, server):
    for transport in VARIANTS:
        page.locator(f"#pane-{transport} .pause").click()
        expect(page.locator(f"#pane-{transport} .status")).to_have_text("paused")
    post(server, page.room, "curl", "while paused")
    page.wait_for_timeout(300 * UNIT)
    for transport in VARIANTS:
        pane = page.locator(f"#pane-{transport}")
        assert pane.locator(".messages .text").count() == 0  # its session is closed: nothing pushed
        pane.locator(".pause").click()
        expect(pane.locator(".wire li").filter(has_text="session open")).to_have_count(2, timeout=WAIT_MS)
        expect(pane.locator(".messages .text")).to_have_text(["while paused"], timeout=WAIT_MS)
    assert page.errors == []
