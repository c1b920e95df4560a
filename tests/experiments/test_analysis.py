"""The notebooks' loader against the committed fixture run: tidy frames and figures match values worked out by hand."""

from __future__ import annotations

import csv
import math
import shutil

import pytest
from conftest import TESTS

from experiments import analysis, figures
from experiments.summary import COLUMN_FIGURES
from servers import registry

FIXTURE = TESTS / "fixtures" / "run-small"
WS10 = "users=10/websocket-r1"  # the point most values below are worked out for


@pytest.fixture(scope="module")
def run() -> analysis.Run:
    return analysis.load_run(FIXTURE)


def point(run: analysis.Run, name: str = WS10):
    rows = run.points[run.points["point"] == name]
    assert len(rows) == 1
    return rows.iloc[0]


def test_one_row_per_point_with_its_profile(run):
    assert list(run.points["point"]) == [p["dir"] for p in run.manifest["points"]]
    assert run.swept == ["users"] and run.sweep_values() == [(10,), (20,)]
    assert run.transports == ["short-polling", "long-polling", "websocket"]
    assert list(run.points["users"]) == [10, 10, 10, 20, 20, 20]
    assert set(run.points["rooms"]) == {2} and set(run.points["poll_interval_s"]) == {0.5}
    assert set(figures.FIGURES) <= set(run.points.columns)


def test_wire_bytes_are_the_counter_deltas_of_the_two_scrapes(run):
    # metrics_before.txt / metrics_after.txt of users=10/websocket-r1:
    #   rtlab_wire_sent_bytes_total      23240 -> 108175: 84935
    #   rtlab_wire_received_bytes_total   6533 ->  20541: 14008
    #   rtlab_messages_delivered_total      85 ->    460:   375
    ws = point(run)
    assert ws["wire_bytes_out"] == 84935
    assert ws["wire_bytes_in"] == 14008
    assert ws["bytes_out_per_delivered_message"] == pytest.approx(84935 / 375)
    assert ws["bytes_per_delivered_message"] == pytest.approx((84935 + 14008) / 375)
    sent = run.metrics[(run.metrics["point"] == WS10) & (run.metrics["name"] == "rtlab_wire_sent_bytes_total")]
    assert sent[["before", "after", "delta"]].values.tolist() == [[23240, 108175, 84935]]


def test_payload_and_overhead_split(run):
    # profile: 10 members, 2 rooms, 100-byte texts, 1 msg/s, 8 s: 40 ids a room, a typical message is id 20 of
    # member-5 in room-1. As the server sends it, 206 bytes:
    #   {"id":20,  "room":"room-1",  "user":"member-5",  "text":"x...x",  "sent_at":1795000000.1234567,  "ts":...}
    #   9        + 16              + 18                + 8+100+2        + 29                            + 24
    # As a client POSTs it, 163 bytes: {"user": "member-5", "text": "x...x", "sent_at": 1795000000.1234567}
    #   21 + 112 + 30.   Accepted 17 -> 92 (75) and delivered 375 in the window.
    ws = point(run)
    assert ws["payload_bytes_out_per_delivered_message"] == 206
    assert ws["overhead_bytes_out_per_delivered_message"] == pytest.approx(84935 / 375 - 206)
    assert ws["payload_bytes_in_per_delivered_message"] == pytest.approx(163 * 75 / 375)
    assert ws["overhead_bytes_in_per_delivered_message"] == pytest.approx(14008 / 375 - 163 * 75 / 375)
    # Payload + overhead is the whole, at every point.
    for row in run.points.itertuples():
        for way in ("in", "out"):
            whole = getattr(row, f"bytes_{way}_per_delivered_message")
            parts = getattr(row, f"payload_bytes_{way}_per_delivered_message") + \
                getattr(row, f"overhead_bytes_{way}_per_delivered_message")
            assert parts == pytest.approx(whole)


def test_server_cpu_from_the_sampler_rows_in_the_window(run):
    # resources.csv, label server, window 4640.095487935..4645.541649477 (manifest): 27 rows, from
    # 4640.254910 (user 0.380 + system 0.040) to 4645.454871 (0.430 + 0.060): 0.07 s for 375 deliveries.
    ws = point(run)
    assert ws["server_cpu_us_per_delivered_message"] == pytest.approx(0.07e6 / 375)
    samples = run.resources[(run.resources["point"] == WS10) & (run.resources["process"] == "server")]
    in_window = samples[samples["in_window"]]
    assert len(in_window) == 27
    assert in_window["t_s"].iloc[0] == pytest.approx(4640.254910 - 4640.095487935)
    assert (in_window["cpu_user_s"].iloc[-1] + in_window["cpu_system_s"].iloc[-1]) - \
        (in_window["cpu_user_s"].iloc[0] + in_window["cpu_system_s"].iloc[0]) == pytest.approx(0.07)
    assert samples["rss_mb"].max() == pytest.approx(max(
        float(r["rss_bytes"]) for r in csv.DictReader((FIXTURE / WS10 / "resources.csv").open())
        if r["label"] == "server") / 1e6)
    assert set(run.resources["process"]) == {"server", "generator"}


def test_cpu_rate_is_cpu_seconds_over_the_next_second(run):
    samples = run.resources[(run.resources["point"] == WS10) & (run.resources["process"] == "server")]
    t, cpu = samples["t_s"].tolist(), (samples["cpu_user_s"] + samples["cpu_system_s"]).tolist()
    j = next(j for j in range(len(t)) if t[j] - t[0] >= 1.0)
    assert samples["cpu_rate"].iloc[0] == pytest.approx((cpu[j] - cpu[0]) / (t[j] - t[0]))
    assert math.isnan(samples["cpu_rate"].iloc[-1])  # no full second after the last sample


def test_latency_distribution_from_the_hdr_histogram(run):
    # deliver_latency_websocket.hgrm: TotalCount 316, Max 11.239 ms.
    curve = run.latency[run.latency["point"] == WS10]
    assert curve["count"].sum() == 316 == point(run)["messages_delivered"]
    assert curve["value_ms"].max() == pytest.approx(11.239)
    assert curve["cumulative_fraction"].iloc[-1] == 1.0
    assert curve["value_ms"].is_monotonic_increasing
    # HdrHistogram's percentile: the first value whose cumulative count reaches p x total, rounded half up.
    for p in (50, 95, 99):
        needed = math.floor(p / 100 * 316 + 0.5)
        value = curve[curve["cumulative_count"] >= needed]["value_ms"].iloc[0]
        assert value == pytest.approx(point(run)[f"latency_p{p}_ms"])
    assert point(run)["latency_p50_ms"] == pytest.approx(2.085)


def test_event_loop_lag_buckets_over_the_window(run):
    # rtlab_event_loop_lag_seconds: count 11 -> 33 (22 ticks); bucket le=0.001: 9 -> 20 (11 ticks): half.
    lag = run.loop_lag[run.loop_lag["point"] == WS10].set_index("le_ms")
    assert lag.loc[1.0, "cumulative_fraction"] == pytest.approx(11 / 22)
    assert lag.loc[math.inf, "cumulative_fraction"] == 1.0
    assert lag["count"].sum() == 22


ADDED_SINCE_THE_FIXTURE = {"rss_per_member_kb", "generator_cpu_us_per_delivered", "server_cpu_us_per_member_s", "bytes_per_member_s",
                           "sampler_cpu_percent", "server_cpu_percent", "offered_per_s", "delivered_offered_ratio",
                           "delivered_offered_tolerance", "server_gc_full_pauses", "server_gc_full_pause_ms",
                           "server_system_us_per_delivered", "generator_system_us_per_delivered",
                           "proxy_cpu_us_per_delivered", "meter_bytes_per_delivered", "tcp_payload_in", "tcp_payload_out",
                           "tcp_packets_per_delivered", "tcp_dropped", "meter_over_capture", "join_p50_ms",
                           "join_p99_ms", "first_message_p50_ms", "first_message_p99_ms", "members_joined_late",
                           "send_lag_p99_ms", "sends_behind_schedule",
                           "cgroup_cpu_percent", "cgroup_cpu_ms", "cgroup_cpu_us_per_delivered", "cgroup_periods",
                           "cgroup_throttled_periods", "cgroup_throttled_percent", "cgroup_throttled_ms",
                           "rss_slope_kb_per_min", "server_fds_start", "server_fds_end", "server_tasks_start",
                           "server_tasks_end", "latency_p99_first_5min_ms", "latency_p99_last_5min_ms",
                           "latency_p99_worst_5min_ms", "server_cpu_wait_percent", "generator_cpu_wait_percent"}


def test_recomputed_figures_match_the_summary_the_runner_wrote(run):
    # Columns added since the fixture was recorded are not in its summary (the runner writes every one now).
    written_columns = [c for c in COLUMN_FIGURES if c in run.summary.columns]
    assert set(COLUMN_FIGURES) - set(written_columns) <= ADDED_SINCE_THE_FIXTURE
    for row, written in zip(run.points.itertuples(), run.summary.itertuples()):
        assert row.point == written.point
        for column, (name, scale) in COLUMN_FIGURES.items():
            if column not in written_columns:
                continue
            value, expected = getattr(row, name) * scale, getattr(written, column)
            if isinstance(expected, float) and math.isnan(expected):
                assert math.isnan(value), (row.point, column)
            else:
                assert value == pytest.approx(float(expected), rel=1e-5, abs=1e-6), (row.point, column)


def test_capacity_per_transport(run):
    # Every transport carried both points within its limits (short polling's p99 of ~T = 0.5 s is its own
    # baseline, not a failure): the sweep ended first, so each capacity is only "at least 20".
    found = run.capacity()
    assert {t: (c.load, c.bound) for t, c in found.items()} == {
        t: (20, "sweep") for t in ("short-polling", "long-polling", "websocket")}
    assert found["short-polling"].p99_limit_ms > 450 + figures.CAPACITY_P99_MARGIN_MS  # its own p99 is ~T
    assert found["websocket"].sentence().startswith("capacity of websocket: ≥ 20 members (")


def load_point(users, p99=20.0, cpu=40.0, ratio=1.0, lost=0, saturated=False, transport="websocket"):
    return {"transport": transport, "users": users, "latency_p99_ms": p99, "server_cpu_percent": cpu,
            "delivered_offered_ratio": ratio, "lost": lost, "generator_saturated": saturated,
            "delivered_per_s": users * 9.0}


@pytest.mark.parametrize(("heavy", "bound", "said"), [
    (load_point(800, cpu=95.0, p99=400.0), "server", "server CPU 95 % of its core at 800"),
    (load_point(800, ratio=0.9), "server", "delivered 90.0% of the offered at 800"),
    (load_point(800, p99=400.0), "server", "p99 400 ms > 270 ms at 800"),
    (load_point(800, lost=3), "server", "3 lost at 800"),
    (load_point(800, cpu=60.0, p99=900.0, saturated=True), "generator", "the load generator saturated its core at 800"),
    (load_point(800, cpu=97.0, saturated=True), "server", "server CPU 97 % of its core at 800"),
])
def test_capacity_is_the_load_before_the_first_limit(heavy, bound, said):
    rows = [load_point(400), heavy, load_point(200), load_point(1600, cpu=99.0)]  # any order: sorted by load
    found = figures.capacity(rows)["websocket"]
    assert (found.load, found.delivered_per_s, found.bound) == (400, 3600.0, bound)
    assert found.reason == said
    assert found.lower_bound == (bound == "generator")
    assert found.sentence().startswith("capacity of websocket: " + ("≥ " if bound == "generator" else "") + "400 members")


def test_capacity_holds_each_transport_to_its_own_unloaded_p99():
    # Short polling at T = 1 s: p99 near 1 s by design; 1.2 s is within its margin, 1.4 s is not.
    rows = [load_point(100, p99=1000.0, transport="short-polling"), load_point(200, p99=1200.0, transport="short-polling"),
            load_point(400, p99=1400.0, transport="short-polling")]
    found = figures.capacity(rows)["short-polling"]
    assert (found.load, found.bound, found.p99_limit_ms) == (200, "server", 1250.0)


def test_a_limit_at_the_lightest_load_leaves_no_capacity():
    found = figures.capacity([load_point(100, saturated=True)])["websocket"]
    assert math.isnan(found.load) and found.bound == "generator"
    assert "under the lightest load swept" in found.sentence()


def limited_point(users, limit, cpu=40.0, transport="websocket", us=50.0, **more):
    return {**load_point(users, cpu=cpu, transport=transport, **more), "cpu_limit": limit, "repeat": "1",
            "cgroup_cpu_us_per_delivered": us, "server_cpu_us_per_delivered": us * 1.1, "generator_cpu_peak": 0.3}


def test_under_cpu_limits_each_limit_is_walked_on_its_own_and_reported_per_cpu():
    rows = [limited_point(100, 0.0), limited_point(100, 0.25), limited_point(200, 0.25, cpu=95.0),
            limited_point(100, 0.5), limited_point(200, 0.5), limited_point(400, 0.5, cpu=96.0)]
    by_limit = figures.capacity_by_limit(rows)
    assert list(by_limit) == [0.25, 0.5]  # the run without a limit is the check's, no capacity's
    low, high = by_limit[0.25]["websocket"], by_limit[0.5]["websocket"]
    # The server's CPU crossed 90 % of the limit between 100 (40 %) and 200 members (95 %): at 100 + 50/55 of the step.
    assert (low.load, low.bound, low.cpu_limit, low.over) == (100, "server", 0.25, 200)
    assert (low.crossing, low.crossing_delivered_per_s) == (pytest.approx(100 + 50 / 55 * 100), pytest.approx(
        900 + 50 / 55 * 900))  # without the offered rates, the deliveries are interpolated too
    assert (low.load_per_cpu, low.delivered_per_s_per_cpu) == (pytest.approx(low.crossing * 4), pytest.approx(
        low.crossing_delivered_per_s * 4))
    assert low.reason == "server CPU 95 % of its 0.25-CPU limit at 200"
    assert (high.load, high.crossing) == (200, pytest.approx(200 + 50 / 56 * 200))
    assert low.sentence() == ("capacity of websocket at a 0.25-CPU limit: 100 members (900 deliveries/s), 90 % of the "
                              "limit at ≈ 191 members (between 100 at 40 % and 200 at 95 %), per CPU ≈ 764 members "
                              "(6,873 deliveries/s), server-bound: server CPU 95 % of its 0.25-CPU limit at 200; the "
                              "generator's busiest second there 30% of its core")
    (check,) = figures.limit_scaling(by_limit)
    assert check.ratio == pytest.approx(0.991, abs=1e-3) and check.problem == ""
    # In a cgroup, the criterion reads the kernel's count of the group, the one its quota is enforced on.
    counted = [{**row, "cgroup_cpu_percent": 92.0 if row["users"] == 200 else 30.0} for row in rows[3:]]
    assert figures.capacity(counted)["websocket"].reason == "server CPU 92 % of its 0.5-CPU limit at 200"
    # A run without limits is one capacity per transport, as before.
    assert list(figures.capacity_by_limit([load_point(100)])) == [None]


def test_under_a_limit_the_capacity_is_where_the_servers_cpu_crosses_90_percent_between_the_points_around_it():
    def point(users, limit, cpu, **more):
        return {**limited_point(users, limit, cpu=cpu, **more), "offered_per_s": users * 9.0}

    rows = [point(100, 0.5, 40.0), point(200, 0.5, 80.0), point(400, 0.5, 100.0)]
    found = figures.capacity(rows)["websocket"]
    # The grid says 200 (the next load, 400, is over 90 %); the server's CPU crosses 90 % halfway between the two.
    assert (found.load, found.over, found.cpu_percent, found.cpu_percent_over) == (200, 400, 80.0, 100.0)
    assert (found.crossing, found.crossing_delivered_per_s) == (300, 2700)
    assert (found.estimate, found.load_per_cpu, found.delivered_per_s_per_cpu) == (300, 600, 5400)
    assert "90 % of the limit at ≈ 300 members (between 200 at 80 % and 400 at 100 %), per CPU ≈ 600 members " \
           "(5,400 deliveries/s)" in found.sentence()
    # A walk that ended on anything but the server's CPU has no crossing: per CPU from the last load within the limits.
    other = figures.capacity([point(100, 0.5, 40.0), point(200, 0.5, 50.0, p99=400.0)])["websocket"]
    assert math.isnan(other.crossing) and (other.estimate, other.load_per_cpu) == (100, 200)
    assert "of the limit at" not in other.sentence() and "per CPU 200 members" in other.sentence()
    # The first check divides the crossings: 150 at 0.25 CPU, 300 at 0.5.
    low = [point(100, 0.25, 80.0), point(200, 0.25, 100.0)]
    (check,) = figures.limit_scaling(figures.capacity_by_limit(low + rows))
    assert check.ratio == 1.0 and check.problem == ""


def test_a_capacity_out_of_proportion_to_its_limit_is_flagged_and_a_lower_bound_is_not_checked():
    rows = [limited_point(100, 0.25, cpu=80.0), limited_point(200, 0.25, cpu=100.0),  # crosses 90 % at 150
            limited_point(100, 0.5), limited_point(200, 0.5), limited_point(400, 0.5, cpu=80.0),
            limited_point(800, 0.5, cpu=100.0)]  # at 600: four times 150 for twice the CPU
    (check,) = figures.limit_scaling(figures.capacity_by_limit(rows))
    assert check.ratio == 2.0 and check.problem == "capacity ratio / limit ratio 2.00, outside 1 ± 15%"
    saturated = rows[:2] + [limited_point(100, 0.5), limited_point(200, 0.5, saturated=True)]
    (check,) = figures.limit_scaling(figures.capacity_by_limit(saturated))
    assert check.problem == "not checked: its capacity at 0.5 CPU is only ≥ (generator-bound)"


def test_the_light_loads_cpu_per_delivery_with_and_without_the_limit():
    rows = [limited_point(100, 0.0, us=50.0), limited_point(100, 0.25, us=52.0), limited_point(100, 0.5, us=44.0),
            limited_point(200, 0.25, us=10.0)]
    costs = {c.cpu_limit: c for c in figures.limit_cost(rows, "users", 100)}
    assert set(costs) == {0.25, 0.5}
    assert costs[0.25].ratio == pytest.approx(1.04) and costs[0.25].problem == ""
    assert costs[0.5].problem == "CPU per delivery with / without the limit 0.88, outside 1 ± 10%"
    # The cgroup's own count is compared where both have it, else the sampler's.
    without_group = [{**row, "cgroup_cpu_us_per_delivered": ""} for row in rows]
    assert figures.limit_cost(without_group, "users", 100)[0].limited_us == pytest.approx(52.0 * 1.1)
    # A light load at the limit says nothing about the limit's cost.
    busy = [rows[0], limited_point(100, 0.25, cpu=93.0, us=50.0)]
    assert figures.limit_cost(busy, "users", 100)[0].problem.startswith("not checked: the light load is not below")


def test_the_capacity_table_carries_both_checks_and_flags_what_failed():
    rows = [limited_point(100, 0.0, us=50.0), limited_point(100, 0.25, us=51.0), limited_point(200, 0.25, cpu=95.0),
            limited_point(100, 0.5, us=60.0), limited_point(200, 0.5), limited_point(400, 0.5, cpu=96.0),
            limited_point(100, 0.25, transport="sse"), limited_point(200, 0.25, transport="sse", cpu=91.0)]
    table = {(r["transport"], r["cpu_limit"]): r for r in figures.capacity_table(rows, "users", 100)}
    assert set(table) == {("websocket", 0.25), ("websocket", 0.5), ("sse", 0.25)}
    assert table["websocket", 0.25]["flag"] == "" and table["websocket", 0.25]["scaling_ratio"] == pytest.approx(0.991,
                                                                                                               abs=1e-3)
    assert (table["websocket", 0.5]["capacity"], table["websocket", 0.5]["over"]) == (200, 400)
    assert (table["websocket", 0.5]["cpu_percent"], table["websocket", 0.5]["cpu_percent_over"]) == (40.0, 96.0)
    assert table["websocket", 0.5]["flag"] == "CPU per delivery with / without the limit 1.20, outside 1 ± 10%"
    assert table["sse", 0.25]["flag"] == ("not checked: not measured at another limit; not checked: no run at 100 "
                                          "without the limit")
    assert list(table["websocket", 0.5]) == list(figures.CAPACITY_COLUMNS)
    # The generator must stay unsaturated where the server reaches its limit; the row says when it did not.
    busy = [limited_point(100, 0.25), {**limited_point(200, 0.25, cpu=95.0), "generator_cpu_peak": 0.93}]
    (row,) = figures.capacity_table(busy, "users")
    assert (row["bound"], row["flag"]) == ("server", "the generator saturated too where the server reached its limit "
                                                     "(93% of its core)")


def test_titles_carry_the_profile(run):
    title = run.title("Delivery latency")
    assert title.splitlines()[0] == "Delivery latency"
    assert "{10, 20} members in 2 rooms" in title and "poll every 0.5 s" in title and "100 B" in title
    assert run.sweep_label((10,)) == "users=10"


def test_every_transport_has_its_own_colour_and_label_from_the_registry():
    names = registry.names(None)
    colours = [analysis.colour(name) for name in names]
    assert len(set(colours)) == len(names) and analysis.OTHER_COLOUR not in colours
    assert [analysis.label(name) for name in names] == [registry.get(name).label for name in names]
    assert analysis.colour("a-transport-of-an-old-run") == analysis.OTHER_COLOUR


def test_resolve_run_falls_back_to_the_reference_run(tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    shutil.copytree(FIXTURE, reference)
    monkeypatch.setattr(analysis, "ROOT", tmp_path)  # not this checkout, whose results/latest may exist
    monkeypatch.setattr(analysis, "LATEST", tmp_path / "latest")
    monkeypatch.setattr(analysis, "REFERENCE", reference)
    monkeypatch.chdir(tmp_path)
    assert analysis.resolve_run("results/latest") == reference.resolve()
    assert analysis.resolve_run(None) == reference.resolve()
    assert analysis.resolve_run(str(reference)) == reference.resolve()
    with pytest.raises(FileNotFoundError):
        analysis.resolve_run(tmp_path / "nowhere")
