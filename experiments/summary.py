"""One summary row per point and transport, from the raw files of a run; every figure from experiments.figures."""

from __future__ import annotations

import json
import math
from pathlib import Path

from clients.results import read_histogram, read_intervals

from . import capture, cgroup, figures
from .spec import Point

# summary.csv column -> (figure, scale). Names and units of the figures live in experiments.figures.
COLUMN_FIGURES: dict[str, tuple[str, float]] = {
    "sent": ("messages_sent", 1),
    "delivered": ("messages_delivered", 1),
    "lost": ("messages_lost", 1),
    "duplicates": ("messages_duplicated", 1),
    "out_of_order": ("messages_out_of_order", 1),
    "never_arrived": ("messages_never_arrived", 1),
    "reconnects": ("reconnects", 1),
    "reconnect_p50_ms": ("reconnect_p50_ms", 1),
    "reconnect_p99_ms": ("reconnect_p99_ms", 1),
    "delivered_ratio": ("delivered_ratio", 1),
    "latency_p50_ms": ("latency_p50_ms", 1),
    "latency_p95_ms": ("latency_p95_ms", 1),
    "latency_p99_ms": ("latency_p99_ms", 1),
    "latency_max_ms": ("latency_max_ms", 1),
    "latency_mean_ms": ("latency_mean_ms", 1),
    "latency_theory_ms": ("theory_latency_ms", 1),
    "delivered_per_s": ("deliveries_per_second", 1),
    "offered_per_s": ("offered_deliveries_per_second", 1),
    "delivered_offered_ratio": ("delivered_offered_ratio", 1),
    "delivered_offered_tolerance": ("delivered_offered_tolerance", 1),
    "wire_bytes_in": ("wire_bytes_in", 1),
    "wire_bytes_out": ("wire_bytes_out", 1),
    "bytes_per_delivered": ("bytes_per_delivered_message", 1),
    "bytes_in_per_delivered": ("bytes_in_per_delivered_message", 1),
    "bytes_out_per_delivered": ("bytes_out_per_delivered_message", 1),
    "bytes_per_sent": ("bytes_per_sent_message", 1),
    "ip_bytes_per_delivered": ("ip_bytes_per_delivered_message", 1),
    "tcp_payload_in": ("tcp_payload_in_bytes", 1),
    "tcp_payload_out": ("tcp_payload_out_bytes", 1),
    "tcp_packets_per_delivered": ("tcp_packets_per_delivered_message", 1),
    "tcp_dropped": ("tcp_dropped_packets", 1),
    "meter_over_capture": ("meter_over_capture_bytes", 1),
    "server_cpu_percent": ("server_cpu_share", 100),
    "cgroup_cpu_percent": ("cgroup_cpu_share", 100),
    "cgroup_cpu_ms": ("cgroup_cpu_s", 1000),
    "cgroup_cpu_us_per_delivered": ("cgroup_cpu_us_per_delivered_message", 1),
    "cgroup_periods": ("cgroup_periods", 1),
    "cgroup_throttled_periods": ("cgroup_throttled_periods", 1),
    "cgroup_throttled_percent": ("cgroup_throttled_share", 100),
    "cgroup_throttled_ms": ("cgroup_throttled_s", 1000),
    "server_cpu_us_per_delivered": ("server_cpu_us_per_delivered_message", 1),
    "generator_cpu_us_per_delivered": ("generator_cpu_us_per_delivered_message", 1),
    "proxy_cpu_us_per_delivered": ("proxy_cpu_us_per_delivered_message", 1),
    "meter_bytes_per_delivered": ("meter_bytes_per_delivered_message", 1),
    "server_system_us_per_delivered": ("server_system_cpu_us_per_delivered_message", 1),
    "generator_system_us_per_delivered": ("generator_system_cpu_us_per_delivered_message", 1),
    "server_cpu_us_per_member_s": ("server_cpu_us_per_member_s", 1),
    "bytes_per_member_s": ("bytes_per_member_s", 1),
    "server_rss_peak_mb": ("server_peak_rss_bytes", 1e-6),
    "server_rss_mean_mb": ("server_mean_rss_bytes", 1e-6),
    "rss_per_connection_kb": ("rss_per_connection_bytes", 1e-3),
    "rss_per_member_kb": ("server_rss_per_member_bytes", 1e-3),
    "empty_poll_ratio": ("empty_poll_ratio", 1),
    "generator_cpu_peak": ("generator_cpu_peak", 1),
    "generator_saturated": ("generator_saturated", 1),
    "sampler_cpu_percent": ("sampler_cpu_share", 100),
    "server_cpu_wait_percent": ("server_cpu_wait_share", 100),
    "generator_cpu_wait_percent": ("generator_cpu_wait_share", 100),
    "server_gc_full_pauses": ("server_gc_full_pauses", 1),
    "server_gc_full_pause_ms": ("server_gc_full_pause_s", 1000),
    "join_p50_ms": ("join_p50_ms", 1),
    "join_p99_ms": ("join_p99_ms", 1),
    "first_message_p50_ms": ("first_message_p50_ms", 1),
    "first_message_p99_ms": ("first_message_p99_ms", 1),
    "members_joined_late": ("members_joined_late", 1),
    "send_lag_p99_ms": ("send_lag_p99_ms", 1),
    "sends_behind_schedule": ("sends_behind_schedule", 1),
    "rss_slope_kb_per_min": ("rss_slope_kb_per_min", 1),
    "server_fds_start": ("server_fds_start", 1),
    "server_fds_end": ("server_fds_end", 1),
    "server_tasks_start": ("server_tasks_start", 1),
    "server_tasks_end": ("server_tasks_end", 1),
    "latency_p99_first_5min_ms": ("latency_p99_first_5min_ms", 1),
    "latency_p99_last_5min_ms": ("latency_p99_last_5min_ms", 1),
    "latency_p99_worst_5min_ms": ("latency_p99_worst_5min_ms", 1),
}
# A peer's figures divided by its rtlab transport's at the same point (figures.ratios; rtlab's own rows: 1.0).
RATIO_COLUMNS = {
    "cpu_ratio": "server_cpu_us_per_delivered",
    "bytes_ratio": "bytes_per_delivered",
    "p50_ratio": "latency_p50_ms",
    "p99_ratio": "latency_p99_ms",
    "rss_per_member_ratio": "rss_per_member_kb",
}
SUMMARY_COLUMNS = [*COLUMN_FIGURES, "window_s", "vs", *RATIO_COLUMNS]


def load_run_data(point: Point, point_dir: Path, window_mono_s: list[float], processes: int = 1,
                  server_cpus: int = 1) -> figures.RunData:
    """Assemble one point's measured window from its raw files."""
    start, end = window_mono_s
    samples = figures.read_samples(point_dir / "resources.csv")
    # A cluster's cost is every process serving it: instances, Redis, HAProxy.
    server = figures.sum_samples(s.window(start, end) for label, s in samples.items() if label not in figures.NOT_SERVER)
    completeness = json.loads((point_dir / "completeness.json").read_text())
    counts = completeness["transports"].get(point.transport)
    window = completeness.get("window")  # absent in runs from before the join barrier
    generator_file = point_dir / "generator.json"
    send_lag = json.loads(generator_file.read_text()).get("send_lag_p99_ms") if generator_file.exists() else None
    hdr = point_dir / f"deliver_latency_{point.transport}.hdr"
    hlog = point_dir / f"deliver_latency_{point.transport}.hlog"  # absent in runs from before it was written
    generator = samples.get(figures.GENERATOR_LABEL)
    sampler = samples.get(figures.SAMPLER_LABEL)
    proxy = samples.get(figures.PROXY_LABEL)
    cpu_limit, group = cgroup_window(point_dir)
    return figures.RunData.from_scrapes(
        scrapes(point_dir, "metrics_before"),
        scrapes(point_dir, "metrics_after"),
        server=server,
        generator=generator.window(start, end) if generator else None,
        sampler=sampler.window(start, end) if sampler else None,
        proxy=proxy.window(start, end) if proxy else None,
        transport=point.transport,
        latency_us=read_histogram(hdr) if hdr.exists() else None,
        completeness=counts,
        measured_s=(window or {}).get("measured_s") or point.profile.duration_s - point.profile.warmup_s,
        window=window,
        send_lag_p99_ms=send_lag,
        latency_intervals=tuple(read_intervals(hlog)) if hlog.exists() else None,
        generator_processes=processes,
        knobs=point.profile.knobs,
        members=point.profile.users,
        offered_per_s=point.profile.offered_deliveries_per_s(),
        offered_sends_per_s=point.profile.users * point.profile.messages_per_second,
        server_cpus=server_cpus,
        idle_rss_bytes=sum(s.rss_bytes[0] for label, s in samples.items()
                           if label not in figures.NOT_SERVER and s.rss_bytes),
        cpu_limit=cpu_limit,
        cgroup=group,
    ).with_capture(capture.window(point_dir))


def cgroup_window(point_dir: Path) -> tuple[float | None, dict | None]:
    """The server cgroup's CPU limit (None: none) and its counters' increase over the window, from the point's
    cgroup.json; (None, None) for a point that ran in no cgroup."""
    path = point_dir / cgroup.STAT_FILE
    if not path.exists():
        return None, None
    data = json.loads(path.read_text())
    if "start" not in data or "end" not in data:
        return data["cgroup"]["cpu_limit"], None
    return data["cgroup"]["cpu_limit"], cgroup.CpuStat(**data["end"]).minus(cgroup.CpuStat(**data["start"]))


def scrapes(point_dir: Path, stem: str) -> dict[str, str]:
    """{instance: /metrics page}: `stem.txt` for one server, `stem-<instance>.txt` for a cluster."""
    single = point_dir / f"{stem}.txt"
    if single.exists():
        return {"server": single.read_text()}
    return {path.stem[len(stem) + 1:]: path.read_text() for path in sorted(point_dir.glob(f"{stem}-*.txt"))}


def summarize_point(point: Point, point_dir: Path, window_mono_s: list[float], processes: int = 1,
                    server_cpus: int = 1) -> dict:
    """Return the summary row of one point: its parameters, then every column of COLUMN_FIGURES."""
    run = load_run_data(point, point_dir, window_mono_s, processes, server_cpus)
    values = figures.compute(run, [name for name, _ in COLUMN_FIGURES.values()])
    row: dict[str, object] = {"transport": point.transport, "repeat": point.repeat, **point.swept}
    for column, (name, scale) in COLUMN_FIGURES.items():
        value = values[name]
        row[column] = "" if math.isnan(value) else round(value * scale, 6)
    for flag in ("generator_saturated", "sends_behind_schedule"):
        if row[flag] != "":
            row[flag] = bool(row[flag])
    row["window_s"] = round(window_mono_s[1] - window_mono_s[0], 3)
    return row


def add_ratios(rows: list[dict], keys: list[str]) -> None:
    """Fill each row's `vs` and ratio columns (RATIO_COLUMNS) from the run's rows at the same point."""
    for row, ratio in zip(rows, figures.ratios(rows, RATIO_COLUMNS, [*keys, "repeat"]), strict=True):
        row["vs"] = ratio["vs"]
        for name in RATIO_COLUMNS:
            row[name] = "" if math.isnan(ratio[name]) else round(ratio[name], 4)
