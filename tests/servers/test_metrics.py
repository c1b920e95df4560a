"""/metrics: what it exposes and documents, the ledger behind the byte counts, and the switch that turns it off."""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
from conftest import ROOT, TRANSPORTS, UNIT

from experiments.figures import metric_total, parse_metrics
from servers.__main__ import parse_args
from servers.metrics import METER, MeteredTransport, Tally
from servers.websocket import Member

ALL = TRANSPORTS


async def scrape(url: str) -> tuple[str, dict]:
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await response.text()
    return text, parse_metrics(text)


def documented_metrics() -> set[str]:
    docs = (ROOT / "docs" / "metrics.md").read_text()
    return set(re.findall(r"^\| `(rtlab_[a-z_]+)`", docs, flags=re.MULTILINE))


async def test_every_metric_is_documented_and_every_documented_metric_exists(app_server):
    server = await app_server(ALL)
    # rtlab_requests_total has a series per route seen: see one.
    async with aiohttp.ClientSession() as session, session.get(server.url + "/healthz") as response:
        assert response.status == 200
    _, metrics = await scrape(server.url)
    exposed = {name for name, _ in metrics}
    documented = documented_metrics()
    histograms = {d for d in documented if f"{d}_bucket" in exposed}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) if re.sub(r"_(bucket|count|sum)$", "", n) in histograms else n
                for n in exposed}
    assert families == documented
    assert all(name.startswith("rtlab_") for name in exposed)


async def test_every_series_is_labelled_by_transport(app_server):
    server = await app_server(ALL)
    _, metrics = await scrape(server.url)
    labels = {dict(pairs).get("transport") for _, pairs in metrics}
    assert labels == {*TRANSPORTS, "common", "all"}
    single = await app_server("long-polling")
    _, metrics = await scrape(single.url)
    assert {dict(pairs).get("transport") for _, pairs in metrics} == {"long-polling"}


def test_ledger_holds_bytes_between_requests_and_hands_them_to_the_next():
    class FakeTransport:
        def __init__(self):
            self.written = []

        def write(self, data):
            self.written.append(bytes(data))

        def writelines(self, chunks):
            self.written.append(b"".join(chunks))

    real = FakeTransport()
    wire = MeteredTransport(real)
    wire.write(b"12345")  # e.g. a 400 written before any route was known
    wire.writelines(iter([b"ab", bytearray(b"cd"), memoryview(b"ef")]))
    assert real.written == [b"12345", b"abcdef"] and wire.pending_out == 11
    tally = Tally("websocket")
    wire.tally = tally
    wire.writelines([b"x" * 3000, b"y"])
    wire.write(b"z")
    assert tally.wire_sent_bytes == 3002 and wire.pending_out == 11


def test_a_datagram_flow_waits_for_its_label_then_counts_there_and_in_its_client_ledger():
    from servers.datagrams import DatagramMeter, MeteredDatagramTransport

    class Ledger:
        bytes_in = bytes_out = 0

    class Socket:
        sent: list = []

        def sendto(self, data, addr=None):
            self.sent.append((data, addr))

    common, webtransport, ledger = Tally("common"), Tally("webtransport"), Ledger()
    meter = DatagramMeter(common, ledger)
    socket = MeteredDatagramTransport(Socket(), meter)
    meter.datagram_received(1200)  # a QUIC Initial, before any session says what it is
    socket.sendto(b"x" * 1000, ("127.0.0.1", 1))
    assert (meter.pending_in, meter.pending_out, webtransport.wire_received_bytes, ledger.bytes_in) == (1200, 1000, 0, 0)
    meter.settle(webtransport)
    meter.datagram_received(50)
    socket.sendto(b"y" * 30)
    assert (webtransport.wire_received_bytes, webtransport.wire_sent_bytes) == (1250, 1030)
    assert (ledger.bytes_in, ledger.bytes_out, meter.pending_in, meter.pending_out) == (1250, 1030, 0, 0)
    meter.settle_fallback()  # labelled already: nothing moves
    assert common.wire_received_bytes == common.wire_sent_bytes == 0

    never = DatagramMeter(common)
    never.datagram_received(7)
    never.datagram_sent(3)
    never.settle_fallback()  # a flow that never said what it was: its bytes still count, under the fallback
    assert (common.wire_received_bytes, common.wire_sent_bytes) == (7, 3)


async def test_send_queues_and_overflow_closes_are_reported(app_server):
    server = await app_server("websocket", ws_send_queue=4)
    hub = server.transport("websocket").hub

    class SilentSocket:  # a member whose writer never runs: everything offered stays queued
        async def close(self, code, message):
            return True

    members = [Member(SilentSocket(), 4) for _ in range(2)]
    for member in members:
        hub.join("quiet", member)
    async with aiohttp.ClientSession() as session:
        for i in range(3):
            async with session.post(f"{server.url}/rooms/quiet/messages", json={"user": "a", "text": str(i)}) as r:
                assert r.status == 201
        members[1].pending.popleft()  # one reader drained a frame
        _, metrics = await scrape(server.url)
        assert metric_total(metrics, "rtlab_ws_send_queue_frames") == 5
        assert metric_total(metrics, "rtlab_ws_send_queue_max_frames") == 3
        for i in range(2):  # the first member's queue (4) overflows on the fifth message
            async with session.post(f"{server.url}/rooms/quiet/messages", json={"user": "a", "text": "x"}) as r:
                assert r.status == 201
        _, metrics = await scrape(server.url)
        assert metric_total(metrics, "rtlab_ws_overflow_closes_total") == hub.overflow_closes == 1
        assert metric_total(metrics, "rtlab_messages_accepted_total") == 5
    for member in members:
        hub.leave("quiet", member)


async def test_a_blocked_event_loop_shows_as_lag(app_server):
    server = await app_server("websocket")
    _, before = await scrape(server.url)
    time.sleep(0.6)  # noqa: ASYNC251 -- on purpose: block the loop the server runs on: its lag timer (every 0.25 s) fires at least 0.35 s late
    deadline = asyncio.get_running_loop().time() + 5 * UNIT
    while True:
        _, after = await scrape(server.url)
        slow = metric_total(after, "rtlab_event_loop_lag_seconds_count") - metric_total(
            after, "rtlab_event_loop_lag_seconds_bucket", le="0.2"
        )
        if slow >= 1 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert slow >= 1
    assert metric_total(after, "rtlab_event_loop_lag_seconds_sum") - metric_total(
        before, "rtlab_event_loop_lag_seconds_sum"
    ) >= 0.35


async def test_a_full_garbage_collection_shows_as_a_pause(app_server):
    import gc

    server = await app_server("websocket")
    _, before = await scrape(server.url)
    cycles = []
    for _ in range(200_000):  # tracked objects for a full collection to walk, so it takes a measurable while
        cell: list = []
        cell.append(cell)
        cycles.append(cell)
    gc.collect()  # a full collection (generation 2), in this process, where the server runs
    _, after = await scrape(server.url)
    full = metric_total(after, "rtlab_gc_pause_seconds_count", generation="2") - metric_total(
        before, "rtlab_gc_pause_seconds_count", generation="2")
    assert full >= 1
    assert metric_total(after, "rtlab_gc_pause_seconds_sum", generation="2") > metric_total(
        before, "rtlab_gc_pause_seconds_sum", generation="2")
    del cycles


async def test_no_metrics_serves_no_metrics_and_counts_nothing(app_server):
    server = await app_server("short-polling", metrics=False)
    assert METER not in server.app
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/metrics") as response:
            assert response.status == 404
        async with session.post(f"{server.url}/rooms/r/messages", json={"user": "a", "text": "b"}) as response:
            assert response.status == 201
        async with session.get(f"{server.url}/rooms/r/messages?since=0") as response:
            assert len((await response.json())["messages"]) == 1


def test_cli_switches_metrics():
    assert parse_args(["--transport", "websocket"]).metrics is True
    assert parse_args(["--transport", "websocket", "--no-metrics"]).metrics is False


async def test_gc_freeze_leaves_what_survived_a_full_collection_out_of_the_next(app_server):
    import gc

    server = await app_server("websocket")
    gc.collect()
    assert gc.get_freeze_count() == 0  # off by default: every collection walks everything
    await server.stop()

    server = await app_server("websocket", gc_freeze=True)
    started = gc.get_freeze_count()
    assert started > 0  # what the server held once started
    kept = [[] for _ in range(10_000)]  # long-lived, tracked objects
    gc.collect()
    assert gc.get_freeze_count() >= started + len(kept)  # survivors of a full collection: frozen
    _, text = await scrape(server.url)
    assert metric_total(text, "rtlab_gc_pause_seconds_count", generation="2") >= 1  # still measured
    await server.stop()
    assert gc.get_freeze_count() == 0  # the server unfreezes what it froze when it stops
    del kept
