"""Unit tests of what a run records beside Locust: the µs histogram, warm-up, completeness totals, generator health."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clients.profile import DEFAULT_PROFILE_PATH, load_profile
from clients.results import (
    LATENCY_HIGHEST_US,
    SEND_LAG_LIMIT_MS,
    RunResults,
    output_place,
    read_histogram,
    read_intervals,
)


def new_results(warmup_s: float = 1.0) -> RunResults:
    return RunResults(load_profile(DEFAULT_PROFILE_PATH).replace(warmup_s=warmup_s), started_at=100.0)


def test_deliveries_in_the_warmup_stay_out_of_the_histogram():
    results = new_results(warmup_s=1.0)
    assert results.record_delivery("websocket", 0.002, now=100.5) is False
    assert results.record_delivery("websocket", 0.000_250, now=101.0) is True
    ws = results.for_transport("websocket")
    assert (ws.deliveries_measured, ws.deliveries_warmup) == (1, 1)
    # Microseconds: 250 µs is kept as such, not rounded to 0 ms.
    assert ws.histogram.get_value_at_percentile(100) == 250


def test_out_of_range_latencies_are_clamped_and_counted():
    results = new_results(warmup_s=0)
    results.record_delivery("websocket", -0.5, now=100.0)
    results.record_delivery("websocket", 10_000.0, now=100.0)
    ws = results.for_transport("websocket")
    assert ws.deliveries_measured == 2 and ws.latencies_clamped == 2
    assert ws.histogram.get_max_value() >= LATENCY_HIGHEST_US * 0.999


def test_completeness_adds_up_over_receivers():
    results = new_results()
    a = results.add_receiver("long-polling", since=0)
    b = results.add_receiver("long-polling", since=5)
    for i in (1, 2, 4):
        a.observe(i)
    for i in (6, 6, 7):
        b.observe(i)
    totals = results.for_transport("long-polling").as_dict()
    assert totals["receivers"] == 2
    assert (totals["received"], totals["lost"], totals["duplicates"]) == (6, 1, 1)


def test_resetting_deliveries_keeps_receivers_counting():
    results = new_results(warmup_s=1.0)
    results.add_receiver("websocket", since=0).observe(2)  # id 1 lost
    results.record_delivery("websocket", 0.001, now=100.5)
    results.record_delivery("websocket", 0.002, now=102.0)
    results.reset_deliveries()
    ws = results.for_transport("websocket")
    assert (ws.deliveries_measured, ws.deliveries_warmup) == (0, 0)
    assert ws.completeness().lost == 1


def test_a_generator_above_90_percent_after_warmup_is_flagged():
    results = new_results(warmup_s=2.0)
    results.record_cpu(99.0, now=101.0)  # during warm-up: ramping up is allowed to be busy
    results.record_cpu(40.0, now=103.0)
    assert results.generator()["saturated"] is False
    results.record_cpu(95.0, now=104.0)
    generator = results.generator()
    assert generator["saturated"] is True
    assert (generator["seconds_over_threshold"], generator["seconds_judged"]) == (1, 2)
    assert any("SATURATED" in line for line in results.summary_lines())


def test_the_summary_says_incomplete_on_any_loss():
    results = new_results()
    results.add_receiver("short-polling", since=0).observe(3)
    (line,) = [line for line in results.summary_lines() if "completeness" in line]
    assert "lost 2" in line and "INCOMPLETE" in line


def test_files_land_in_the_out_dir_or_beside_the_csvs(tmp_path):
    assert output_place(str(tmp_path), "x/locust") == (tmp_path, "")
    assert output_place(None, str(tmp_path / "run1")) == (tmp_path, "run1_")
    assert output_place("", None) is None
    results = new_results(warmup_s=0)
    results.add_receiver("websocket", since=0).observe(1)
    results.record_delivery("websocket", 0.003, now=100.0)
    written = results.write(*output_place(None, str(tmp_path / "run1")))
    assert sorted(p.name for p in written) == [
        "run1_completeness.json",
        "run1_deliver_latency_websocket.hdr",
        "run1_deliver_latency_websocket.hgrm",
        "run1_deliver_latency_websocket.hlog",
        "run1_generator.json",
    ]
    assert read_histogram(tmp_path / "run1_deliver_latency_websocket.hdr").get_total_count() == 1
    doc = json.loads(Path(tmp_path / "run1_completeness.json").read_text())
    assert doc["transports"]["websocket"]["deliveries_measured"] == 1
    assert doc["profile"]["users"] == 50


def test_a_batch_of_values_lands_where_record_value_puts_each():
    import random

    import numpy as np

    from clients.results import new_latency_histogram, record_values

    rng = random.Random(7)
    values = [0, 1, 2047, 2048, 2049, 4095, 4096, LATENCY_HIGHEST_US]
    values += [rng.randrange(0, 10 ** rng.randrange(1, 10)) for _ in range(20_000)]
    values = [min(v, LATENCY_HIGHEST_US) for v in values]
    one_by_one, batched = new_latency_histogram(), new_latency_histogram()
    for value in values:
        one_by_one.record_value(value)
    record_values(batched, np.array(values[:5000]))
    record_values(batched, np.array(values[5000:]))
    assert list(batched.counts) == list(one_by_one.counts)
    assert (batched.total_count, batched.min_value, batched.max_value) == (
        one_by_one.total_count, one_by_one.min_value, one_by_one.max_value)
    assert batched.encode() == one_by_one.encode()


def test_pending_deliveries_reach_the_histogram_when_their_batch_closes():
    results = new_results(warmup_s=1.0)
    ws = results.for_transport("websocket")
    batches = []
    ws.on_batch = batches.append
    ws.flush(100.9)  # a batch opens at 100.9; it closes at the whole second
    assert ws.flush_at == 101.0
    ws.pending_warmup.append(0.001)
    assert ws.deliveries_measured == 0 and not batches  # pending, not recorded yet
    results.flush(101.0, due_only=True)
    assert (ws.deliveries_warmup, ws.deliveries_measured) == (1, 0)
    assert batches[0].second == 100 and batches[0].warmup_ms.tolist() == [1.0]
    ws.pending.append(0.002)
    ws.pending.append(-0.5)  # a clock step: clamped to 0 and counted
    ws.pending_bytes += 200
    results.flush(101.1, due_only=True)  # not due yet: the batch opened at 101.0 closes at 101.25
    assert ws.deliveries_measured == 0
    results.finish(101.1)  # the end of the run records what is pending
    assert (ws.deliveries_measured, ws.latencies_clamped) == (2, 1)
    assert batches[1].second == 101 and batches[1].measured_bytes == 200


def test_a_held_window_keeps_everything_in_the_warm_up_until_it_opens():
    results = new_results(warmup_s=1.0)
    results.hold_window()
    ws = results.for_transport("websocket")  # made before the window opens: its measure_from follows
    assert results.record_delivery("websocket", 0.001, now=105.0) is False  # long after warmup_s: still held
    results.open_window(106.0, "join deadline", members=10, joined=7)
    assert ws.measure_from == results.for_transport("sse").measure_from == 106.0
    assert results.record_delivery("websocket", 0.001, now=105.9) is False
    assert results.record_delivery("websocket", 0.001, now=106.0) is True
    assert results.window["members_joined_late"] == 3
    results.finish(110.0)
    doc = results._completeness_doc()
    assert doc["window"]["opened_by"] == "join deadline" and doc["window"]["measured_s"] == 4.0
    assert any("3 still connecting: flagged" in line for line in results.summary_lines())


def test_the_generator_is_judged_from_the_window_it_opened():
    results = new_results(warmup_s=1.0)
    results.hold_window()
    results.record_cpu(99.0, now=103.0)  # members still joining: not judged
    results.open_window(104.0, "every member joined", 10, 10)
    results.record_cpu(30.0, now=105.0)
    assert results.generator()["saturated"] is False and results.generator()["seconds_judged"] == 1


def test_sends_behind_schedule_in_the_window_are_flagged_at_p99():
    results = new_results(warmup_s=0)
    results.hold_window()
    results.record_send(5.0, due=100.5)  # before the window: counted, not judged
    results.open_window(101.0, "every member joined", 1, 1)
    for i in range(5000):  # across a batch of SEND_LAG_BATCH
        results.record_send(0.002, due=101.0 + i / 1000)
    generator = results.generator()
    assert generator["sends"] == 5001 and generator["send_lag_measured"] == 5000
    assert generator["send_lag_p99_ms"] == pytest.approx(2.0, rel=0.01)
    assert generator["sends_behind_schedule"] is False and generator["send_lag_max_ms"] == 5000.0
    for i in range(60):  # over 1 % of the sends 0.5 s late
        results.record_send(0.5, due=110.0 + i)
    generator = results.generator()
    assert generator["sends_behind_schedule"] is True and generator["send_lag_p99_ms"] > SEND_LAG_LIMIT_MS
    assert any("SENDS BEHIND SCHEDULE" in line for line in results.summary_lines())


def test_connection_set_up_is_summarised_per_transport():
    results = new_results()
    for ms in range(1, 101):
        results.record_join("webrtc", float(ms))
    results.record_first_message("webrtc", 250.0)
    setup = results.for_transport("webrtc").as_dict()
    assert setup["join_ms"] == {"count": 100, "p50": 51.0, "p99": 100.0, "max": 100.0}
    assert setup["first_message_ms"]["count"] == 1
    worker = new_results()
    worker.record_join("webrtc", 5000.0)
    results.merge_wire(worker.to_wire(), label="worker-1")
    assert results.for_transport("webrtc").as_dict()["join_ms"]["max"] == 5000.0


def test_the_interval_log_holds_every_measured_delivery_by_ten_seconds_of_the_window(tmp_path):
    results = new_results(warmup_s=0)
    results.hold_window()
    results.record_delivery("websocket", 0.001, now=100.2)  # warm-up: in no interval
    results.open_window(100.5, "every member joined", 1, 1)
    for i in range(300):  # 0.1 s apart over 30 s: three intervals of about 100, each slower than the last
        results.record_delivery("websocket", 0.001 * (1 + (i * 0.1 + 0.5) // 10), now=100.5 + i * 0.1)
    results.finish(131.0)
    results.write(tmp_path)
    intervals = read_intervals(tmp_path / "deliver_latency_websocket.hlog")
    assert [start for start, _ in intervals] == [0.0, 10.0, 20.0]
    assert sum(h.get_total_count() for _, h in intervals) == results.for_transport("websocket").deliveries_measured
    # Each interval holds its own ten seconds' latencies (batched by whole seconds: its edge may fall up to a second
    # off the window's tenth second, so an interval may hold its neighbour's first value too).
    assert [h.get_min_value() for _, h in intervals] == [1000, 2000, 3000]
    assert [round(h.get_value_at_percentile(50), -2) for _, h in intervals] == [1000, 2000, 3000]
