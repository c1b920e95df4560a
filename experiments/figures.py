"""Every derived figure, defined once with its unit and description, so the summary and the notebooks agree."""

from __future__ import annotations

import bisect
import csv
import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

from hdrh.histogram import HdrHistogram
from prometheus_client.parser import text_string_to_metric_families

from clients.results import SEND_LAG_LIMIT_MS
from servers import registry

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
    cpu_wait_s: tuple[float, ...] = ()  # cumulative seconds waiting for a CPU; () in runs from before it was sampled
    # When each row's fds and tcp_connections were counted (monotonic s; NaN: not yet): the sampler counts about once
    # a second and repeats the last count in between. () in runs from before it was recorded.
    counted_at_s: tuple[float, ...] = ()

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
            cpu_wait_s=column("cpu_wait_s") if rows and rows[0].get("cpu_wait_s") not in (None, "") else (),
            counted_at_s=column("counted_at_s") if rows and rows[0].get("counted_at_s") not in (None, "") else (),
        )

    def window(self, start_s: float, end_s: float) -> Samples:
        """Return the samples taken from start_s to end_s (monotonic seconds), both included."""
        keep = [i for i, t in enumerate(self.t_s) if start_s <= t <= end_s]

        def pick(values: tuple[float, ...]) -> tuple[float, ...]:
            return tuple(values[i] for i in keep) if values else ()

        return Samples(
            pick(self.t_s), pick(self.cpu_user_s), pick(self.cpu_system_s), pick(self.rss_bytes),
            pick(self.tcp_connections), pick(self.fds), pick(self.threads), pick(self.cpu_wait_s),
            pick(self.counted_at_s),
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

    @property
    def system_cpu_s(self) -> float:
        """Of those, the CPU seconds spent in the kernel (system calls: sockets, epoll; TCP on loopback)."""
        return self.cpu_system_s[-1] - self.cpu_system_s[0] if len(self.t_s) > 1 else 0.0

    @property
    def cpu_wait_share(self) -> float:
        """The share of the time between the first and the last sample it waited for a CPU (NaN: not sampled)."""
        if len(self.cpu_wait_s) < 2 or not self.wall_s:
            return math.nan
        return (self.cpu_wait_s[-1] - self.cpu_wait_s[0]) / self.wall_s


def sum_samples(series: Iterable[Samples]) -> Samples:
    """Add several processes' samples (e.g. a cluster's instances, Redis and HAProxy) into one series.

    The sampler reads every target in the same tick, so the first series' times are used and each other
    series contributes its latest reading at or before that time (a process that exited keeps its last)."""
    series = [s for s in series if s.t_s]
    if not series:
        return Samples((), (), (), (), ())
    base = max(series, key=lambda s: len(s.t_s))
    columns = ("cpu_user_s", "cpu_system_s", "rss_bytes", "tcp_connections", "fds", "threads", "cpu_wait_s")
    totals = {c: [0.0] * len(base.t_s) for c in columns}
    for s in series:
        j = -1
        for i, t in enumerate(base.t_s):
            while j + 1 < len(s.t_s) and s.t_s[j + 1] <= t + 0.1:  # same tick, a few ms apart
                j += 1
            if j < 0:
                continue
            for c in columns:
                values = getattr(s, c)
                if values:
                    totals[c][i] += values[j]
    if not all(s.cpu_wait_s for s in series):  # a process sampled without it: no total either
        totals["cpu_wait_s"] = []
    counted_at = tuple(_oldest_count(series, t) for t in base.t_s) if all(s.counted_at_s for s in series) else ()
    return Samples(base.t_s, *(tuple(totals[c]) for c in columns), counted_at_s=counted_at)


def _oldest_count(series: list[Samples], t: float) -> float:
    """When the oldest of the counts that a total at `t` adds up was taken (NaN if one was not counted yet)."""
    taken = [s.counted_at_s[j] for s in series if (j := bisect.bisect_right(s.t_s, t + 0.1) - 1) >= 0]
    return math.nan if not taken or any(math.isnan(at) for at in taken) else min(taken)


# Rows of the sampler's CSV that are not the server under test (a cluster's server is every other label).
GENERATOR_LABEL = "generator"
SAMPLER_LABEL = "sampler"
CAPTURE_LABEL = "capture"  # the packet capture (experiments/capture.py), an observer like the sampler
# The TLS proxy before one server in an HTTP arm ([network] http): sampled apart, its cost the price of TLS and h2.
# (A cluster's HAProxy, label "haproxy", is part of the cluster's serving cost.)
PROXY_LABEL = "proxy"
NOT_SERVER = (GENERATOR_LABEL, SAMPLER_LABEL, CAPTURE_LABEL, PROXY_LABEL)


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
    payload_sent_bytes: float | None = None  # the delivered messages' JSON, counted by the server; None: not counted
    # What the clients measured (clients/results.py): deliveries after the warm-up, completeness over the run.
    latency_us: HdrHistogram | None = None
    completeness: Mapping[str, float] | None = None  # received, lost, duplicates, out_of_order
    measured_s: float | None = None  # the clients' measured time: duration_s - warmup_s
    members: int | None = None  # chat members at full load (the profile's users)
    idle_rss_bytes: float | None = None  # the server's RSS at its first sample, before any member joined
    generator_processes: int = 1
    transport: str | None = None
    knobs: Mapping[str, object] | None = None  # the point's profile knobs (servers.registry): e.g. the poll interval
    # One chat message's own bytes (MessageSizes.typical): its JSON as the server sends it and as a client sends it.
    message_json_bytes: float | None = None
    send_json_bytes: float | None = None
    sampler: Samples | None = None  # the resource sampler's own rows (the observer's cost); None: not sampled
    proxy: Samples | None = None  # the HTTP arm's proxy (PROXY_LABEL); None: the members talked to the server
    offered_per_s: float | None = None  # deliveries per second the profile asks for (Profile.offered_deliveries_per_s)
    offered_sends_per_s: float | None = None  # sends per second it asks for: users x messages_per_second
    server_cpus: int = 1  # the CPUs the server was pinned to: its CPU share is of these
    # The server's full garbage collections in the window (rtlab_gc_pause_seconds, generation 2): how many, and how
    # long they stopped it in all; None where the pages predate the metric.
    gc_full_pauses: float | None = None
    gc_full_pause_s: float | None = None
    # The packet capture's counts over the window on the members' port (experiments/capture.py: to_server and
    # from_server, each packets, ip_bytes, payload_bytes; dropped); None: not captured. With one, the wire bytes
    # above are its TCP payload, and meter_wire_bytes the server's own meter's (both ways; NaN: it has none).
    capture: Mapping[str, object] | None = None
    meter_wire_bytes: float | None = None
    # How the clients' measured window opened (completeness.json's "window": opened_by, members, joined,
    # members_joined_late, measured_s); None for runs from before the join barrier.
    window: Mapping[str, object] | None = None
    send_lag_p99_ms: float | None = None  # the measured sends' p99 lag behind their schedule (generator.json)
    # The measured deliveries by interval (clients.results.read_intervals: seconds from the window's opening, µs
    # histogram); None where the run did not record them.
    latency_intervals: tuple[tuple[float, HdrHistogram], ...] | None = None
    # The asyncio tasks the server held when the window opened and when it closed (rtlab_asyncio_tasks, summed over
    # instances); None where the pages predate the gauge.
    tasks_start: float | None = None
    tasks_end: float | None = None
    # The server's cgroup (experiments/cgroup.py), where it ran in one: its CPU limit in CPUs (None: no limit) and
    # what the group's counters did over the window (cgroup.CpuStat.minus: usage_usec, nr_periods, nr_throttled,
    # throttled_usec, wall_s); None: not in a cgroup.
    cpu_limit: float | None = None
    cgroup: Mapping[str, float | None] | None = None

    @classmethod
    def from_scrapes(
        cls,
        before: str | Mapping[str, str],
        after: str | Mapping[str, str],
        server: Samples,
        generator: Samples | None = None,
        messages_sent: float | None = None,
        transport: str | None = None,
        cpus: int | None = None,
        ip_bytes: float | None = None,
        **client_side: object,
    ) -> RunData:
        """Build from two /metrics pages that bound the window; `transport` picks one label (default: all).

        Several instances: give {instance: page} for both; the deltas of the instances scraped at both ends
        are summed (an instance killed mid-window has no end page and is left out)."""
        if isinstance(before, str) or isinstance(after, str):
            before, after = {"": before}, {"": after}
        both = [name for name in before if name in after]
        pages = [(parse_metrics(before[name]), parse_metrics(after[name])) for name in both]
        labels = {"transport": transport} if transport else {}

        def delta(name: str) -> float:
            return sum(metric_total(end, name, **labels) - metric_total(start, name, **labels) for start, end in pages)

        # A counter added later than some runs: absent from their pages, and then not zero but unknown.
        payload_counted = any(key[0] == "rtlab_message_payload_sent_bytes_total" for _, end in pages for key in end)
        # A server with no byte meter (a peer on uvicorn, daphne, websockets): unknown, not zero (a capture says).
        wire_counted = any(key[0] == "rtlab_wire_sent_bytes_total" for _, end in pages for key in end)
        gc_counted = any(key[0] == "rtlab_gc_pause_seconds_count" for _, end in pages for key in end)

        tasks_counted = any(key[0] == "rtlab_asyncio_tasks" for _, end in pages for key in end)

        def tasks(at: int) -> float | None:  # at: 0, the window's opening; 1, its end
            return sum(metric_total(page[at], "rtlab_asyncio_tasks") for page in pages) if tasks_counted else None

        def gc_delta(name: str) -> float | None:  # process-wide: one collector per server process, whatever it serves
            if not gc_counted:
                return None
            return sum(metric_total(end, name, generation="2") - metric_total(start, name, generation="2")
                       for start, end in pages)

        return cls(
            wire_received_bytes=delta("rtlab_wire_received_bytes_total") if wire_counted else math.nan,
            wire_sent_bytes=delta("rtlab_wire_sent_bytes_total") if wire_counted else math.nan,
            messages_accepted=delta("rtlab_messages_accepted_total"),
            messages_delivered=delta("rtlab_messages_delivered_total"),
            polls=delta("rtlab_polls_total"),
            empty_polls=delta("rtlab_empty_polls_total"),
            server=server,
            generator=generator,
            messages_sent=messages_sent,
            cpus=cpus or os.cpu_count() or 1,
            ip_bytes=ip_bytes,
            payload_sent_bytes=delta("rtlab_message_payload_sent_bytes_total") if payload_counted else None,
            transport=transport,
            gc_full_pauses=gc_delta("rtlab_gc_pause_seconds_count"),
            gc_full_pause_s=gc_delta("rtlab_gc_pause_seconds_sum"),
            tasks_start=tasks(0),
            tasks_end=tasks(1),
            **client_side,
        )

    @property
    def sent(self) -> float:
        return self.messages_accepted if self.messages_sent is None else self.messages_sent

    def with_capture(self, window: Mapping[str, object] | None) -> RunData:
        """This window with the capture's counts as its wire bytes (the meter's kept as meter_wire_bytes)."""
        if window is None:
            return self
        to_server, from_server = window["to_server"], window["from_server"]
        return dataclasses.replace(
            self, capture=window, meter_wire_bytes=self.wire_received_bytes + self.wire_sent_bytes,
            wire_received_bytes=float(to_server["payload_bytes"]), wire_sent_bytes=float(from_server["payload_bytes"]),
            ip_bytes=float(to_server["ip_bytes"] + from_server["ip_bytes"]),
        )

    @property
    def cpu_allowance(self) -> float:
        """The CPUs the server may use: those it is pinned to, or its cgroup's CPU limit when that is less."""
        return min(self.cpu_limit, self.server_cpus) if self.cpu_limit else self.server_cpus


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


GENERATOR_SATURATED = 0.9  # of one core
# The server's limits (figures.capacity): each transport is held to its own.
SERVER_CPU_LIMIT = 0.9  # of the CPUs it is pinned to
DELIVERED_LIMIT = 0.99  # delivered / offered below this: the senders fell behind or messages queued up
CAPACITY_P99_MARGIN_MS = 250.0  # p99 this far above the transport's own p99 at the lightest load swept


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


# Payload against overhead: the message's own JSON is the payload; everything else on the wire (HTTP heads,
# WebSocket framing and envelopes, empty polls, handshakes, pings) is overhead.


@_figure("B/msg", "Payload bytes the server sent per delivered message: the message's own JSON (id, room, user, "
         "text, sent_at, ts), counted by the server (rtlab_message_payload_sent_bytes); for runs from before that "
         "counter, estimated from the profile to within a few bytes.")
def payload_bytes_out_per_delivered_message(run: RunData) -> float:
    if run.payload_sent_bytes is not None:
        return _ratio(run.payload_sent_bytes, run.messages_delivered)
    if run.message_json_bytes is None or not run.messages_delivered:
        return math.nan
    return run.message_json_bytes


@_figure("B/msg", "Bytes the server sent per delivered message beyond the message's JSON: HTTP response heads, "
         "WebSocket frame headers and envelopes, empty poll answers, handshakes, pings.")
def overhead_bytes_out_per_delivered_message(run: RunData) -> float:
    return bytes_out_per_delivered_message(run) - payload_bytes_out_per_delivered_message(run)


@_figure("B/msg", "Payload bytes the server received per delivered message: each accepted message's JSON as a "
         "client sends it (user, text, sent_at), estimated from the profile, shared by its deliveries.")
def payload_bytes_in_per_delivered_message(run: RunData) -> float:
    if run.send_json_bytes is None:
        return math.nan
    return _ratio(run.send_json_bytes * run.messages_accepted, run.messages_delivered)


@_figure("B/msg", "Bytes the server received per delivered message beyond the senders' message JSON: HTTP request "
         "heads, poll requests, WebSocket frame headers and envelopes, handshakes.")
def overhead_bytes_in_per_delivered_message(run: RunData) -> float:
    return bytes_in_per_delivered_message(run) - payload_bytes_in_per_delivered_message(run)


@_figure("B/msg", "IP packet bytes both ways (TCP/IP headers, handshakes and ACKs included), per message delivered.")
def ip_bytes_per_delivered_message(run: RunData) -> float:
    return math.nan if run.ip_bytes is None else _ratio(run.ip_bytes, run.messages_delivered)


def _captured(run: RunData, direction: str, name: str) -> float:
    return math.nan if run.capture is None else float(run.capture[direction][name])


@_figure("B", "TCP payload bytes to the members' port over the window, counted by the packet capture "
              "(experiments/capture.py); NaN when the run was not captured.")
def tcp_payload_in_bytes(run: RunData) -> float:
    return _captured(run, "to_server", "payload_bytes")


@_figure("B", "TCP payload bytes from the members' port over the window, counted by the packet capture.")
def tcp_payload_out_bytes(run: RunData) -> float:
    return _captured(run, "from_server", "payload_bytes")


@_figure("pkt/msg", "IP packets both ways on the members' port (bare ACKs and handshakes included), counted by the "
                    "packet capture, per message delivered.")
def tcp_packets_per_delivered_message(run: RunData) -> float:
    return _ratio(_captured(run, "to_server", "packets") + _captured(run, "from_server", "packets"),
                  run.messages_delivered)


@_figure("pkt", "Packets the kernel dropped because the capture fell behind (over the whole point): above 0, the "
                "capture's counts are low.")
def tcp_dropped_packets(run: RunData) -> float:
    return math.nan if run.capture is None else float(run.capture["dropped"])


@_figure("ratio", "The server's own meter's TCP payload bytes (both ways, /metrics) over the capture's, in the "
                  "same window: about 1.0 where both count (edges a few ms apart), NaN for a server without a meter.")
def meter_over_capture_bytes(run: RunData) -> float:
    if run.capture is None or run.meter_wire_bytes is None:
        return math.nan
    return _ratio(run.meter_wire_bytes, run.wire_received_bytes + run.wire_sent_bytes)


@_figure("us/msg", "Server CPU time (user + system), in microseconds, per message delivered to a client.")
def server_cpu_us_per_delivered_message(run: RunData) -> float:
    return _ratio(run.server.cpu_s * 1e6, run.messages_delivered)


@_figure("us/msg", "Load generator CPU time (user + system, its worker processes included), in microseconds, per "
                   "message the server delivered: what the load costs beside what it measures.")
def generator_cpu_us_per_delivered_message(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(run.generator.cpu_s * 1e6, run.messages_delivered)


@_figure("us/msg", "The TLS proxy's CPU time (user + system) before the server, in microseconds, per message delivered "
                   "(an HTTP arm: [network] http): the price of TLS, and of HTTP/2 to HTTP/1.1, apart from the server's.")
def proxy_cpu_us_per_delivered_message(run: RunData) -> float:
    if run.proxy is None:
        return math.nan
    return _ratio(run.proxy.cpu_s * 1e6, run.messages_delivered)


@_figure("B/msg", "TCP payload bytes both ways the server's own meter counted, per message delivered: in a captured run "
                  "through a proxy, the HTTP/1.1 between proxy and server, beside the member's bytes (the capture's).")
def meter_bytes_per_delivered_message(run: RunData) -> float:
    if run.meter_wire_bytes is None:
        return math.nan
    return _ratio(run.meter_wire_bytes, run.messages_delivered)


@_figure("us/msg", "Of the server's CPU per message delivered, the kernel's (system time): its sockets' system calls, "
                   "and on loopback the TCP work of delivering into the receiver's socket.")
def server_system_cpu_us_per_delivered_message(run: RunData) -> float:
    return _ratio(run.server.system_cpu_s * 1e6, run.messages_delivered)


@_figure("us/msg", "Of the load generator's CPU per message the server delivered, the kernel's (system time): one "
                   "read of a socket or more per delivery, and the TCP work of its own sends.")
def generator_system_cpu_us_per_delivered_message(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(run.generator.system_cpu_s * 1e6, run.messages_delivered)


@_figure("us/member/s", "Server CPU time (user + system), in microseconds, per connected member per second of the "
                        "window: the cost of holding a member, talking or not (cf. experiments/idle.toml).")
def server_cpu_us_per_member_s(run: RunData) -> float:
    return _ratio(run.server.cpu_s * 1e6, (run.members or 0) * run.server.wall_s)


@_figure("B/member/s", "TCP payload bytes both ways per connected member per second of the window: polls, "
                       "heartbeats and messages alike.")
def bytes_per_member_s(run: RunData) -> float:
    return _ratio(run.wire_received_bytes + run.wire_sent_bytes, (run.members or 0) * run.server.wall_s)


@_figure("ratio", "The resource sampler's own CPU as a share of one core over the window: the observer's cost, "
                  "spent on the generator's CPUs, never the server's.")
def sampler_cpu_share(run: RunData) -> float:
    if run.sampler is None:
        return math.nan
    return _ratio(run.sampler.cpu_s, run.sampler.wall_s)


@_figure("count", "Full garbage collections (generation 2) in the server's processes over the window: each walks "
                  "every tracked object and stops the event loop while it does.")
def server_gc_full_pauses(run: RunData) -> float:
    return math.nan if run.gc_full_pauses is None else run.gc_full_pauses


@_figure("s", "Time the server's full garbage collections stopped it over the window, in all.")
def server_gc_full_pause_s(run: RunData) -> float:
    return math.nan if run.gc_full_pause_s is None else run.gc_full_pause_s


@_figure("B", "Largest server resident set size sampled in the window.")
def server_peak_rss_bytes(run: RunData) -> float:
    return max(run.server.rss_bytes, default=math.nan)


@_figure("B", "Mean of the server resident set sizes sampled in the window (samples are evenly spaced).")
def server_mean_rss_bytes(run: RunData) -> float:
    return _ratio(sum(run.server.rss_bytes), len(run.server.rss_bytes))


@_figure("B/member", "Mean server RSS over the window less the idle server's (its first sample, before any member "
                     "joined), divided by the chat members connected (the profile's users): what one member costs.")
def server_rss_per_member_bytes(run: RunData) -> float:
    if run.idle_rss_bytes is None:
        return math.nan
    return _ratio(server_mean_rss_bytes(run) - run.idle_rss_bytes, run.members or 0)


@_figure("B/conn", "Server RSS per TCP connection: least-squares slope of RSS against open connections.")
def rss_per_connection_bytes(run: RunData) -> float:
    return slope(run.server.tcp_connections, run.server.rss_bytes)


@_figure("ratio", "Share of poll responses that carried no message.")
def empty_poll_ratio(run: RunData) -> float:
    return _ratio(run.empty_polls, run.polls)


@_figure("ratio", "Server CPU time as a share of what it may use over the window: the CPUs it was pinned to, or its "
                  "cgroup's CPU limit when less (0.25: a quarter of one CPU). 1.0 is a server at its limit.")
def server_cpu_share(run: RunData) -> float:
    return _ratio(run.server.cpu_s, run.server.wall_s * run.cpu_allowance)


# The server's cgroup, counted by the kernel (cpu.stat; v1: cpuacct.usage): NaN where it ran in none.


def _cgroup(run: RunData, key: str) -> float:
    value = None if run.cgroup is None else run.cgroup.get(key)
    return math.nan if value is None else float(value)


@_figure("ratio", "The server's cgroup's CPU time (every process and thread in it, counted by the kernel) as a share "
                  "of what it may use over the window, as server_cpu_share: 1.0 is a group at its limit.")
def cgroup_cpu_share(run: RunData) -> float:
    return _ratio(_cgroup(run, "usage_usec") / 1e6, _cgroup(run, "wall_s") * run.cpu_allowance)


@_figure("s", "CPU time of the server's cgroup over the window (the group's usage in cpu.stat).")
def cgroup_cpu_s(run: RunData) -> float:
    return _cgroup(run, "usage_usec") / 1e6


@_figure("us/msg", "CPU time of the server's cgroup, in microseconds, per message delivered: as "
                   "server_cpu_us_per_delivered_message, from the kernel's count.")
def cgroup_cpu_us_per_delivered_message(run: RunData) -> float:
    return _ratio(_cgroup(run, "usage_usec"), run.messages_delivered)


@_figure("count", "CFS periods over the window in which the server's cgroup had work (cpu.stat nr_periods).")
def cgroup_periods(run: RunData) -> float:
    return _cgroup(run, "nr_periods")


@_figure("count", "Of those, the periods in which it used up its quota and was throttled (nr_throttled).")
def cgroup_throttled_periods(run: RunData) -> float:
    return _cgroup(run, "nr_throttled")


@_figure("ratio", "Throttled periods / periods: a group at its limit is throttled in most.")
def cgroup_throttled_share(run: RunData) -> float:
    return _ratio(_cgroup(run, "nr_throttled"), _cgroup(run, "nr_periods"))


@_figure("s", "How long the server's cgroup waited throttled over the window, in all (throttled_usec; v1: "
              "throttled_time): each stall is at most period - quota, and adds to the latency of what waits.")
def cgroup_throttled_s(run: RunData) -> float:
    return _cgroup(run, "throttled_usec") / 1e6


@_figure("ratio", "Load generator CPU time as a share of one core per Locust process, over the window (its busiest "
                  "second is generator_cpu_peak).")
def generator_cpu_mean(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(run.generator.cpu_s, run.generator.wall_s * run.generator_processes)


@_figure("ratio", "Load generator CPU time as a share of the machine's CPU capacity (wall time x CPUs).")
def generator_cpu_share(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(run.generator.cpu_s, run.generator.wall_s * run.cpus)


@_figure("ratio", "The share of the window the server waited, ready to run, for a CPU that other processes held "
                  "(its main thread's run-queue delay, /proc/<pid>/schedstat; a cluster's processes summed): near 0 "
                  "on a quiet machine. A large share means the row measured the machine's other load too, its "
                  "latencies and send lag above all.")
def server_cpu_wait_share(run: RunData) -> float:
    return run.server.cpu_wait_share


@_figure("ratio", "The same for the load generator: the share of the window it waited for a CPU that other processes "
                  "held. Sends go out late (send_lag_p99_ms) when it is large, however little CPU the generator used.")
def generator_cpu_wait_share(run: RunData) -> float:
    return math.nan if run.generator is None else run.generator.cpu_wait_share


# What the clients measured: counts, completeness and delivery latency (HDR histogram in µs).


@_figure("msg", "Messages the server accepted in the measured window.")
def messages_sent(run: RunData) -> float:
    return run.sent


@_figure("msg", "Messages members received from other members after the warm-up (the DELIVER count).")
def messages_delivered(run: RunData) -> float:
    return run.latency_us.get_total_count() if run.latency_us is not None else math.nan


@_figure("msg/s", "Deliveries per second of measured time.")
def deliveries_per_second(run: RunData) -> float:
    return _ratio(messages_delivered(run), run.measured_s or 0)


@_figure("msg/s", "Deliveries per second the profile offers: every member's sends times the others in its room.")
def offered_deliveries_per_second(run: RunData) -> float:
    return math.nan if run.offered_per_s is None else run.offered_per_s


@_figure("ratio", "Deliveries per second measured over those the profile offers: under 1 when the senders fell "
                  "behind or messages stayed queued (the server, or the generator, could not keep up).")
def delivered_offered_ratio(run: RunData) -> float:
    return _ratio(deliveries_per_second(run), offered_deliveries_per_second(run))


@_figure("ratio", "How far under 1 delivered/offered may fall by chance alone: three standard deviations of the "
                  "Poisson count of sends in the window (each send's deliveries rise and fall together).")
def delivered_offered_tolerance(run: RunData) -> float:
    if not run.offered_sends_per_s or not run.measured_s:
        return math.nan
    return 3 / math.sqrt(run.offered_sends_per_s * run.measured_s)


def _completeness(run: RunData, key: str) -> float:
    return float(run.completeness[key]) if run.completeness is not None else math.nan


@_figure("msg", "Messages a member never got, summed over members: gaps in its ids, or history truncated.")
def messages_lost(run: RunData) -> float:
    return _completeness(run, "lost")


@_figure("msg", "Messages accepted by the server that a member of the room never got, from the senders' ledger "
         "(sees what ids cannot: with instances that number a room each on their own, as in naive mode).")
def messages_never_arrived(run: RunData) -> float:
    return _completeness(run, "ledger_missing") if run.completeness and "ledger_missing" in run.completeness else math.nan


# Connection set-up: the measured window opens once every member has joined, so a delivery latency is a delivery;
# what joining cost is its own figure.


def _setup_ms(run: RunData, what: str, key: str) -> float:
    stats = (run.completeness or {}).get(what) or {}
    value = stats.get(key) if isinstance(stats, Mapping) else None
    return float(value) if value is not None else math.nan


@_figure("ms", "Median time a member took from its start to being joined: listening in its room (the history read, "
               "the transport's handshake: a WebSocket upgrade, an event stream's head, WebRTC's ICE, DTLS and SCTP).")
def join_p50_ms(run: RunData) -> float:
    return _setup_ms(run, "join_ms", "p50")


@_figure("ms", "99th percentile time a member took from its start to being joined.")
def join_p99_ms(run: RunData) -> float:
    return _setup_ms(run, "join_ms", "p99")


@_figure("ms", "Median time a member took from its start to its first message: joining, then waiting for the "
               "room's next message.")
def first_message_p50_ms(run: RunData) -> float:
    return _setup_ms(run, "first_message_ms", "p50")


@_figure("ms", "99th percentile time a member took from its start to its first message.")
def first_message_p99_ms(run: RunData) -> float:
    return _setup_ms(run, "first_message_ms", "p99")


@_figure("count", "Members still connecting when the measured window opened at the join deadline (the row is "
                  "flagged: some of its latencies may be a connection's set-up); 0 when every member had joined.")
def members_joined_late(run: RunData) -> float:
    late = (run.window or {}).get("members_joined_late")
    return float(late) if late is not None else math.nan


@_figure("ms", "99th percentile of how late the measured sends went out behind their schedule (the generator's "
               "lateness; a latency is measured from the schedule, so it includes this).")
def send_lag_p99_ms(run: RunData) -> float:
    return math.nan if run.send_lag_p99_ms is None else run.send_lag_p99_ms


@_figure("bool", f"1 when the measured sends' p99 lag behind schedule exceeded {SEND_LAG_LIMIT_MS:g} ms: latencies "
         "then include the generator's lateness (flagged like a saturated generator).")
def sends_behind_schedule(run: RunData) -> float:
    lag = send_lag_p99_ms(run)
    return math.nan if math.isnan(lag) else float(lag > SEND_LAG_LIMIT_MS)


# An hour under load (experiments/soak.toml): what a leak would move over a long window.
SOAK_SPAN_S = 300  # latency is judged per five minutes of the window


@_figure("kB/min", "Least-squares slope of the server's resident memory over the measured window, in kilobytes per "
                   "minute: about 0 for a server that holds what it needs and frees the rest.")
def rss_slope_kb_per_min(run: RunData) -> float:
    return slope(run.server.t_s, run.server.rss_bytes) * 60 / 1000


# The sampler counts descriptors about once a second (experiments/sampler.py, DEFAULT_CONN_HZ; less often on a busy
# machine, its cost budgeted) and repeats the last count in between. Runs from before it recorded when each count was
# taken: a count this far into the window was taken inside it.
FDS_COUNT_PERIOD_S = 1.0


@_figure("count", "Open file descriptors of the server when the measured window opened: its first count taken inside "
                  "the window (the sampler counts them about once a second, less often on a busy machine).")
def server_fds_start(run: RunData) -> float:
    t, fds, counted_at = run.server.t_s, run.server.fds, run.server.counted_at_s
    if not fds:
        return math.nan
    if counted_at:
        return next((n for at, n in zip(counted_at, fds) if at >= t[0]), math.nan)
    return next((n for at, n in zip(t, fds) if at >= t[0] + FDS_COUNT_PERIOD_S), fds[-1])


@_figure("count", "Open file descriptors of the server when the measured window closed (its last sample).")
def server_fds_end(run: RunData) -> float:
    return run.server.fds[-1] if run.server.fds else math.nan


@_figure("count", "Tasks the server's event loop held when the measured window opened (rtlab_asyncio_tasks).")
def server_tasks_start(run: RunData) -> float:
    return math.nan if run.tasks_start is None else run.tasks_start


@_figure("count", "Tasks the server's event loop held when the measured window closed.")
def server_tasks_end(run: RunData) -> float:
    return math.nan if run.tasks_end is None else run.tasks_end


def latency_by_span(run: RunData, span_s: float = SOAK_SPAN_S) -> list[dict[str, float]]:
    """The measured deliveries per `span_s` of the window (its intervals added up): start_s (from the window's
    opening), deliveries, p50_ms, p99_ms and max_ms, oldest first; [] where the run recorded no intervals."""
    spans: dict[int, HdrHistogram] = {}
    # The clients' last interval can start as the window closes (a 1 799.5 s window, an interval at 1 800 s with a
    # delivery or two): a span of a few seconds at most counts in the one before it, not as "the last five minutes".
    last = max(0, math.ceil(run.measured_s / span_s - 0.05) - 1) if run.measured_s else None
    for start_s, histogram in run.latency_intervals or ():
        index = int(start_s // span_s) if last is None else min(int(start_s // span_s), last)
        if index not in spans:
            spans[index] = HdrHistogram(histogram.lowest_trackable_value, histogram.highest_trackable_value,
                                        histogram.significant_figures)
        spans[index].add(histogram)
    return [{"start_s": index * span_s, "deliveries": h.get_total_count(),
             "p50_ms": h.get_value_at_percentile(50) / 1000, "p99_ms": h.get_value_at_percentile(99) / 1000,
             "max_ms": h.get_max_value() / 1000} for index, h in sorted(spans.items()) if h.get_total_count()]


def _span_p99(run: RunData, pick: Callable[[list[float]], float]) -> float:
    p99s = [span["p99_ms"] for span in latency_by_span(run)]
    return pick(p99s) if p99s else math.nan


@_figure("ms", "p99 delivery latency over the first five minutes of the measured window (the whole window if shorter).")
def latency_p99_first_5min_ms(run: RunData) -> float:
    return _span_p99(run, lambda p99s: p99s[0])


@_figure("ms", "p99 delivery latency over the last five minutes of the measured window (those from its start that "
               "began last): beside the first five minutes', a latency that drifts up over a long run shows.")
def latency_p99_last_5min_ms(run: RunData) -> float:
    return _span_p99(run, lambda p99s: p99s[-1])


@_figure("ms", "The highest p99 delivery latency of any five minutes of the measured window.")
def latency_p99_worst_5min_ms(run: RunData) -> float:
    return _span_p99(run, max)


@_figure("count", "Times members reconnected (after a drain, a killed instance, a server close).")
def reconnects(run: RunData) -> float:
    return _completeness(run, "reconnects") if run.completeness and "reconnects" in run.completeness else math.nan


@_figure("ms", "Median time from a disconnect to the first successful read after it.")
def reconnect_p50_ms(run: RunData) -> float:
    return _reconnect_ms(run, "p50")


@_figure("ms", "99th percentile time from a disconnect to the first successful read after it.")
def reconnect_p99_ms(run: RunData) -> float:
    return _reconnect_ms(run, "p99")


def _reconnect_ms(run: RunData, key: str) -> float:
    stats = (run.completeness or {}).get("reconnect_ms") or {}
    value = stats.get(key) if isinstance(stats, Mapping) else None
    return float(value) if value is not None else math.nan


@_figure("msg", "Messages a member got more than once, summed over members.")
def messages_duplicated(run: RunData) -> float:
    return _completeness(run, "duplicates")


@_figure("msg", "Messages a member got after a newer one, summed over members.")
def messages_out_of_order(run: RunData) -> float:
    return _completeness(run, "out_of_order")


@_figure("ratio", "Share of the messages members should have got that they did: received / (received + lost).")
def delivered_ratio(run: RunData) -> float:
    received = _completeness(run, "received")
    return _ratio(received, received + _completeness(run, "lost"))


def _latency_ms(run: RunData, percentile: float) -> float:
    if run.latency_us is None or not run.latency_us.get_total_count():
        return math.nan
    return run.latency_us.get_value_at_percentile(percentile) / 1000


@_figure("ms", "Median delivery latency: receive time minus the sender's scheduled send time.")
def latency_p50_ms(run: RunData) -> float:
    return _latency_ms(run, 50)


@_figure("ms", "95th percentile delivery latency.")
def latency_p95_ms(run: RunData) -> float:
    return _latency_ms(run, 95)


@_figure("ms", "99th percentile delivery latency.")
def latency_p99_ms(run: RunData) -> float:
    return _latency_ms(run, 99)


@_figure("ms", "Largest delivery latency.")
def latency_max_ms(run: RunData) -> float:
    return _latency_ms(run, 100)


@_figure("ms", "Mean delivery latency (compare with the transport's theory, where it has one: short polling's T/2).")
def latency_mean_ms(run: RunData) -> float:
    if run.latency_us is None or not run.latency_us.get_total_count():
        return math.nan
    return run.latency_us.get_mean_value() / 1000


@_figure("ms", "The transport's expected mean delivery latency from theory, where its registry entry gives one "
               "(short polling: half the poll interval T); NaN for the others.")
def theory_latency_ms(run: RunData) -> float:
    if run.transport is None or run.knobs is None:
        return math.nan
    try:
        theory = registry.get(run.transport).theory_latency_ms
    except registry.UnknownTransport:  # a run of a transport this checkout does not have
        return math.nan
    return math.nan if theory is None else theory(run.knobs)


@_figure("B", "TCP payload bytes the server received in the measured window.")
def wire_bytes_in(run: RunData) -> float:
    return run.wire_received_bytes


@_figure("B", "TCP payload bytes the server sent in the measured window.")
def wire_bytes_out(run: RunData) -> float:
    return run.wire_sent_bytes


@_figure("ratio", "Busiest second of the load generator, as a share of one core per Locust process.")
def generator_cpu_peak(run: RunData) -> float:
    if run.generator is None:
        return math.nan
    return _ratio(peak_cpu_rate(run.generator), run.generator_processes)


@_figure("bool", f"1 when the generator's busiest second exceeded {GENERATOR_SATURATED:.0%} of a core: its latencies "
         "then measure the generator, not the server.")
def generator_saturated(run: RunData) -> float:
    peak = generator_cpu_peak(run)
    return math.nan if math.isnan(peak) else float(peak > GENERATOR_SATURATED)


def cpu_rates(samples: Samples, span_s: float = 1.0) -> list[tuple[float, float]]:
    """Return (t_s, CPU seconds per second) from each sample over the next `span_s` or more, oldest first.

    Over a whole span rather than between neighbouring samples: CPU is counted in 10 ms ticks, so a 0.2 s
    gap reads 0 % or 5 % of a core for the same load.
    """
    t, cpu = samples.t_s, [u + s for u, s in zip(samples.cpu_user_s, samples.cpu_system_s, strict=True)]
    out, j = [], 0
    for i in range(len(t)):
        while j < len(t) and t[j] - t[i] < span_s:
            j += 1
        if j == len(t):
            break
        out.append((t[i], (cpu[j] - cpu[i]) / (t[j] - t[i])))
    return out


def peak_cpu_rate(samples: Samples, span_s: float = 1.0) -> float:
    """Return the highest CPU rate (CPU seconds per second) over any `span_s` between samples."""
    return max((rate for _, rate in cpu_rates(samples, span_s)), default=math.nan)


@dataclass(frozen=True)
class Capacity:
    """One transport's capacity over a sweep of `load_key`: the most load it carried within its limits."""

    transport: str
    load_key: str  # "users" or "messages_per_second": what the sweep grew
    load: float  # the highest load it carried within its limits (NaN: not even the lightest)
    delivered_per_s: float  # its deliveries per second there
    bound: str  # "server": the next point hit the server's limit; "generator": the generator saturated first;
    #             "sweep": the sweep ended before any limit
    reason: str  # what ended it, in words
    p99_limit_ms: float  # the p99 this transport was held to: its own lightest-load p99 plus the margin
    cpu_limit: float | None = None  # the server's CPU limit over the sweep (CPUs); None: its pinned CPUs, no cgroup
    # The generator's busiest second (share of its core) at the point that ended the walk: how near its own limit the
    # load was when the server reached its; NaN when the sweep ended first.
    generator_peak: float = math.nan
    # Whether the offered deliveries grow in proportion to the load (rooms of a fixed size, or the message rate), so
    # that the load, not only the deliveries, scales with the CPU; not in one growing room (deliveries ~ members²).
    proportional: bool = True
    # Where the walk ended on the server's CPU: the two measured points that bracket SERVER_CPU_LIMIT (the capacity,
    # `load`, at `cpu_percent` of what it may use, and the next load, `over`, at `cpu_percent_over`), and the load at
    # which the server's CPU crosses it, interpolated between them (`crossing`; NaN where the walk ended otherwise).
    over: float = math.nan
    cpu_percent: float = math.nan
    cpu_percent_over: float = math.nan
    crossing: float = math.nan
    crossing_delivered_per_s: float = math.nan

    @property
    def lower_bound(self) -> bool:
        """Whether the capacity is only "at least": the generator or the sweep ran out before the server."""
        return self.bound != "server"

    @property
    def estimate(self) -> float:
        """The load the server carries at SERVER_CPU_LIMIT of what it may use: the interpolated crossing where the
        walk ended on its CPU, else the last load within the limits (the grid's step is then its resolution)."""
        return self.load if math.isnan(self.crossing) else self.crossing

    @property
    def estimate_delivered_per_s(self) -> float:
        return self.delivered_per_s if math.isnan(self.crossing) else self.crossing_delivered_per_s

    @property
    def load_per_cpu(self) -> float:
        """The capacity per 1.0 CPU: the estimate / the CPU limit (NaN without a limit, or where the load does not
        grow in proportion to the deliveries: one growing room)."""
        return self.estimate / self.cpu_limit if self.cpu_limit and self.proportional else math.nan

    @property
    def delivered_per_s_per_cpu(self) -> float:
        return self.estimate_delivered_per_s / self.cpu_limit if self.cpu_limit else math.nan

    def crossing_text(self, unit: str = "members") -> str:
        """Where the server's CPU crossed its limit, with the two measured points around it ("" where not known)."""
        if math.isnan(self.crossing):
            return ""
        return (f"{SERVER_CPU_LIMIT * 100:.0f} % of the limit at ≈ {_load_text(self.crossing, True)} {unit} (between "
                f"{self.load:,.6g} at {self.cpu_percent:.0f} % and {self.over:,.6g} at {self.cpu_percent_over:.0f} %)")

    def sentence(self, unit: str = "members") -> str:
        at_least = "≥ " if self.lower_bound else ""
        if math.isnan(self.load):
            amount = "under the lightest load swept"
        else:
            amount = f"{at_least}{self.load:,.6g} {unit} ({self.delivered_per_s:,.0f} deliveries/s)"
        if not self.cpu_limit:
            return f"capacity of {self.transport}: {amount}, {self.bound}-bound: {self.reason}"
        about = "≈ " if not math.isnan(self.crossing) else ""
        members = f"{at_least}{about}{_load_text(self.load_per_cpu, bool(about))} {unit} (" if self.proportional else ""
        per_cpu = "" if math.isnan(self.load) else (
            f", per CPU {members}{'' if members else at_least + about}{self.delivered_per_s_per_cpu:,.0f} "
            f"deliveries/s{')' if members else ''}")
        crossing = self.crossing_text(unit)
        amount += f", {crossing}" if crossing else ""
        generator = "" if math.isnan(self.generator_peak) else \
            f"; the generator's busiest second there {self.generator_peak:.0%} of its core"
        return (f"capacity of {self.transport} at a {self.cpu_limit:g}-CPU limit: {amount}{per_cpu}, "
                f"{self.bound}-bound: {self.reason}{generator}")


def _load_text(value: float, estimated: bool) -> str:
    """A load as the sentences write it: a measured one as swept, an interpolated one to three figures."""
    if not estimated:
        return f"{value:,.6g}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _true(value: object) -> bool:
    return str(value) in ("True", "1", "1.0")


def capacity(rows: Iterable[Mapping[str, object]], load_key: str = "users",
             margin_ms: float = CAPACITY_P99_MARGIN_MS) -> dict[str, Capacity]:
    """Each transport's capacity from summary rows of a sweep of `load_key`, lightest load first.

    A point is within the server's limits while its CPU stays under SERVER_CPU_LIMIT of what it may use (its CPU
    limit, or its core: cgroup_cpu_percent in a cgroup, else server_cpu_percent), it delivers at least DELIVERED_LIMIT of what the profile offers (less a
    short window's chance shortfall), nothing is lost, and its p99 stays within `margin_ms` of the transport's own
    p99 at the lightest load (short polling's p99 is about its interval T by design,
    so it is held to T + margin, not to a fixed 250 ms). Walking up the loads, the first point outside them
    ends the walk: the capacity is the load before it, server-bound. A point where the generator saturated
    ends it too, and then the capacity is only a lower bound (generator-bound), never the capacity: its
    latency and delivered share may be the generator's. Its server CPU is not: a server at SERVER_CPU_LIMIT
    is at its limit even if a faster generator would have offered more, so that point is server-bound.
    """
    by_transport: dict[str, list[Mapping[str, object]]] = {}
    for row in rows:
        by_transport.setdefault(str(row["transport"]), []).append(row)
    out = {}
    for transport, points in by_transport.items():
        points = sorted(points, key=lambda r: float(r[load_key]))
        baseline = float(points[0]["latency_p99_ms"])
        p99_limit = baseline + margin_ms
        limit = _number(points[0].get("cpu_limit"))
        limit = limit if limit > 0 else None  # the rows' CPU limit (capacity_by_limit gives one's rows); NaN, 0: none
        of = f"its {limit:g}-CPU limit" if limit else "its core"
        load, rate, bound, reason = math.nan, math.nan, "sweep", "no limit reached within the sweep"
        generator = math.nan
        passed: Mapping[str, object] | None = None  # the last point within the limits
        bracket: dict[str, float] = {}
        offered_per_load = [_number(r.get("offered_per_s")) / float(r[load_key]) for r in points if float(r[load_key])]
        offered_per_load = [v for v in offered_per_load if not math.isnan(v) and v > 0]
        proportional = not offered_per_load or max(offered_per_load) <= 1.1 * min(offered_per_load)
        for row in points:
            at = f"at {float(row[load_key]):,.6g}"
            cpu = _server_cpu(row)  # in a cgroup, the kernel's own count of the group (its quota is enforced on it)
            generator = _number(row.get("generator_cpu_peak"))
            if cpu >= SERVER_CPU_LIMIT * 100:  # at its limit, however little the generator managed to offer
                throttled = _number(row.get("cgroup_throttled_percent"))
                bound, reason = "server", f"server CPU {cpu:.0f} % of {of} {at}" + (
                    "" if math.isnan(throttled) or not limit else f" (throttled in {throttled:.0f} % of periods)")
                if passed is not None:
                    bracket = _crossing(passed, row, load_key)
                break
            if _true(row.get("generator_saturated")):
                bound, reason = "generator", f"the load generator saturated its core {at}"
                break
            problems = []
            ratio = _number(row.get("delivered_offered_ratio"))
            # A short window of Poisson sends misses the offered rate by chance: allow for that, no more.
            if ratio < min(DELIVERED_LIMIT, 1 - (_number(row.get("delivered_offered_tolerance")) or 0)):
                problems.append(f"delivered {ratio:.1%} of the offered")
            if _number(row.get("lost")) > 0:
                problems.append(f"{_number(row.get('lost')):,.0f} lost")
            p99 = float(row["latency_p99_ms"])
            if p99 > p99_limit:
                problems.append(f"p99 {p99:,.0f} ms > {p99_limit:,.0f} ms")
            if problems:
                bound, reason = "server", f"{', '.join(problems)} {at}"
                break
            load, rate = float(row[load_key]), _number(row.get("delivered_per_s"))
            passed = row
        else:
            generator = math.nan
        out[transport] = Capacity(transport, load_key, load, rate, bound, reason, p99_limit, limit, generator,
                                  proportional, **bracket)
    return out


def _server_cpu(row: Mapping[str, object]) -> float:
    """A point's server CPU as a share (%) of what it may use: the cgroup's own count where it ran in one."""
    cpu = _number(row.get("cgroup_cpu_percent"))
    return _number(row.get("server_cpu_percent")) if math.isnan(cpu) else cpu


def _crossing(passed: Mapping[str, object], over: Mapping[str, object], load_key: str) -> dict[str, float]:
    """The load between two neighbouring points of a sweep at which the server's CPU crosses SERVER_CPU_LIMIT, by
    linear interpolation, and the deliveries per second there (the passing point's, grown as the offered load
    grows). The grid's step no longer quantizes the capacity, but where the point over the limit was held at
    its quota its CPU is what the limit allowed, less than the load needed: the crossing is then placed late, at
    most by the step (docs/metrics.md)."""
    x1, x2 = float(passed[load_key]), float(over[load_key])
    c1, c2 = _server_cpu(passed), _server_cpu(over)
    target = SERVER_CPU_LIMIT * 100
    if math.isnan(c1) or not c1 < target <= c2:
        return {}
    share = (target - c1) / (c2 - c1)
    crossing = x1 + share * (x2 - x1)
    rate = _number(passed.get("delivered_per_s"))
    o1, o2 = _number(passed.get("offered_per_s")), _number(over.get("offered_per_s"))
    if o1 > 0 and not math.isnan(o2):
        delivered = rate * (o1 + share * (o2 - o1)) / o1
    else:
        delivered = rate + share * (_number(over.get("delivered_per_s")) - rate)
    return {"over": x2, "cpu_percent": c1, "cpu_percent_over": c2, "crossing": crossing,
            "crossing_delivered_per_s": delivered}


# The checks that make "capacity ÷ limit" honest (docs/metrics.md, "Capacity under a CPU limit"): the capacity must
# scale with the limit, and the limit must make the server's work per delivery neither cheaper nor dearer.
LIMIT_SCALING_TOLERANCE = 0.15
LIMIT_COST_TOLERANCE = 0.10
# The server's CPU per delivered message that the second check compares: the cgroup's own count where both points
# have it, else the sampler's.
COST_COLUMNS = ("cgroup_cpu_us_per_delivered", "server_cpu_us_per_delivered")


def capacity_by_limit(rows: Iterable[Mapping[str, object]], load_key: str = "users",
                      margin_ms: float = CAPACITY_P99_MARGIN_MS) -> dict[float | None, dict[str, Capacity]]:
    """figures.capacity over each CPU limit's rows on their own, lowest limit first ({None: ...} for a run without
    limits). The light load's runs without a limit (cpu_limit 0) are the second check's, no capacity's."""
    by_limit: dict[float | None, list[Mapping[str, object]]] = {}
    for row in rows:
        limit = _number(row.get("cpu_limit"))
        if limit == 0:
            continue
        by_limit.setdefault(None if math.isnan(limit) else limit, []).append(row)
    return {limit: capacity(by_limit[limit], load_key, margin_ms)
            for limit in sorted(by_limit, key=lambda v: -1 if v is None else v)}


@dataclass(frozen=True)
class LimitScaling:
    """The first check: one transport's capacities at its lowest and highest CPU limits, whose ratio should be the
    limits' ratio (capacity per CPU the same at both)."""

    transport: str
    low: Capacity
    high: Capacity
    tolerance: float = LIMIT_SCALING_TOLERANCE

    @property
    def ratio(self) -> float:
        """(capacity at the higher limit / at the lower) / (higher limit / lower): 1.0 when it scales exactly. The
        capacity in deliveries per second, which grow with the CPU whatever the sweep (members do only in rooms of a
        fixed size)."""
        return _ratio(_ratio(self.high.estimate_delivered_per_s, self.low.estimate_delivered_per_s),
                      _ratio(self.high.cpu_limit, self.low.cpu_limit))

    @property
    def problem(self) -> str:
        """Why the row is flagged ("" when it passes)."""
        for found in (self.low, self.high):
            if found.lower_bound or math.isnan(found.load):
                what = "none" if math.isnan(found.load) else f"only ≥ ({found.bound}-bound)"
                return f"not checked: its capacity at {found.cpu_limit:g} CPU is {what}"
        if abs(self.ratio - 1) > self.tolerance:
            return f"capacity ratio / limit ratio {self.ratio:.2f}, outside 1 ± {self.tolerance:.0%}"
        return ""


def limit_scaling(by_limit: Mapping[float | None, Mapping[str, Capacity]],
                  tolerance: float = LIMIT_SCALING_TOLERANCE) -> list[LimitScaling]:
    """The first check for every transport measured at two limits or more (the lowest against the highest)."""
    limits = sorted(limit for limit in by_limit if limit)
    if len(limits) < 2:
        return []
    low, high = by_limit[limits[0]], by_limit[limits[-1]]
    return [LimitScaling(t, low[t], high[t], tolerance) for t in low if t in high]


@dataclass(frozen=True)
class LimitCost:
    """The second check: one transport's server CPU per delivered message at the light load under a limit, against
    the same load without one."""

    transport: str
    cpu_limit: float
    load: float
    limited_us: float
    unlimited_us: float
    limited_cpu_percent: float  # the limited server's CPU there, as a share of its limit: the load must be below it
    tolerance: float = LIMIT_COST_TOLERANCE

    @property
    def ratio(self) -> float:
        return _ratio(self.limited_us, self.unlimited_us)

    @property
    def problem(self) -> str:
        if math.isnan(self.ratio):
            return "not checked: no CPU per delivered message at both points"
        if self.limited_cpu_percent >= SERVER_CPU_LIMIT * 100:
            return f"not checked: the light load is not below the {self.cpu_limit:g}-CPU limit " \
                   f"({self.limited_cpu_percent:.0f} % of it)"
        if abs(self.ratio - 1) > self.tolerance:
            return f"CPU per delivery with / without the limit {self.ratio:.2f}, outside 1 ± {self.tolerance:.0%}"
        return ""


def limit_cost(rows: Iterable[Mapping[str, object]], load_key: str, light_load: float,
               tolerance: float = LIMIT_COST_TOLERANCE) -> list[LimitCost]:
    """The second check for every transport and limit measured at `light_load` beside a run there without a limit
    (cpu_limit 0): the same repeat, CPU per delivered message from COST_COLUMNS."""
    at_light = [row for row in rows if _number(row.get(load_key)) == float(light_load)]
    free = {(str(r["transport"]), str(r.get("repeat"))): r for r in at_light if _number(r.get("cpu_limit")) == 0}
    out = []
    for row in at_light:
        limit = _number(row.get("cpu_limit"))
        other = free.get((str(row["transport"]), str(row.get("repeat"))))
        if not limit or math.isnan(limit) or other is None:
            continue
        column = next((c for c in COST_COLUMNS if not math.isnan(_number(row.get(c)))
                       and not math.isnan(_number(other.get(c)))), COST_COLUMNS[-1])
        out.append(LimitCost(str(row["transport"]), limit, float(light_load), _number(row.get(column)),
                             _number(other.get(column)), _number(row.get("server_cpu_percent")), tolerance))
    return out


CAPACITY_COLUMNS = ("transport", "cpu_limit", "load_key", "capacity", "delivered_per_s", "bound", "reason",
                    "cpu_percent", "over", "cpu_percent_over", "crossing", "crossing_delivered_per_s",
                    "capacity_per_cpu", "delivered_per_s_per_cpu", "generator_peak", "scaling_ratio",
                    "light_cost_ratio", "flag")


def capacity_table(rows: Iterable[Mapping[str, object]], load_key: str,
                   light_load: float | None = None) -> list[dict[str, object]]:
    """One row per transport and CPU limit: its capacity, per CPU, and both checks' ratios, with `flag` saying why a
    check failed or could not be made ("" when both passed). What capacity.csv holds and the terminal prints."""
    rows = list(rows)
    by_limit = capacity_by_limit(rows, load_key)
    scaling = {check.transport: check for check in limit_scaling(by_limit)}
    costs = {(c.transport, c.cpu_limit): c for c in limit_cost(rows, load_key, light_load)} \
        if light_load is not None else {}
    out = []
    for limit, found in by_limit.items():
        for transport, c in found.items():
            check, cost = scaling.get(transport), costs.get((transport, limit))
            problems = [p for p in (check.problem if check else "", cost.problem if cost else "") if p]
            if limit and len(by_limit) > 1 and check is None:
                problems.append("not checked: not measured at another limit")
            if limit and light_load is not None and cost is None:
                problems.append(f"not checked: no run at {light_load:g} without the limit")
            if c.bound == "server" and c.generator_peak > GENERATOR_SATURATED:
                problems.append(f"the generator saturated too where the server reached its limit "
                                f"({c.generator_peak:.0%} of its core)")
            out.append({"transport": transport, "cpu_limit": limit, "load_key": load_key, "capacity": c.load,
                        "delivered_per_s": c.delivered_per_s, "bound": c.bound, "reason": c.reason,
                        "cpu_percent": c.cpu_percent, "over": c.over, "cpu_percent_over": c.cpu_percent_over,
                        "crossing": c.crossing, "crossing_delivered_per_s": c.crossing_delivered_per_s,
                        "capacity_per_cpu": c.load_per_cpu, "delivered_per_s_per_cpu": c.delivered_per_s_per_cpu,
                        "generator_peak": c.generator_peak, "scaling_ratio": check.ratio if check else math.nan,
                        "light_cost_ratio": cost.ratio if cost else math.nan, "flag": "; ".join(problems)})
    return out


# The figures a peer is compared on, each divided by its rtlab transport's at the same point (rtlab = 1.0).
RATIO_FIGURES = ("server_cpu_us_per_delivered_message", "bytes_per_delivered_message", "latency_p50_ms",
                 "latency_p99_ms", "server_rss_per_member_bytes")


def counterpart(transport: str) -> str:
    """The rtlab transport `transport` is compared with: a peer's registry `compare_with`, else itself."""
    try:
        return registry.get(transport).compare_with or transport
    except registry.UnknownTransport:
        return transport


def ratios(rows: list[Mapping[str, object]], columns: Mapping[str, str], keys: Iterable[str]) -> list[dict]:
    """For each row (a point: its transport, `keys` and figure values), the ratio of each figure to the same
    figure of its counterpart's row at the same point: {"vs": counterpart, name: ratio}; NaN where the run
    has no such row, or the counterpart's figure is 0 or absent. `columns` maps a ratio's name to the figure
    (or summary column) it divides."""
    keys = list(keys)

    def at(row: Mapping[str, object]) -> tuple:
        return tuple(row.get(k) for k in keys)

    index = {(str(row["transport"]), at(row)): row for row in rows}
    out = []
    for row in rows:
        vs = counterpart(str(row["transport"]))
        other = index.get((vs, at(row)))
        result: dict[str, object] = {"vs": vs}
        for name, column in columns.items():
            mine, theirs = _number(row.get(column)), _number(other.get(column)) if other else math.nan
            result[name] = mine / theirs if theirs and not math.isnan(theirs) and not math.isnan(mine) else math.nan
        out.append(result)
    return out


def _number(value: object) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


# Unix seconds as time.time() gives them these years: ten digits, a point, about seven decimals.
TYPICAL_UNIX_S = 1_795_000_000.1234567


@dataclass(frozen=True)
class MessageSizes:
    """JSON bytes of one chat message: as the server sends it (`delivered`) and as a client sends it (`sent`)."""

    delivered: int
    sent: int

    @classmethod
    def typical(cls, message_bytes: int, users: int, rooms: int, ids_per_room: float) -> MessageSizes:
        """Return the sizes of a typical message of a run: the middle member, room and id of the run.

        Members are `member-<i>` in `room-<i % rooms>` (clients/locustfile.py) and texts are ASCII, so real
        messages differ from this one by a digit or two in the id, the names and the timestamps.
        """
        from servers.core import Message, encode_message

        user, room = f"member-{users // 2}", f"room-{rooms // 2}"
        text, stamp = "x" * message_bytes, TYPICAL_UNIX_S
        delivered = encode_message(Message(max(1, round(ids_per_room / 2)), room, user, text, stamp, stamp)).json
        # What clients/polling.py POSTs; clients/websocket.py adds a "type" key, an envelope counted as overhead.
        sent = json.dumps({"user": user, "text": text, "sent_at": stamp})
        return cls(len(delivered.encode()), len(sent.encode()))


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


def line_fit(xs: Iterable[float], ys: Iterable[float]) -> tuple[float, float]:
    """Return the least-squares (slope, intercept) of ys against xs; NaNs when xs do not vary."""
    xs, ys = list(xs), list(ys)
    b = slope(xs, ys)
    if math.isnan(b):
        return math.nan, math.nan
    return b, sum(ys) / len(ys) - b * sum(xs) / len(xs)


# Marginal and fixed costs: over points that differ only in the message rate, a server's CPU per second (and its
# wire bytes per second) against its deliveries per second is close to a line: the slope is what one more
# delivered message costs, the intercept what holding the members costs while nobody talks.
MARGINAL_COLUMNS = ("marginal_cpu_us_per_delivered", "fixed_cpu_us_per_member_s", "marginal_bytes_per_delivered",
                    "fixed_bytes_per_member_s", "rates")


def marginal_costs(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Per transport, from summary rows (with users, delivered_per_s, server_cpu_us_per_member_s and
    bytes_per_member_s) at several message rates: the marginal CPU (us) and bytes per delivered message and the
    fixed CPU (us) and bytes per member per second; transports with fewer than two rates are left out."""
    points: dict[str, list[tuple[float, float, float, float]]] = {}
    for row in rows:
        try:
            users = float(row["users"])
            values = (float(row["delivered_per_s"]), float(row["server_cpu_us_per_member_s"]) * users,
                      float(row["bytes_per_member_s"]) * users, users)
        except (KeyError, TypeError, ValueError):
            continue
        if not any(math.isnan(v) for v in values):
            points.setdefault(str(row["transport"]), []).append(values)
    fits = {}
    for transport, found in points.items():
        if len({x for x, *_ in found}) < 2:
            continue
        xs = [x for x, *_ in found]
        users = sum(u for *_, u in found) / len(found)
        cpu_slope, cpu_intercept = line_fit(xs, [cpu for _, cpu, _, _ in found])
        bytes_slope, bytes_intercept = line_fit(xs, [b for _, _, b, _ in found])
        fits[transport] = {
            "marginal_cpu_us_per_delivered": cpu_slope, "fixed_cpu_us_per_member_s": cpu_intercept / users,
            "marginal_bytes_per_delivered": bytes_slope, "fixed_bytes_per_member_s": bytes_intercept / users,
            "rates": len(found),
        }
    return fits


def compute(run: RunData, names: Iterable[str] | None = None) -> dict[str, float]:
    """Return {figure name: value} for `names` (default: every figure), in registry order."""
    chosen = FIGURES if names is None else {name: FIGURES[name] for name in names}
    return {name: figure.function(run) for name, figure in chosen.items()}
