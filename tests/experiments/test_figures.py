"""Derived figures on hand-computed inputs: one registry, every figure with a unit and a description."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from conftest import ROOT

from experiments import figures
from experiments.figures import FIGURES, RunData, Samples, compute, metric_total, parse_metrics, sum_samples

# Four samples a second apart; RSS grows 50 bytes per connection from 1000.
SERVER = Samples(
    t_s=(10.0, 11.0, 12.0, 13.0),
    cpu_user_s=(1.0, 1.2, 1.5, 2.0),
    cpu_system_s=(0.5, 0.5, 0.6, 0.7),
    rss_bytes=(1000.0, 1500.0, 2000.0, 2500.0),
    tcp_connections=(0.0, 10.0, 20.0, 30.0),
)
GENERATOR = Samples(
    t_s=(10.0, 11.0, 12.0, 13.0),
    cpu_user_s=(3.0, 3.4, 3.8, 4.2),
    cpu_system_s=(1.0, 1.1, 1.2, 1.3),
    rss_bytes=(5e6,) * 4,
    tcp_connections=(30.0,) * 4,
)
RUN = RunData(
    wire_received_bytes=1000,
    wire_sent_bytes=3000,
    messages_accepted=20,
    messages_delivered=200,
    polls=50,
    empty_polls=10,
    server=SERVER,
    generator=GENERATOR,
    cpus=2,
    ip_bytes=8000,
    members=30,
    idle_rss_bytes=250.0,
    sampler=Samples(t_s=(10.0, 13.0), cpu_user_s=(0.1, 0.12), cpu_system_s=(0.0, 0.01), rss_bytes=(1e6,) * 2,
                    tcp_connections=(0.0,) * 2),
)

EXPECTED = {
    "bytes_in_per_delivered_message": 5.0,  # 1000 / 200
    "bytes_out_per_delivered_message": 15.0,  # 3000 / 200
    "bytes_per_delivered_message": 20.0,  # 4000 / 200
    "bytes_per_sent_message": 200.0,  # 4000 / 20 (sent defaults to accepted)
    "ip_bytes_per_delivered_message": 40.0,  # 8000 / 200
    "server_cpu_us_per_delivered_message": 6000.0,  # (2.7 - 1.5) s = 1.2e6 us / 200
    "server_system_cpu_us_per_delivered_message": 1000.0,  # (0.7 - 0.5) s of it in the kernel
    "server_peak_rss_bytes": 2500.0,
    "server_mean_rss_bytes": 1750.0,  # (1000 + 1500 + 2000 + 2500) / 4
    "rss_per_connection_bytes": 50.0,
    "server_rss_per_member_bytes": 50.0,  # (1750 mean - 250 idle) / 30 members
    "empty_poll_ratio": 0.2,  # 10 / 50
    "generator_cpu_share": 0.25,  # (5.5 - 4.0) s / (3 s x 2 CPUs)
    "generator_cpu_us_per_delivered_message": 1.5e6 / 200,  # (5.5 - 4.0) s of the generator's CPU
    "generator_system_cpu_us_per_delivered_message": 0.3e6 / 200,  # (1.3 - 1.0) s of it in the kernel
    "server_cpu_us_per_member_s": 1.2e6 / (30 * 3),  # 1.2 s of CPU over 3 s with 30 members
    "bytes_per_member_s": 4000 / (30 * 3),
    "sampler_cpu_share": 0.01,  # 30 ms over 3 s
}


def test_the_cost_figures_on_hand_computed_values():
    assert compute(RUN, EXPECTED) == pytest.approx(EXPECTED)


def test_under_a_cpu_limit_the_server_is_measured_against_the_limit_and_its_cgroup_counted():
    # 1.2 s of server CPU over 3 s: 40 % of its one pinned CPU, 80 % of a 0.5-CPU limit; the group counted 1.25 s.
    group = {"usage_usec": 1_250_000, "nr_periods": 150, "nr_throttled": 40, "throttled_usec": 600_000, "wall_s": 3.0}
    limited = RunData(**{**RUN.__dict__, "cpu_limit": 0.5, "cgroup": group})
    assert compute(limited, ["server_cpu_share", "cgroup_cpu_share", "cgroup_cpu_s", "cgroup_cpu_us_per_delivered_message",
                             "cgroup_periods", "cgroup_throttled_periods", "cgroup_throttled_share",
                             "cgroup_throttled_s"]) == pytest.approx({
        "server_cpu_share": 0.8, "cgroup_cpu_share": 1.25 / 1.5, "cgroup_cpu_s": 1.25,
        "cgroup_cpu_us_per_delivered_message": 6250.0, "cgroup_periods": 150, "cgroup_throttled_periods": 40,
        "cgroup_throttled_share": 40 / 150, "cgroup_throttled_s": 0.6})
    assert figures.server_cpu_share(RUN) == pytest.approx(0.4)  # no limit: its pinned CPU
    # A group without a limit (the light load's check run) counts, and the share is of the pinned CPU.
    free = RunData(**{**RUN.__dict__, "cpu_limit": None, "cgroup": group})
    assert figures.cgroup_cpu_share(free) == pytest.approx(1.25 / 3) and figures.server_cpu_share(free) == pytest.approx(0.4)
    assert RunData(**{**RUN.__dict__, "cpu_limit": 4.0}).cpu_allowance == 1  # more than it is pinned to: no change
    assert math.isnan(figures.cgroup_cpu_share(RUN)) and math.isnan(figures.cgroup_throttled_share(RUN))


def test_client_counted_sends_override_accepted():
    run = RunData(**{**RUN.__dict__, "messages_sent": 40})
    assert figures.bytes_per_sent_message(run) == 100.0


def test_a_zero_denominator_gives_nan_not_an_error():
    idle = Samples((0.0,), (0.0,), (0.0,), (100.0,), (5.0,))
    run = RunData(0, 0, 0, 0, 0, 0, server=idle)
    values = compute(run, EXPECTED)
    for name in ("bytes_per_delivered_message", "server_cpu_us_per_delivered_message", "empty_poll_ratio",
                 "rss_per_connection_bytes", "generator_cpu_share", "bytes_per_sent_message",
                 "ip_bytes_per_delivered_message"):
        assert math.isnan(values[name]), name
    assert values["server_peak_rss_bytes"] == 100.0


def test_every_figure_has_a_unit_and_a_description():
    for name, figure in FIGURES.items():
        assert figure.name == name and figure.unit and figure.description.endswith("."), name
    assert list(compute(RUN)) == list(FIGURES)


def test_the_cost_figures_are_documented():
    docs = (ROOT / "docs" / "metrics.md").read_text()
    for name in EXPECTED:
        assert f"| `{name}` | {FIGURES[name].unit} |" in docs, f"{name} is not in docs/metrics.md's table"


def test_a_peers_figures_as_ratios_to_its_rtlab_transport_at_the_same_point():
    rows = [
        {"transport": "websocket", "users": 10, "repeat": 1, "cpu": 50.0},
        {"transport": "websocket", "users": 20, "repeat": 1, "cpu": 40.0},
        {"transport": "floor-websocket", "users": 10, "repeat": 1, "cpu": 30.0},
        {"transport": "floor-websocket", "users": 20, "repeat": 1, "cpu": ""},  # absent: no ratio
        {"transport": "socketio-polling", "users": 10, "repeat": 1, "cpu": 90.0},  # no long-polling row
    ]
    got = figures.ratios(rows, {"cpu_ratio": "cpu"}, ["users"])
    assert [r["vs"] for r in got] == ["websocket", "websocket", "websocket", "websocket", "long-polling"]
    assert [r["cpu_ratio"] for r in got[:3]] == [1.0, 1.0, pytest.approx(0.6)]
    assert math.isnan(got[3]["cpu_ratio"]) and math.isnan(got[4]["cpu_ratio"])


def test_samples_window_and_cpu():
    window = SERVER.window(11.0, 12.0)
    assert window.t_s == (11.0, 12.0) and window.rss_bytes == (1500.0, 2000.0)
    assert window.cpu_s == pytest.approx(0.4)  # (1.5 + 0.6) - (1.2 + 0.5)
    assert window.wall_s == 1.0


def test_slope_is_least_squares():
    assert figures.slope([0, 1, 2, 3], [1, 3, 2, 6]) == pytest.approx(1.4)  # sxy 7 / sxx 5
    assert math.isnan(figures.slope([4, 4, 4], [1, 2, 3]))


BEFORE = """\
# TYPE rtlab_wire_received_bytes_total counter
rtlab_wire_received_bytes_total{transport="websocket"} 100
rtlab_wire_received_bytes_total{transport="common"} 10
# TYPE rtlab_wire_sent_bytes_total counter
rtlab_wire_sent_bytes_total{transport="websocket"} 200
rtlab_wire_sent_bytes_total{transport="common"} 20
# TYPE rtlab_messages_delivered_total counter
rtlab_messages_delivered_total{transport="websocket"} 4
"""
AFTER = """\
# TYPE rtlab_wire_received_bytes_total counter
rtlab_wire_received_bytes_total{transport="websocket"} 160
rtlab_wire_received_bytes_total{transport="common"} 15
# TYPE rtlab_wire_sent_bytes_total counter
rtlab_wire_sent_bytes_total{transport="websocket"} 500
rtlab_wire_sent_bytes_total{transport="common"} 30
# TYPE rtlab_messages_delivered_total counter
rtlab_messages_delivered_total{transport="websocket"} 10
"""


def test_run_data_from_two_scrapes():
    one = RunData.from_scrapes(BEFORE, AFTER, server=SERVER, transport="websocket", cpus=2)
    assert (one.wire_received_bytes, one.wire_sent_bytes, one.messages_delivered) == (60, 300, 6)
    every = RunData.from_scrapes(BEFORE, AFTER, server=SERVER, cpus=2)
    assert (every.wire_received_bytes, every.wire_sent_bytes) == (65, 310)
    assert every.polls == 0 and figures.bytes_per_delivered_message(every) == pytest.approx(375 / 6)


def test_parse_metrics_keeps_labels():
    metrics = parse_metrics(AFTER)
    assert metrics[("rtlab_wire_sent_bytes_total", (("transport", "common"),))] == 30
    assert metric_total(metrics, "rtlab_wire_sent_bytes_total") == 530
    assert metric_total(metrics, "rtlab_wire_sent_bytes_total", transport="websocket") == 500
    assert re.fullmatch(r"[a-z_]+", next(iter(metrics))[0])


def test_payload_and_overhead_split_on_hand_computed_values():
    # 200 deliveries of 20 accepted messages; a message is 12 bytes as the server sends it, 9 as a client does.
    run = RunData(**{**RUN.__dict__, "message_json_bytes": 12, "send_json_bytes": 9})
    assert figures.payload_bytes_out_per_delivered_message(run) == 12.0
    assert figures.overhead_bytes_out_per_delivered_message(run) == 3.0  # 3000 / 200 - 12
    assert figures.payload_bytes_in_per_delivered_message(run) == 0.9  # 9 x 20 / 200
    assert figures.overhead_bytes_in_per_delivered_message(run) == pytest.approx(4.1)  # 1000 / 200 - 0.9
    # Without message sizes (or deliveries) there is no split.
    assert math.isnan(figures.payload_bytes_out_per_delivered_message(RUN))
    assert math.isnan(figures.overhead_bytes_in_per_delivered_message(RUN))


def test_typical_message_sizes_are_the_encoded_json():
    # {"id":5,"room":"room-1","user":"member-2","text":"xxxx","sent_at":1795000000.1234567,"ts":1795000000.1234567}
    #  8      +16             +18               +14           +29                          +24  = 109
    # {"user": "member-2", "text": "xxxx", "sent_at": 1795000000.1234567}: 21 + 16 + 30 = 67
    sizes = figures.MessageSizes.typical(message_bytes=4, users=4, rooms=2, ids_per_room=10)
    assert (sizes.delivered, sizes.sent) == (109, 67)


def test_cpu_rates_over_each_next_second():
    # SERVER: CPU (user + system) 1.5, 1.7, 2.1, 2.7 at t 10..13.
    times, rates = zip(*figures.cpu_rates(SERVER))
    assert times == (10.0, 11.0, 12.0) and rates == pytest.approx((0.2, 0.4, 0.6))
    assert figures.peak_cpu_rate(SERVER) == pytest.approx(0.6)


def test_marginal_and_fixed_costs_are_a_line_through_the_message_rates():
    # 100 members; CPU 20 us per member-second fixed, 35 us per delivery; bytes 8 B per member-second, 240 per delivery.
    rows = [{"transport": "websocket", "users": 100, "delivered_per_s": rate,
             "server_cpu_us_per_member_s": (20 * 100 + 35 * rate) / 100, "bytes_per_member_s": (8 * 100 + 240 * rate) / 100}
            for rate in (10.0, 50.0, 200.0, 500.0)]
    rows.append({"transport": "sse", "users": 100, "delivered_per_s": 10.0, "server_cpu_us_per_member_s": 1.0,
                 "bytes_per_member_s": 1.0})  # one rate only: no line
    fits = figures.marginal_costs(rows)
    assert set(fits) == {"websocket"}
    fit = fits["websocket"]
    assert fit["marginal_cpu_us_per_delivered"] == pytest.approx(35)
    assert fit["fixed_cpu_us_per_member_s"] == pytest.approx(20)
    assert fit["marginal_bytes_per_delivered"] == pytest.approx(240)
    assert fit["fixed_bytes_per_member_s"] == pytest.approx(8)
    assert fit["rates"] == 4


def test_connection_set_up_and_the_window_flags():
    completeness = {"received": 10, "lost": 0, "join_ms": {"count": 20, "p50": 12.5, "p99": 4100.0, "max": 5100.0},
                    "first_message_ms": {"count": 19, "p50": 240.0, "p99": 4300.0, "max": 5300.0}}
    run = RunData(**{**RUN.__dict__, "completeness": completeness, "send_lag_p99_ms": 150.0,
                     "window": {"opened_by": "join deadline", "members": 20, "joined": 18, "members_joined_late": 2}})
    values = compute(run, ["join_p50_ms", "join_p99_ms", "first_message_p50_ms", "first_message_p99_ms",
                           "members_joined_late", "send_lag_p99_ms", "sends_behind_schedule"])
    assert values == {"join_p50_ms": 12.5, "join_p99_ms": 4100.0, "first_message_p50_ms": 240.0,
                      "first_message_p99_ms": 4300.0, "members_joined_late": 2.0, "send_lag_p99_ms": 150.0,
                      "sends_behind_schedule": 1.0}
    on_time = RunData(**{**RUN.__dict__, "send_lag_p99_ms": figures.SEND_LAG_LIMIT_MS})
    assert figures.sends_behind_schedule(on_time) == 0.0
    # A run from before the barrier: absent, not zero.
    assert math.isnan(figures.members_joined_late(RUN)) and math.isnan(figures.sends_behind_schedule(RUN))
    assert math.isnan(figures.join_p99_ms(RUN))


def test_flags_and_formats_read_as_a_reader_reads_them():
    from experiments import formats

    assert formats.text("server_peak_rss_bytes", 49_377_280.0) == "49.4"
    assert formats.header("server_peak_rss_bytes", "peak RSS") == "peak RSS (MB)"
    assert formats.text("messages_lost", 0.0) == "0" and formats.text("messages_delivered", 12345.0) == "12,345"
    assert formats.text("generator_saturated", 0.0) == "no" and formats.text("generator_saturated", "True") == "yes"
    assert formats.text("generator_cpu_peak", 0.221) == "22" and formats.text("latency_p99_ms", float("nan")) == "—"
    assert formats.check({"generator_saturated": 0.0, "sends_behind_schedule": 0.0, "members_joined_late": 0}) == "ok"
    assert formats.check({"generator_saturated": "True", "sends_behind_schedule": 1.0, "members_joined_late": "3.0"}) \
        == "saturated, sends late, 3 joined late"
    for name in FIGURES:  # every figure has a way to be shown
        formats.shown(name)


def test_what_a_leak_would_move():
    from clients.results import new_latency_histogram

    server = Samples(t_s=(0.0, 0.5, 1.0, 60.0, 120.0), cpu_user_s=(0.0,) * 5, cpu_system_s=(0.0,) * 5,
                     rss_bytes=(1e6, 1e6 + 500, 1e6 + 1000, 1e6 + 61_000, 1e6 + 121_000), tcp_connections=(0.0,) * 5,
                     fds=(7.0, 7.0, 40.0, 41.0, 42.0))
    intervals = []
    # The last interval starts as the 599.5 s window closes, with one delivery: it counts in the last five minutes.
    for start_s, latency_us in ((0.0, 1000), (10.0, 2000), (300.0, 5000), (590.0, 3000), (600.0, 1000)):
        histogram = new_latency_histogram()
        histogram.record_value(latency_us)
        intervals.append((start_s, histogram))
    page = "# TYPE rtlab_asyncio_tasks gauge\nrtlab_asyncio_tasks{{transport=\"websocket\"}} {}\n"
    run = RunData.from_scrapes(page.format(12), page.format(15), server=server, latency_intervals=tuple(intervals),
                               measured_s=599.5)
    values = compute(run, ["rss_slope_kb_per_min", "server_fds_start", "server_fds_end", "server_tasks_start",
                           "server_tasks_end", "latency_p99_first_5min_ms", "latency_p99_last_5min_ms",
                           "latency_p99_worst_5min_ms"])
    assert values["rss_slope_kb_per_min"] == pytest.approx(60.0, rel=0.01)  # 1 kB a second
    assert (values["server_fds_start"], values["server_fds_end"]) == (40.0, 42.0)  # counted a second in, not before
    assert (values["server_tasks_start"], values["server_tasks_end"]) == (12.0, 15.0)
    assert values["latency_p99_first_5min_ms"] == pytest.approx(2.0, rel=0.01)  # 0-5 min: 1 and 2 ms
    assert values["latency_p99_last_5min_ms"] == pytest.approx(5.0, rel=0.01)  # 5-10 min: 5, 3 and 1 ms
    assert values["latency_p99_worst_5min_ms"] == values["latency_p99_last_5min_ms"]
    assert [span["deliveries"] for span in figures.latency_by_span(run)] == [2, 3]
    assert math.isnan(figures.server_tasks_start(RUN)) and math.isnan(figures.latency_p99_worst_5min_ms(RUN))


def test_the_descriptors_at_the_start_are_a_count_taken_inside_the_window():
    # On a busy machine the sampler counts seconds apart and repeats its last count: here the first rows of the window
    # still carry the count taken before the members joined (7: the server's own), and the first count inside is 40.
    server = Samples(t_s=(10.0, 11.0, 12.0, 13.0, 14.0), cpu_user_s=(0.0,) * 5, cpu_system_s=(0.0,) * 5,
                     rss_bytes=(1e6,) * 5, tcp_connections=(0.0, 0.0, 0.0, 33.0, 33.0), fds=(7.0, 7.0, 7.0, 40.0, 40.0),
                     counted_at_s=(9.2, 9.2, 9.2, 13.0, 13.0))
    assert figures.server_fds_start(RunData.from_scrapes("", "", server=server)) == 40.0
    never = dataclasses.replace(server, counted_at_s=(9.2,) * 5)  # no count inside the window: not known
    assert math.isnan(figures.server_fds_start(RunData.from_scrapes("", "", server=never)))
    # A cluster's total is as old as its oldest part.
    other = dataclasses.replace(server, counted_at_s=(9.0, 11.0, 11.0, 11.0, 14.0))
    assert sum_samples([server, other]).counted_at_s == (9.0, 9.2, 9.2, 11.0, 13.0)
    assert sum_samples([server, dataclasses.replace(other, counted_at_s=())]).counted_at_s == ()
