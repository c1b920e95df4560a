"""Every derived figure, defined once with its unit and description, so the summary and the notebooks agree."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

# ---------------------------------------------------------------------------------------------------------------
# Inputs: what the server counted (/metrics) and what the sampler saw (its CSV).

MetricKey = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted label pairs)


def parse_metrics(text: str) -> dict[MetricKey, float]:
    """Parse a /metrics page into {(sample name, sorted labels): value}."""
    values: dict[MetricKey, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def metric_total(metrics: Mapping[MetricKey, float], name: str, **labels: str) -> float:
    """Sum the samples called `name` whose labels include `labels` (e.g. transport="websocket")."""
    wanted = set(labels.items())
    return sum(value for (sample, pairs), value in metrics.items() if sample == name and wanted <= set(pairs))


@dataclass(frozen=True)
class Samples:
    """One process's sampler rows, oldest first; CPU columns are cumulative seconds since the process began."""

    t_s: tuple[float, ...]  # monotonic clock, s
    cpu_user_s: tuple[float, ...]
    cpu_system_s: tuple[float, ...]
    rss_bytes: tuple[float, ...]
    tcp_connections: tuple[float, ...]
    fds: tuple[float, ...] = ()
    threads: tuple[float, ...] = ()

    @classmethod
    def from_rows(cls, rows: Iterable[Mapping[str, object]]) -> Samples:
        """Build from sampler rows (dicts with the sampler's CSV column names), sorted by time."""
        rows = sorted(rows, key=lambda row: float(row["t_mono_s"]))

        def column(name: str) -> tuple[float, ...]:
            return tuple(float(row[name]) for row in rows)

        return cls(
            t_s=column("t_mono_s"),
            cpu_user_s=column("cpu_user_s"),
            cpu_system_s=column("cpu_system_s"),
            rss_bytes=column("rss_bytes"),
            tcp_connections=column("tcp_connections"),
            fds=column("fds"),
            threads=column("threads"),
        )

    def window(self, start_s: float, end_s: float) -> Samples:
        """Return the samples taken from start_s to end_s (monotonic seconds), both included."""
        keep = [i for i, t in enumerate(self.t_s) if start_s <= t <= end_s]

        def pick(values: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(values[i] for i in keep) if values else ()

        return Samples(
            pick(self.t_s), pick(self.cpu_user_s), pick(self.cpu_system_s), pick(self.rss_bytes),
            pick(self.tcp_connections), pick(self.fds), pick(self.threads),
        )

    @property
    def wall_s(self) -> float:
        return self.t_s[-1] - self.t_s[0] if len(self.t_s) > 1 else 0.0

    @property
    def cpu_s(self) -> float:
        """CPU seconds (user + system) spent between the first and the last sample."""
        if len(self.t_s) < 2:
            return 0.0
        return (self.cpu_user_s[-1] + self.cpu_system_s[-1]) - (self.cpu_user_s[0] + self.cpu_system_s[0])


def read_samples(path: str | os.PathLike) -> dict[str, Samples]:
    """Read a sampler CSV into {label: Samples}."""
    by_label: dict[str, list[dict[str, str]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            by_label.setdefault(row["label"], []).append(row)
    return {label: Samples.from_rows(rows) for label, rows in by_label.items()}


@dataclass(frozen=True)
class RunData:
    """One measured window of one run: counter deltas from the server, samples of server and generator."""

    wire_received_bytes: float
    wire_sent_bytes: float
    messages_accepted: float
    messages_delivered: float
    polls: float
    empty_polls: float
    server: Samples
    generator: Samples | None = None
    messages_sent: float | None = None  # as the clients count them; None: take messages_accepted
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    ip_bytes: float | None = None  # both ways, from a packet capture (experiments/tcpcount.py); None: not captured

    @classmethod
    def from_scrapes(
        cls,
        before: str,
        after: str,
        server: Samples,
        generator: Samples | None = None,
        messages_sent: float | None = None,
        transport: str | None = None,
        cpus: int | None = None,
        ip_bytes: float | None = None,
    ) -> RunData:
        """Build from two /metrics pages that bound the window; `transport` picks one label (default: all)."""
        start, end = parse_metrics(before), parse_metrics(after)
        labels = {"transport": transport} if transport else {}

        def delta(name: str) -> float:
            return metric_total(end, name, **labels) - metric_total(start, name, **labels)

        return cls(
            wire_received_bytes=delta("rtlab_wire_received_bytes_total"),
            wire_sent_bytes=delta("rtlab_wire_sent_bytes_total"),
            messages_accepted=delta("rtlab_messages_accepted_total"),
            messages_delivered=delta("rtlab_messages_delivered_total"),
            polls=delta("rtlab_polls_total"),
            empty_polls=delta("rtlab_empty_polls_total"),
            server=server,
            generator=generator,
            messages_sent=messages_sent,
            cpus=cpus or os.cpu_count() or 1,
            ip_bytes=ip_bytes,
        )

    @property
    def sent(self) -> float:
        return self.messages_accepted if self.messages_sent is None else self.messages_sent


# ---------------------------------------------------------------------------------------------------------------
# The figures. Each is a function of RunData; a figure whose denominator is zero is NaN, never an error.


@dataclass(frozen=True)
class Figure:
    name: str
    unit: str
    description: str
    function: Callable[[RunData], float]


FIGURES: dict[str, Figure] = {}


def _figure(unit: str, description: str):
    def register(function: Callable[[RunData], float]) -> Callable[[RunData], float]:
        FIGURES[function.__name__] = Figure(function.__name__, unit, description, function)
        return function

    return register


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


@_figure("B/msg", "TCP payload bytes the server received, per message delivered to a client.")
def bytes_in_per_delivered_message(run: RunData) -> float:
    return _ratio(run.wire_received_bytes, run.messages_delivered)


@_figure("B/msg", "TCP payload bytes the server sent, per message delivered to a client.")
def bytes_out_per_delivered_message(run: RunData) -> float:
    return _ratio(run.wire_sent_bytes, run.messages_delivered)


@_figure("B/msg", "TCP payload bytes both ways, per message delivered to a client.")
def bytes_per_delivered_message(run: RunData) -> float:
    return _ratio(run.wire_received_bytes + run.wire_sent_bytes, run.messages_delivered)


@_figure("B/msg", "TCP payload bytes both ways, per message a client sent.")
def bytes_per_sent_message(run: RunData) -> float:
    return _ratio(run.wire_received_bytes + run.wire_sent_bytes, run.sent)


@_figure("B/msg", "IP packet bytes both ways (TCP/IP headers, handshakes and ACKs included), per message delivered.")
def ip_bytes_per_delivered_message(run: RunData) -> float:
    return math.nan if run.ip_bytes is None else _ratio(run.ip_bytes, run.messages_delivered)


@_figure("us/msg", "Server CPU time (user + system), in microseconds, per message delivered to a client.")
def server_cpu_us_per_delivered_message(run: RunData) -> float:
    return _ratio(run.server.cpu_s * 1e6, run.messages_delivered)


@_figure("B", "Largest server resident set size sampled in the window.")
def server_peak_rss_bytes(run: RunData) -> float:
    return max(run.server.rss_bytes, default=math.nan)


@_figure("B", "Mean of the server resident set sizes sampled in the window (samples are evenly spaced).")
def server_mean_rss_bytes(run: RunData) -> float:
    return _ratio(sum(run.server.rss_bytes), len(run.server.rss_bytes))


@_figure("B/conn", "Server RSS per TCP connection: least-squares slope of RSS against open connections.")
def rss_per_connection_bytes(run: RunData) -> float:
    return slope(run.server.tcp_connections, run.server.rss_bytes)


@_figure("ratio", "Share of poll responses that carried no message.")
def empty_poll_ratio(run: RunData) -> float:
    return _ratio(run.empty_polls, run.polls)


@_figure("ratio", "Load generator CPU time as a share of the machine's CPU capacity (wall time x CPUs).")
def generator_cpu_share(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(run.generator.cpu_s, run.generator.wall_s * run.cpus)


def slope(xs: Iterable[float], ys: Iterable[float]) -> float:
    """Return the least-squares slope of ys against xs; NaN when xs do not vary."""
    xs, ys = list(xs), list(ys)
    n = len(xs)
    if n < 2 or n != len(ys):
        return math.nan
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    return _ratio(sxy, sxx)


def compute(run: RunData, names: Iterable[str] | None = None) -> dict[str, float]:
    """Return {figure name: value} for `names` (default: every figure), in registry order."""
    chosen = FIGURES if names is None else {name: FIGURES[name] for name in names}
    return {name: figure.function(run) for name, figure in chosen.items()}
