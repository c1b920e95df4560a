"""The demo's WebRTC panes in Debian's Chromium: the browser's own RTCPeerConnection against the server, both channels.

Headless Chromium offers its host candidates behind mDNS names (`<uuid>.local`); the server leaves those out of
the offer (servers/rtc.py) and learns the browser's address from its connectivity checks, so no flag is needed.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from conftest import UNIT, require_binary, spawn_server
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, playwright_sync_api

sync_api = playwright_sync_api()
expect = sync_api.expect

WAIT_MS = 10_000 * UNIT
VARIANTS = ("webrtc", "webrtc-unreliable")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = spawn_server(["--transport", "all"], str(tmp_path_factory.mktemp("demo-webrtc") / "server.log"))
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
    """The demo in a room of the test's own, every WebRTC pane live; console errors collected in page.errors."""
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(f"uncaught: {error}"))
    page.room = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)[-64:]  # the tail: the parameter tells rooms apart
    page.goto(f"{server.url}/?room={page.room}")
    for transport in VARIANTS:
        expect(page.locator(f"#pane-{transport}")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    yield page
    context.close()


def post(server, room: str, user: str, text: str) -> dict:
    body = json.dumps({"user": user, "text": text, "sent_at": time.time()}).encode()
    request = urllib.request.Request(f"{server.url}/rooms/{room}/messages", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5 * UNIT) as response:
        return json.loads(response.read())


def history(server, room: str) -> list[dict]:
    with urllib.request.urlopen(f"{server.url}/rooms/{room}/history?limit=50", timeout=5 * UNIT) as response:
        return json.loads(response.read())["messages"]


def send_from(page, transport: str, text: str) -> None:
    box = page.locator(f"#pane-{transport} form.send input[name=text]")
    box.fill(text)
    box.press("Enter")


@pytest.mark.parametrize("transport", VARIANTS)
def test_the_pane_connects_receives_and_sends_over_its_data_channel(page, server, transport):
    pane = page.locator(f"#pane-{transport}")
    wire = pane.locator(".wire li")
    # Non-trickle: one offer with its candidates in it, one POST, one answer; then the channel opens.
    expect(wire.filter(has_text="offer (SDP)")).to_have_count(1)
    expect(wire.filter(has_text=re.compile(r"POST webrtc\?since=0\s*200 "))).to_have_count(1)
    kind = "ordered, reliable" if transport == "webrtc" else "unordered, no retransmits"
    expect(wire.filter(has_text="data channel open")).to_have_text([re.compile(re.escape(kind))])
    expect(wire.filter(has_text="ICE pair")).to_have_count(1, timeout=WAIT_MS)

    # A message posted over plain HTTP arrives in the pane, pushed down the channel.
    posted = post(server, page.room, "curl", "posted over HTTP")
    expect(pane.locator(".messages .text")).to_have_text(["posted over HTTP"], timeout=WAIT_MS)
    expect(pane.locator(f".messages li[data-id='{posted['id']}'] .lat")).to_have_text(re.compile(r"ms$"))

    # A message sent from the pane arrives at the server, and comes back to it and to every other pane.
    send_from(page, transport, f"hello from {transport}")
    expect(pane.locator(".messages .text")).to_have_text(["posted over HTTP", f"hello from {transport}"],
                                                         timeout=WAIT_MS)
    expect(page.locator("#pane-websocket .messages .text").last).to_have_text(f"hello from {transport}",
                                                                             timeout=WAIT_MS)
    sent = [m for m in history(server, page.room) if m["user"] == transport]
    assert [m["text"] for m in sent] == [f"hello from {transport}"]
    expect(pane.locator(".stat-frames")).to_have_text(re.compile(r"^1 / 2$"))
    assert page.errors == []


def test_paused_panes_offer_again_on_resume_and_catch_up(page, server):
    for transport in VARIANTS:
        page.locator(f"#pane-{transport} .pause").click()
        expect(page.locator(f"#pane-{transport} .status")).to_have_text("paused")
    post(server, page.room, "curl", "while paused")
    page.wait_for_timeout(300 * UNIT)
    for transport in VARIANTS:
        pane = page.locator(f"#pane-{transport}")
        assert pane.locator(".messages .text").count() == 0  # its connection is closed: nothing pushed
        pane.locator(".pause").click()
        # The new offer asks for what came after the last id shown (none yet): the message arrives.
        expect(pane.locator(".wire li").filter(has_text="offer (SDP)")).to_have_count(2, timeout=WAIT_MS)
        expect(pane.locator(".messages .text")).to_have_text(["while paused"], timeout=WAIT_MS)
    assert page.errors == []
