"""Unit tests of the senders' ledger, reconnect statistics, merging a Locust worker's results, and the backoff."""

from __future__ import annotations

import json
import random

from clients.completeness import DeliveryLedger, LedgerTotals
from clients.profile import DEFAULT_PROFILE_PATH, load_profile
from clients.results import RunResults


def test_each_receiver_expects_the_others_accepted_sends_after_it_joined():
    ledger = DeliveryLedger()
    ann = ledger.add_receiver("r", "ann", "websocket", joined_at=100.0)
    bob = ledger.add_receiver("r", "bob", "websocket", joined_at=102.5)
    for t in (99.0, 101.0, 103.0, 104.0):
        ledger.record_send("r", "cy", t)
    ledger.record_send("r", "ann", 103.5)  # ann's own: expected by bob, never by ann
    ledger.record_send("other", "cy", 103.0)  # another room
    for receiver in (ann, bob):
        for user, t in (("cy", 99.0), ("cy", 101.0), ("cy", 103.0), ("cy", 104.0), ("ann", 103.5)):
            receiver.observe(user, t)
    totals = ledger.totals(cutoff_s=110)
    assert totals["websocket"] == LedgerTotals(expected=3 + 3, received=3 + 3, missing=0)
    # The cutoff leaves out what was still in flight when the run ended.
    assert ledger.totals(cutoff_s=104)["websocket"] == LedgerTotals(expected=2 + 2, received=2 + 2, missing=0)


def test_members_on_separate_instances_show_what_never_arrived():
    # The naive architecture: each member sees only its own instance's messages, with contiguous ids.
    ledger = DeliveryLedger()
    ann = ledger.add_receiver("r", "ann", "websocket", 100.0)
    bob = ledger.add_receiver("r", "bob", "websocket", 100.0)
    for i in range(5):
        ledger.record_send("r", "ann", 101.0 + i)
        ledger.record_send("r", "bob", 101.2 + i)
        ann.observe("ann", 101.0 + i)  # the echo of its own: not counted
        bob.observe("bob", 101.2 + i)
    assert ledger.totals(200)["websocket"] == LedgerTotals(expected=10, received=0, missing=10)


def test_a_worker_ledger_merges_into_the_master(tmp_path):
    worker = DeliveryLedger()
    receiver = worker.add_receiver("r", "w1-0", "long-polling", 100.0)
    receiver.observe("w0-0", 101.0)
    worker.record_send("r", "w1-0", 101.5)
    master = DeliveryLedger()
    master.record_send("r", "w0-0", 101.0)
    master.merge_wire(json.loads(json.dumps(worker.to_wire())))
    assert master.totals(200)["long-polling"] == LedgerTotals(expected=1, received=1, missing=0)


def new_results() -> RunResults:
    return RunResults(load_profile(DEFAULT_PROFILE_PATH).replace(warmup_s=0), started_at=100.0)


def test_reconnects_are_counted_with_their_distribution_and_give_ups():
    results = new_results()
    for ms in (12.0, 30.0, 18.0):
        results.record_reconnect("websocket", ms, ok=True)
    results.record_reconnect("websocket", 5000.0, ok=False)
    stats = results.for_transport("websocket").as_dict()
    assert (stats["reconnects"], stats["reconnect_failures"]) == (3, 1)
    assert stats["reconnect_ms"]["max"] == 30.0 and stats["reconnect_ms"]["p50"] == 18.0
    assert any("3 reconnects" in line for line in results.summary_lines())


def test_a_master_writes_the_sum_of_its_workers(tmp_path):
    workers = []
    for w in range(2):
        results = new_results()
        tracker = results.add_receiver("websocket", since=0)
        for i in (1, 2, 3):
            tracker.observe(i)
        results.record_delivery("websocket", 0.002 * (w + 1), now=101.0)
        results.record_reconnect("websocket", 20.0, ok=True)
        results.record_cpu(40.0 + w, now=102.0)
        results.record_send(0.001)
        results.add_ledger_receiver("room-0", f"member-w{w}-0", "websocket", 100.0).observe(f"member-w{1 - w}-0", 101.0)
        results.record_accepted("room-0", f"member-w{w}-0", 101.0)
        workers.append(json.loads(json.dumps(results.to_wire())))  # as msgpack would carry it: plain data
    master = new_results()
    for w, data in enumerate(workers):
        master.merge_wire(data, label=f"worker-{w}")
    master.processes = 2
    master.finish(110.0)
    master.write(tmp_path)
    doc = json.loads((tmp_path / "completeness.json").read_text())
    ws = doc["transports"]["websocket"]
    assert (ws["receivers"], ws["received"], ws["lost"], ws["deliveries_measured"], ws["reconnects"]) == (2, 6, 0, 2, 2)
    assert (ws["ledger_expected"], ws["ledger_received"], ws["ledger_missing"]) == (2, 2, 0)
    assert doc["processes"] == 2
    generator = json.loads((tmp_path / "generator.json").read_text())
    assert generator["sends"] == 2 and generator["seconds_judged"] == 2
    assert set(generator["cpu_samples_by_process"]) == {"worker-0", "worker-1"}


def test_backoff_is_jittered_exponential_and_bounded_in_attempts_and_time(monkeypatch):
    import clients.base as base

    slept = []
    monkeypatch.setattr(base.gevent, "sleep", slept.append)
    backoff = base.Backoff(attempts=5, first_s=0.1, max_s=0.3, budget_s=60, rng=random.Random(1))
    assert [backoff.retry() for _ in range(5)] == [True, True, True, True, False]
    for step, delay in zip((0.1, 0.2, 0.3, 0.3), slept, strict=True):
        assert step / 2 <= delay <= step
    backoff.reset()
    assert backoff.retry() is True
    clock = [1000.0]
    monkeypatch.setattr(base.time, "perf_counter", lambda: clock[0])
    timed = base.Backoff(attempts=100, budget_s=5.0)
    assert timed.retry() is True
    clock[0] += 6.0
    assert timed.retry() is False  # out of time, whatever the attempts left
    timed.recovered()
    assert timed.retry() is True  # a reconnect restarts the time budget
