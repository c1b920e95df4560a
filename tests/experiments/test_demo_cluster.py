"""The cluster demo (`make demo-cluster`, experiments/demo_cluster.py) end to end: a real page server supervising three
instances behind HAProxy (and Redis), its page in Debian's Chromium (never a downloaded browser).

Two page servers, each in a test of its own (they run side by side under pytest-xdist): one in Pub/Sub (three
instances named by themselves, each message's fan-out, a crowd counted per instance, a drain that loses nothing),
one starting naive (a member on another instance misses a message; switched to Pub/Sub, none does). Each ends by
stopping its page server as Ctrl-C would and checking that every process it started is gone.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import UNIT, require_binary
from helpers.browser import CHROMIUM, CHROMIUM_ARGS, playwright_sync_api

from experiments.supervisor import ServerProcess, launch_server

sync_api = playwright_sync_api()
expect = sync_api.expect

WAIT_MS = 15_000 * UNIT
MISSED_AFTER_MS = 4_000  # cluster.js counts a message missed this long after it was posted


def start_page_server(log: Path, mode: str) -> ServerProcess:
    require_binary("haproxy")
    require_binary("redis-server")
    return launch_server(["--mode", mode], log, label="demo-cluster",
                         entry=[sys.executable, "-m", "experiments", "demo-cluster"]).wait(60 * UNIT)


def request(url: str, body: dict | None = None, origin: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if origin:
        headers["Origin"] = origin
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=10 * UNIT) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def pids_of(server: ServerProcess) -> set[int]:
    return set(request(f"{server.url}/cluster/state")[1]["pids"].values())


def assert_stopped_cleanly(server: ServerProcess, pids: set[int], signum: int) -> None:
    """Stop the page server as a terminal would (Ctrl-C: SIGINT) or a supervisor (SIGTERM): it exits 0, and every
    process it started (instances, HAProxy, Redis, of every architecture it ran) is gone."""
    server.process.proc.send_signal(signum)
    assert server.process.wait(30 * UNIT) == 0, server.process.log()[-3000:]
    deadline = time.monotonic() + 10 * UNIT
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if os.path.exists(f"/proc/{pid}") and not _zombie(pid)}
        time.sleep(0.1)
    assert not alive, f"still running after the page server stopped: {alive}"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


@pytest.fixture(scope="module")
def browser():
    executable = require_binary("chromium", CHROMIUM)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ClusterPage:
    def __init__(self, browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 1300})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        self.page.goto(f"{url}/")
        self.ready()

    def ready(self) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true", timeout=WAIT_MS)
        expect(self.page.locator(".instance")).to_have_count(3)
        # Every column's name is what that instance says it is (its own event stream), not the page's guess.
        for n in (1, 2, 3):
            expect(self.page.locator(".instance").nth(n - 1)).to_have_attribute("data-name", f"server-{n}",
                                                                                timeout=WAIT_MS)

    def members(self) -> dict[str, str]:
        """Each pane's member and the instance holding its connection (none for short polling)."""
        expect(self.page.locator(".pane[data-member=websocket-1]")).not_to_have_attribute("data-held-by", "",
                                                                                          timeout=WAIT_MS)
        return dict(self.page.locator(".pane").evaluate_all(
            "panes => panes.map(p => [p.dataset.member, p.dataset.heldBy || ''])"))

    def send(self, member: str, text: str) -> None:
        box = self.page.locator(f"#pane-{member} form.send input[name=text]")
        box.fill(text)
        box.press("Enter")

    def texts(self, member: str) -> list[str]:
        return self.page.locator(f"#pane-{member} .messages .text").all_text_contents()

    def expect_none_missed(self, members) -> None:
        """Every member's missed count at 0. A missed message never arrives, so waiting for 0 is as strict as reading
        0, and a loaded machine whose page renders late is not taken for a loss."""
        for member in members:
            try:
                expect(self.page.locator(f"#pane-{member}")).to_have_attribute("data-missed", "0", timeout=WAIT_MS)
            except AssertionError:
                raise AssertionError((member, self.why_missed(member), self.texts(member))) from None

    def missed(self, member: str) -> int:
        return int(self.page.locator(f"#pane-{member}").get_attribute("data-missed"))

    def why_missed(self, member: str) -> list:
        """The posts this member is counted as missing: [key, seconds since posted, instance, id]."""
        return self.page.evaluate("""member => {
            const v = window.rtlabCluster, pane = v.panes.find(p => p.info.member === member), now = Date.now() / 1000;
            return [...v.posts].filter(([k, p]) => p.t >= pane.joinedAt && !pane.got.has(k))
                               .map(([k, p]) => [k, now - p.t, p.instance, p.id]); }""", member)


def test_pubsub_three_instances_fan_out_a_crowd_and_a_drain_that_loses_nothing(browser, tmp_path):
    server = start_page_server(tmp_path / "page.log", "pubsub")
    pids = pids_of(server)
    try:
        assert len(pids) == 5  # three instances, Redis, HAProxy
        page = ClusterPage(browser, server.url)
        members = page.members()
        held = {m: i for m, i in members.items() if i}
        assert len(set(held.values())) >= 2, members  # round robin spread the held members

        page.send("websocket-1", "one for all")
        for member in members:
            expect(page.page.locator(f"#pane-{member} .messages .text")).to_contain_text(["one for all"],
                                                                                        timeout=WAIT_MS)
        # Its path: posted on one instance, one publish to Redis, delivered by every instance holding members, to
        # every member held (the short-polling member is held by none: it asks).
        path = page.page.locator("#paths li").first
        expect(path).to_contain_text("1 publish to Redis")
        expect(path).to_have_attribute("data-members", str(len(held)), timeout=WAIT_MS)
        expect(path).to_have_attribute("data-instances", str(len(set(held.values()))))

        # A crowd, bounded, counted per instance by the instances themselves.
        assert request(f"{server.url}/cluster/crowd", {"members": 10_000})[0] == 400
        assert request(f"{server.url}/cluster/crowd", {"members": 12, "rate": 50})[0] == 400
        assert request(f"{server.url}/cluster/mode", {"mode": "anything"})[0] == 400
        assert request(f"{server.url}/cluster/action", {"action": "explode", "instance": 0})[0] == 400
        assert request(f"{server.url}/cluster/action", {"action": "drain", "instance": 7})[0] == 400
        assert request(f"{server.url}/cluster/crowd", {"members": 12, "rate": 2},
                       origin="http://evil.example")[0] == 403
        page.page.select_option("#crowd-size", "30")
        page.page.select_option("#crowd-rate", "1")
        page.page.click("#crowd-apply")
        expect(page.page.locator("#crowd-stats")).to_have_attribute("data-connected", "30", timeout=WAIT_MS)
        page.page.wait_for_function(
            "() => [...document.querySelectorAll('.instance')].reduce((n, c) => n + Number(c.dataset.crowd || 0), 0)"
            " === 30", timeout=WAIT_MS)
        assert all(int(c) > 0 for c in page.page.locator(".instance").evaluate_all("cs => cs.map(c => c.dataset.crowd)"))
        expect(page.page.locator("#paths li[data-members]").filter(has_text="crowd-")).not_to_have_count(
            0, timeout=WAIT_MS)

        # Drain the instance holding WebSocket 1: its members come back through HAProxy, and nothing is lost.
        drained = members["websocket-1"]
        index = int(drained.split("-")[1]) - 1
        page.page.locator(".instance").nth(index).locator("button.drain").click()
        expect(page.page.locator("#action")).to_contain_text(f"{drained} drained", timeout=WAIT_MS)
        expect(page.page.locator("#action")).to_contain_text("closed with 1012")
        expect(page.page.locator("#pane-websocket-1")).not_to_have_attribute("data-held-by", re.compile(drained),
                                                                             timeout=WAIT_MS)
        expect(page.page.locator("#pane-websocket-1 .stat-back")).to_have_text(re.compile(r"^\d[\d.]* m?s$"),
                                                                               timeout=WAIT_MS)
        expect(page.page.locator("#pane-websocket-1 .where")).to_contain_text("back on server-")
        page.send("sse", "after the drain")
        for member in members:
            expect(page.page.locator(f"#pane-{member} .messages .text")).to_contain_text(["after the drain"],
                                                                                        timeout=WAIT_MS)
        page.page.wait_for_timeout(MISSED_AFTER_MS + 500)
        page.expect_none_missed(members)
        assert page.page.locator("#pane-websocket-1 .stat-twice").text_content() == "0"
        expect(page.page.locator("#crowd-stats")).to_contain_text(re.compile(r"received, 0 missed \(of the [1-9]\d* sent.*, 0 twice"),
                                                              timeout=WAIT_MS)
        assert page.errors == [], page.errors
        page.context.close()
    finally:
        assert_stopped_cleanly(server, pids | {server.process.pid}, signal.SIGTERM)


def test_naive_loses_across_instances_and_pubsub_does_not(browser, tmp_path):
    server = start_page_server(tmp_path / "page.log", "naive")
    pids = pids_of(server)
    try:
        assert len(pids) == 4  # three instances, HAProxy: no Redis in naive
        page = ClusterPage(browser, server.url)
        members = page.members()
        sender = "websocket-1"
        elsewhere = [m for m, i in members.items() if i and i != members[sender]]
        assert elsewhere, members
        page.send(sender, "can anyone hear me?")
        expect(page.page.locator(f"#pane-{sender} .messages .text")).to_contain_text(["can anyone hear me?"],
                                                                                  timeout=WAIT_MS)
        path = page.page.locator("#paths li").first
        expect(path).to_contain_text("never hear of it", timeout=WAIT_MS)
        assert "publish" not in path.text_content()
        page.page.wait_for_timeout(MISSED_AFTER_MS + 1000)
        for member in elsewhere:  # its instance never heard of the message
            assert "can anyone hear me?" not in page.texts(member)
            assert page.missed(member) >= 1, member

        page.page.click("button[data-mode=pubsub]")  # the cluster is rebuilt; the page starts again in it
        page.page.wait_for_function("() => document.body.dataset.mode === 'pubsub'", timeout=60_000 * UNIT)
        page.ready()
        page.errors.clear()  # while the cluster was rebuilt, the members' requests were refused, as they should be
        pids |= pids_of(server)
        members = page.members()
        page.send(sender, "and now?")
        for member in members:
            expect(page.page.locator(f"#pane-{member} .messages .text")).to_contain_text(["and now?"], timeout=WAIT_MS)
        page.page.wait_for_timeout(MISSED_AFTER_MS + 500)
        page.expect_none_missed(members)
        assert page.errors == [], page.errors
        page.context.close()
    finally:
        assert_stopped_cleanly(server, pids | {server.process.pid}, signal.SIGINT)
