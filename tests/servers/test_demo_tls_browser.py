"""The browser's connection limit, shown in headless Chromium through the demo's HTTPS proxy (experiments/demo_tls.py):
over HTTP/1.1 a page holds at most six connections to an origin, so a seventh streaming member waits until one of
the six lets go; over HTTP/2 every member's stream shares one connection and all of them flow. And the demo page
itself over h2: its requests, its event stream and its WebSocket all say h2."""

from __future__ import annotations

import re

import pytest
from conftest import REQUIRE_ALL, UNIT, require_binary
from helpers.browser import CHROMIUM, chromium, playwright_sync_api

from experiments.demo_tls import tls_demo
from experiments.haproxy import http_unavailable

playwright_sync_api()
MEMBERS = 8  # streaming members on one page: more than the six connections HTTP/1.1 gets

# Open MEMBERS event streams to one room, wait, and say how many opened; then post one message and say how many got
# it; then close one stream (HTTP/1.1: a waiting one may now connect) and say how many are open.
STREAMS = """async ([members, waitMs]) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const streams = [], got = new Set();
  for (let i = 0; i < members; i++) {
    const s = new EventSource(`/rooms/six/events?since=0`);
    s.onmessage = () => got.add(i);
    streams.push(s);
  }
  await sleep(waitMs);
  const opened = streams.filter((s) => s.readyState === EventSource.OPEN).length;
  const post = fetch("/rooms/six/messages", {method: "POST", headers: {"Content-Type": "application/json"},
                     body: JSON.stringify({user: "page", text: "to every member"})}).then((r) => r.status);
  const status = await Promise.race([post, sleep(waitMs).then(() => "waiting")]);
  await sleep(waitMs);
  const received = got.size;
  streams[0].close();
  await sleep(waitMs);
  const afterOne = streams.filter((s) => s.readyState === EventSource.OPEN).length;
  streams.forEach((s) => s.close());
  return {opened, status, received, afterOne};
}"""


@pytest.fixture
def browser():
    require_binary("chromium", CHROMIUM)
    with chromium() as b:
        yield b


def served(tmp_path, http: str):
    binary = require_binary("haproxy")
    problem = http_unavailable([http], binary)
    if problem:
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {problem}")
        pytest.skip(problem)
    return tls_demo(tmp_path / f"demo-{http}", http, binary=binary)


def streams_seen(browser, demo) -> dict:
    context = browser.new_context(ignore_https_errors=True)  # the certificate was made for this run
    try:
        page = context.new_page()
        page.goto(demo.url + "healthz")
        return page.evaluate(STREAMS, [MEMBERS, int(1500 * UNIT)])
    finally:
        context.close()


def test_over_http11_the_seventh_streaming_member_waits(browser, tmp_path):
    with served(tmp_path, "1.1") as demo:
        seen = streams_seen(browser, demo)
    assert seen["opened"] == 6  # the browser's six connections per origin: members 7 and 8 wait
    assert seen["status"] == "waiting"  # and so does the page's next request: the message cannot even be sent
    assert seen["afterOne"] == 6  # one member let go: a waiting one took its connection


def test_over_h2_every_streaming_member_flows(browser, tmp_path):
    with served(tmp_path, "2") as demo:
        seen = streams_seen(browser, demo)
    assert seen["opened"] == MEMBERS
    assert seen["status"] == 201
    assert seen["received"] == MEMBERS


def test_the_demo_page_over_h2_says_so(browser, tmp_path):
    with served(tmp_path, "2") as demo:
        context = browser.new_context(ignore_https_errors=True, bypass_csp=True)  # the test's own waits evaluate
        try:
            page = context.new_page()
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(demo.url)
            page.wait_for_function("document.querySelectorAll('.pane ol.wire li').length > 8", timeout=15000 * UNIT)
            protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
            page.wait_for_function("document.querySelector('#page-protocol').textContent.includes('h2')",
                                   timeout=5000 * UNIT)
            wire = page.eval_on_selector_all(".pane ol.wire li .detail", "els => els.map(e => e.textContent)")
        finally:
            context.close()
        log = (demo.proxy.directory / "haproxy.log").read_text()
    assert protocol == "h2" and errors == []
    assert any(" · h2" in line for line in wire)  # the wire log names each request's protocol
    # HAProxy's log: the WebSocket over RFC 8441's extended CONNECT and the event stream, both on h2.
    assert re.search(r'"GET https://127\.0\.0\.1:\d+/rooms/demo/ws\?\S* HTTP/2\.0"', log), log[-2000:]
    assert re.search(r'"GET https://127\.0\.0\.1:\d+/rooms/demo/events\?\S* HTTP/2\.0"', log), log[-2000:]
