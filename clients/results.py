"""What a load run measures beyond Locust's own stats: µs delivery latency, completeness, generator health."""

from __future__ import annotations

import io
import json
import math
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from hdrh.histogram import HdrHistogram
from hdrh.log import HistogramLogReader, HistogramLogWriter

from servers import registry

from .completeness import Counts, DeliveryLedger, LedgerReceiver, LedgerTotals, ReceiverTracker
from .profile import Profile

LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 3_600_000_000  # one hour; anything slower is recorded as one hour and counted
LATENCY_SIGNIFICANT_FIGURES = 3
# Above this share of one core, the generator itself is the bottleneck and its latencies measure it.
GENERATOR_SATURATION_PERCENT = 90.0
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
# The ledger leaves out messages sent in the last seconds of a run: still in flight when receivers stopped.
LEDGER_MARGIN_S = 2.0
MAX_RECONNECT_SAMPLES = 100_000
MAX_JOIN_SAMPLES = 100_000  # members' times to join and to their first message, each
# A run whose sends went out later than their schedule by more than this at p99 (in the measured window) is flagged:
# its latencies then include the generator's own lateness (experiments.figures.SEND_LAG_LIMIT_MS says the same).
SEND_LAG_LIMIT_MS = 100.0
SEND_LAG_BATCH = 4096  # send lags wait in an array until this many, then go into their histogram at once
# Written beside the run's files when the measured window opens (every member joined, or the join deadline): its
# time (t_unix_s, t_mono_s), why, the members and how many had joined. The experiment runner waits for it.
MEASURING_MARKER = "measuring.json"
# Deliveries wait at most this long (and never past a whole second) before they reach the histogram and Locust.
BATCH_S = 0.25
# Beside the window's histogram, one per this many seconds of it (deliver_latency_<transport>.hlog): how the latency
# moves over a long run (experiments/soak.toml: p99 per five minutes).
LATENCY_INTERVAL_S = 10


def new_latency_histogram() -> HdrHistogram:
    return HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_SIGNIFICANT_FIGURES)


def record_values(histogram: HdrHistogram, values: np.ndarray) -> None:
    """Record integer values (each within the histogram's range) at once, as `record_value` would one by one.

    hdrh's `record_value` is Python: about 1.5 µs a value, paid for every delivery on the load generator's hot
    path. This is its index arithmetic (bucket from the value's bit length, sub-bucket from a shift) on a whole
    array; tests/clients/test_clients_results.py checks it against `record_value` over the whole range.
    """
    if not len(values):
        return
    values = values.astype(np.int64, copy=False)
    unit = histogram.unit_magnitude
    half_magnitude = histogram.sub_bucket_half_count_magnitude
    # The bit length of value | mask (frexp is exact: the values are far below 2**53).
    bit_length = np.frexp((values | histogram.sub_bucket_mask).astype(np.float64))[1].astype(np.int64)
    bucket = bit_length - unit - (half_magnitude + 1)
    sub_bucket = values >> (bucket + unit)
    index = ((bucket + 1) << half_magnitude) + sub_bucket - histogram.sub_bucket_half_count
    if index.min() < 0 or index.max() >= histogram.counts_len:
        raise ValueError("a value outside the histogram's range")
    slots, counts = np.unique(index, return_counts=True)
    np.ctypeslib.as_array(histogram.counts)[slots] += counts.astype(np.uint64)
    histogram.total_count += len(values)
    histogram.min_value = min(histogram.min_value, int(values.min()))
    histogram.max_value = max(histogram.max_value, int(values.max()))


class Batch(NamedTuple):
    """The deliveries of one transport received within one batch (all in the whole second `second`)."""

    second: int
    last_at: float  # when the batch was closed (within `second`)
    measured_ms: np.ndarray  # latencies after the warm-up, in ms
    measured_bytes: int  # their texts' length
    warmup_ms: np.ndarray
    warmup_bytes: int


def next_batch(now: float) -> tuple[int, float]:
    """A batch that opens at `now`: its whole second, and when it closes (BATCH_S later, or at that second's end)."""
    second = math.floor(now)
    return second, min(second + 1.0, now + BATCH_S)


def percentiles_ms(samples: array | list[float]) -> dict:
    """p50, p99, max and count of millisecond samples (nearest rank; None where there are none)."""
    ordered = sorted(samples)

    def pct(p: float) -> float | None:
        return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3) if ordered else None

    return {"count": len(ordered), "p50": pct(50), "p99": pct(99),
            "max": round(ordered[-1], 3) if ordered else None}


@dataclass
class TransportResults:
    """Deliveries and receivers of one transport in one run."""

    transport: str
    histogram: HdrHistogram = field(default_factory=new_latency_histogram)  # measured deliveries, µs
    deliveries_warmup: int = 0  # deliveries received during warm-up: in Locust, not in the histogram
    latencies_clamped: int = 0  # below 0 or above LATENCY_HIGHEST_US, recorded at the edge
    trackers: list[ReceiverTracker] = field(default_factory=list)
    reconnect_ms: list[float] = field(default_factory=list)  # disconnect to reconnected, each success
    reconnect_failures: int = 0  # clients that gave up reconnecting
    merged: Counts = field(default_factory=Counts)  # completeness of other processes' receivers (Locust workers)
    merged_receivers: int = 0
    measure_from: float = 0.0  # unix time the measured window starts (the run's warm-up ends)
    # Connection set-up, one sample per member (ms from the member's start): until it had joined its room (listening),
    # and until its first message arrived.
    join_ms: array = field(default_factory=lambda: array("d"))
    first_message_ms: array = field(default_factory=lambda: array("d"))
    # The measured deliveries again, by LATENCY_INTERVAL_S of the window (index 0 from measure_from): µs.
    intervals: dict[int, HdrHistogram] = field(default_factory=dict)
    # Deliveries wait here, in batches, on their way into the histogram and (`on_batch`) Locust's stats: on the
    # load generator's hot path a delivery costs two list appends, and a batch is recorded with numpy. The hot
    # path (clients/locustfile.py) calls `flush(now)` first when `now >= flush_at`, then appends to `pending`
    # (latency in s, after the warm-up) or `pending_warmup`, and adds the text's length to the bytes.
    pending: array = field(default_factory=lambda: array("d"))  # C doubles: numpy reads them without a copy
    pending_bytes: int = 0
    pending_warmup: array = field(default_factory=lambda: array("d"))
    pending_warmup_bytes: int = 0
    flush_at: float = 0.0  # the batch closes at this unix time: BATCH_S after it opened, or the next whole second
    batch_second: int = 0
    on_batch: Callable[[Batch], None] | None = None

    def record(self, latency_s: float, now: float, length: int = 0) -> bool:
        """Record one delivery latency at once; return False when it fell in the warm-up (not in the histogram)."""
        self.flush(now)  # what is pending, then a batch that opens now
        measured = now >= self.measure_from
        if measured:
            self.pending.append(latency_s)
            self.pending_bytes += length
        else:
            self.pending_warmup.append(latency_s)
            self.pending_warmup_bytes += length
        self.flush(now)
        return measured

    def flush(self, now: float) -> None:
        """Record the pending batch (histogram, then `on_batch`) and open the next one at `now`."""
        if self.pending or self.pending_warmup:
            measured_ms = np.frombuffer(self.pending, dtype=np.float64) * 1000.0
            warmup_ms = np.frombuffer(self.pending_warmup, dtype=np.float64) * 1000.0
            batch = Batch(self.batch_second, min(now, self.flush_at), measured_ms, self.pending_bytes,
                          warmup_ms, self.pending_warmup_bytes)
            self.pending, self.pending_warmup = array("d"), array("d")
            self.pending_bytes = self.pending_warmup_bytes = 0
            self.deliveries_warmup += len(warmup_ms)
            latency_us = np.rint(measured_ms * 1000.0)
            outside = (latency_us < 0) | (latency_us > LATENCY_HIGHEST_US)
            if outside.any():
                self.latencies_clamped += int(outside.sum())
                latency_us = np.clip(latency_us, 0, LATENCY_HIGHEST_US)
            record_values(self.histogram, latency_us.astype(np.int64))
            if len(latency_us):
                index = max(0, int((self.batch_second - self.measure_from) // LATENCY_INTERVAL_S))
                interval = self.intervals.get(index)
                if interval is None:
                    interval = self.intervals[index] = new_latency_histogram()
                record_values(interval, latency_us.astype(np.int64))
            if self.on_batch is not None:
                self.on_batch(batch)
        self.batch_second, self.flush_at = next_batch(now)

    def drop_pending(self) -> None:
        self.pending, self.pending_warmup = array("d"), array("d")
        self.pending_bytes = self.pending_warmup_bytes = 0

    @property
    def deliveries_measured(self) -> int:
        return self.histogram.get_total_count()

    @property
    def receivers(self) -> int:
        return len(self.trackers) + self.merged_receivers

    def completeness(self) -> Counts:
        return sum((tracker.counts() for tracker in self.trackers), self.merged)

    def record_join(self, milliseconds: float) -> None:
        if len(self.join_ms) < MAX_JOIN_SAMPLES:
            self.join_ms.append(milliseconds)

    def record_first_message(self, milliseconds: float) -> None:
        if len(self.first_message_ms) < MAX_JOIN_SAMPLES:
            self.first_message_ms.append(milliseconds)

    def connection_setup(self) -> dict:
        """Time to join and to the first message (ms): p50, p99, max and how many members each counts, and every
        member's (to 0.1 ms)."""
        return {"join_ms": percentiles_ms(self.join_ms), "first_message_ms": percentiles_ms(self.first_message_ms),
                "join_ms_samples": [round(ms, 1) for ms in self.join_ms],
                "first_message_ms_samples": [round(ms, 1) for ms in self.first_message_ms]}

    def record_reconnect(self, milliseconds: float, ok: bool) -> None:
        if not ok:
            self.reconnect_failures += 1
        elif len(self.reconnect_ms) < MAX_RECONNECT_SAMPLES:
            self.reconnect_ms.append(round(milliseconds, 3))

    def reconnects(self) -> dict:
        """The reconnect time distribution (ms) and its raw samples."""
        samples = sorted(self.reconnect_ms)

        def pct(p: float) -> float | None:
            return samples[min(len(samples) - 1, int(p / 100 * len(samples)))] if samples else None

        return {
            "reconnects": len(samples),
            "reconnect_failures": self.reconnect_failures,
            "reconnect_ms": {
                "p50": pct(50), "p90": pct(90), "p99": pct(99), "max": samples[-1] if samples else None,
                "mean": round(sum(samples) / len(samples), 3) if samples else None,
            },
            "reconnect_ms_samples": self.reconnect_ms,
        }

    def as_dict(self) -> dict:
        return {
            "receivers": self.receivers,
            **self.completeness().as_dict(),
            "deliveries_measured": self.deliveries_measured,
            "deliveries_warmup": self.deliveries_warmup,
            "latencies_clamped": self.latencies_clamped,
            **self.reconnects(),
            **self.connection_setup(),
        }

    def to_wire(self) -> dict:
        """A JSON-able copy, to send from a Locust worker to its master (merge_wire)."""
        return {
            "histogram": self.histogram.encode().decode("ascii"),
            "deliveries_warmup": self.deliveries_warmup,
            "latencies_clamped": self.latencies_clamped,
            "completeness": self.completeness().as_dict(),
            "receivers": self.receivers,
            "reconnect_ms": self.reconnect_ms,
            "reconnect_failures": self.reconnect_failures,
            "join_ms": self.join_ms.tolist(),
            "first_message_ms": self.first_message_ms.tolist(),
            "intervals": {str(i): h.encode().decode("ascii") for i, h in self.intervals.items()},
        }

    def merge_wire(self, data: dict) -> None:
        self.histogram.add(HdrHistogram.decode(data["histogram"]))
        self.deliveries_warmup += data["deliveries_warmup"]
        self.latencies_clamped += data["latencies_clamped"]
        self.merged = self.merged + Counts(**data["completeness"])
        self.merged_receivers += data["receivers"]
        self.reconnect_ms.extend(data["reconnect_ms"][: MAX_RECONNECT_SAMPLES - len(self.reconnect_ms)])
        self.reconnect_failures += data["reconnect_failures"]
        self.join_ms.extend(data.get("join_ms", [])[: MAX_JOIN_SAMPLES - len(self.join_ms)])
        self.first_message_ms.extend(data.get("first_message_ms", [])[: MAX_JOIN_SAMPLES - len(self.first_message_ms)])
        for index, encoded in data.get("intervals", {}).items():
            self.intervals.setdefault(int(index), new_latency_histogram()).add(HdrHistogram.decode(encoded))

    def write_intervals(self, path: Path) -> None:
        """Write the interval histograms as an HdrHistogram interval log (hdrh.log): each line an interval's start
        and length in seconds from the window's opening (the base time), its histogram in µs."""
        buffer = io.StringIO()
        writer = HistogramLogWriter(buffer)
        writer.output_comment(f"rtlab {self.transport}: delivery latency (µs) per {LATENCY_INTERVAL_S} s of the "
                              "measured window")
        if math.isfinite(self.measure_from):
            writer.output_base_time(self.measure_from * 1000)
        writer.output_legend()
        for index in sorted(self.intervals):
            writer.output_interval_histogram(self.intervals[index], index * LATENCY_INTERVAL_S,
                                             (index + 1) * LATENCY_INTERVAL_S)
        path.write_text(buffer.getvalue())


class RunResults:
    """Everything one Locust run records for rtlab; `write()` saves it beside Locust's CSVs.

    The run starts when Locust starts the test; the first `profile.warmup_s` seconds are warm-up. A Locust run
    holds the window (`hold_window`) until every member has joined, and opens it then (`open_window`).
    """

    def __init__(self, profile: Profile, started_at: float) -> None:
        self.profile = profile
        self.started_at = started_at
        self.measure_from = started_at + profile.warmup_s
        self.transports: dict[str, TransportResults] = {}
        self.cpu_samples: list[tuple[float, float]] = []  # (seconds since start, % of one core)
        self.sends = 0
        self.send_lag_max_s = 0.0  # how far behind its schedule the generator sent, at worst
        # Each measured send's lag (µs) goes into this histogram, SEND_LAG_BATCH at a time.
        self.send_lag_us = new_latency_histogram()
        self.pending_send_lags = array("d")
        # How the measured window opened (open_window): when, why, and the members joined by then.
        self.window: dict = {"measure_from_unix_s": self.measure_from, "opened_by": "warmup_s"}
        self.ledger = DeliveryLedger()
        self.stopped_at: float | None = None  # when the run ended (set by finish); the ledger's cutoff follows
        self.processes = 1  # load generator processes whose results are in here (Locust master: its workers)
        self.cpu_samples_by_process: dict[str, list[tuple[float, float]]] = {}  # other processes' (Locust workers)

    def in_warmup(self, now: float) -> bool:
        return now < self.measure_from

    def hold_window(self) -> None:
        """Keep everything in the warm-up until `open_window` says when the measured window starts."""
        self._set_measure_from(math.inf)
        self.window = {"measure_from_unix_s": None, "opened_by": None}

    def open_window(self, at: float, opened_by: str, members: int | None = None, joined: int | None = None) -> None:
        """Measure from unix time `at` on; `opened_by` says why then ("every member joined", "join deadline"), and
        `members`/`joined` how many members the run had and how many had joined by then."""
        self._set_measure_from(at)
        late = None if members is None or joined is None else max(0, members - joined)
        self.window = {"measure_from_unix_s": at, "opened_by": opened_by, "members": members, "joined": joined,
                       "members_joined_late": late}

    def _set_measure_from(self, at: float) -> None:
        self.measure_from = at
        for results in self.transports.values():
            results.measure_from = at

    def for_transport(self, transport: str) -> TransportResults:
        results = self.transports.get(transport)
        if results is None:
            results = self.transports[transport] = TransportResults(transport, measure_from=self.measure_from)
        return results

    def add_receiver(self, transport: str, since: int) -> ReceiverTracker:
        """Start tracking a receiver that joined after id `since`; feed it every id it receives."""
        tracker = ReceiverTracker(since)
        self.for_transport(transport).trackers.append(tracker)
        return tracker

    def record_delivery(self, transport: str, latency_s: float, now: float) -> bool:
        """Record one delivery latency; return False when it fell in the warm-up (not in the histogram)."""
        return self.for_transport(transport).record(latency_s, now)

    def reset_deliveries(self) -> None:
        """Forget the deliveries recorded so far (Locust's stats were reset); receivers keep counting."""
        for results in self.transports.values():
            results.drop_pending()
            results.histogram.reset()
            results.intervals.clear()
            results.deliveries_warmup = 0
            results.latencies_clamped = 0

    def add_ledger_receiver(self, room: str, user: str, transport: str, joined_at: float) -> LedgerReceiver:
        """Start counting what a receiver that joined `room` at `joined_at` gets from the others."""
        return self.ledger.add_receiver(room, user, transport, joined_at)

    def record_accepted(self, room: str, user: str, sent_at: float) -> None:
        """Record a send the server accepted (answered 201, or echoed on the WebSocket)."""
        self.ledger.record_send(room, user, sent_at)

    def record_reconnect(self, transport: str, milliseconds: float, ok: bool) -> None:
        """Record a client's reconnect (ok) or its giving up (not ok)."""
        self.for_transport(transport).record_reconnect(milliseconds, ok)

    def flush(self, now: float, due_only: bool = False) -> None:
        """Record every transport's pending deliveries (only the batches due by `now` when `due_only`)."""
        for results in list(self.transports.values()):
            if not due_only or now >= results.flush_at:
                results.flush(now)

    def finish(self, now: float) -> None:
        """Mark the end of the run: the ledger counts messages sent before now - LEDGER_MARGIN_S."""
        self.flush(now)
        self.stopped_at = now

    def ledger_cutoff_s(self) -> int | None:
        """The whole second (unix) before which sent messages are expected to have arrived."""
        if self.stopped_at is None:
            return None
        # A transport that may hold a message back in a healthy run (short polling: up to one poll interval)
        # says so in its registry entry; messages sent within twice that of the end may still be on the way.
        delays = [entry.max_delay_s(self.profile.knobs) for entry in registry.transports()
                  if entry.name in self.transports and entry.max_delay_s is not None]
        return math.floor(self.stopped_at - max([LEDGER_MARGIN_S, *(2 * d for d in delays)]))

    def ledger_totals(self) -> dict[str, LedgerTotals]:
        cutoff = self.ledger_cutoff_s()
        return {} if cutoff is None else self.ledger.totals(cutoff)

    def record_join(self, transport: str, milliseconds: float) -> None:
        """Record how long a member took from its start to being joined (listening in its room)."""
        self.for_transport(transport).record_join(milliseconds)

    def record_first_message(self, transport: str, milliseconds: float) -> None:
        """Record how long a member took from its start to its first message."""
        self.for_transport(transport).record_first_message(milliseconds)

    def record_send(self, lag_s: float, due: float = math.inf) -> None:
        """Record one send that went out `lag_s` after it was due (at unix time `due`); those due in the measured
        window go into the send-lag histogram."""
        self.sends += 1
        if lag_s > self.send_lag_max_s:
            self.send_lag_max_s = lag_s
        if due >= self.measure_from:
            self.pending_send_lags.append(lag_s)
            if len(self.pending_send_lags) >= SEND_LAG_BATCH:
                self.flush_send_lags()

    def flush_send_lags(self) -> None:
        if self.pending_send_lags:
            lag_us = np.rint(np.frombuffer(self.pending_send_lags, dtype=np.float64) * 1e6)
            record_values(self.send_lag_us, np.clip(lag_us, LATENCY_LOWEST_US, LATENCY_HIGHEST_US).astype(np.int64))
            self.pending_send_lags = array("d")

    def send_lag(self) -> dict:
        """The measured sends' lag behind their schedule (ms): p50, p99, max, and whether p99 is over the limit."""
        self.flush_send_lags()
        h = self.send_lag_us
        counted = h.get_total_count()
        p99 = round(h.get_value_at_percentile(99) / 1000, 3) if counted else None
        return {
            "send_lag_measured": counted,
            "send_lag_p50_ms": round(h.get_value_at_percentile(50) / 1000, 3) if counted else None,
            "send_lag_p99_ms": p99,
            "send_lag_limit_ms": SEND_LAG_LIMIT_MS,
            "sends_behind_schedule": p99 is not None and p99 > SEND_LAG_LIMIT_MS,
        }

    def record_cpu(self, percent_of_one_core: float, now: float) -> None:
        self.cpu_samples.append((round(now - self.started_at, 3), round(percent_of_one_core, 1)))

    def generator(self) -> dict:
        """Summarise the generator's own CPU use; `saturated` when any measured second exceeded 90 %
        (in any of its processes: each Locust process runs on one core)."""
        samples = self.cpu_samples + [s for process in self.cpu_samples_by_process.values() for s in process]
        opened = self.measure_from - self.started_at if math.isfinite(self.measure_from) else self.profile.warmup_s
        after_warmup = [p for t, p in samples if t >= opened]
        judged = after_warmup or [p for _, p in samples]
        over = [p for p in judged if p > GENERATOR_SATURATION_PERCENT]
        return {
            "cpu_percent_of_one_core_mean": round(sum(judged) / len(judged), 1) if judged else None,
            "cpu_percent_of_one_core_max": max(judged) if judged else None,
            "seconds_over_threshold": len(over),
            "seconds_judged": len(judged),
            "saturation_threshold_percent": GENERATOR_SATURATION_PERCENT,
            "saturated": bool(over),
            "sends": self.sends,
            "send_lag_max_ms": round(self.send_lag_max_s * 1000, 3),
            **self.send_lag(),
            "cpu_samples": [list(sample) for sample in self.cpu_samples],
            "processes": self.processes,
            **({"cpu_samples_by_process": {k: [list(s) for s in v] for k, v in self.cpu_samples_by_process.items()}}
               if self.cpu_samples_by_process else {}),
        }

    def summary_lines(self) -> list[str]:
        """Return the human summary printed at the end of a run."""
        lines = []
        ledgers = self.ledger_totals()
        for name, results in sorted(self.transports.items()):
            h = results.histogram
            if results.deliveries_measured:
                pct = " ".join(f"p{p:g} {h.get_value_at_percentile(p) / 1000:.3f}" for p in PERCENTILES)
                latency = f"delivery latency ms {pct} max {h.get_max_value() / 1000:.3f}"
            else:
                latency = "no delivery measured"
            lines.append(
                f"rtlab {name}: {results.deliveries_measured} deliveries measured "
                f"({results.deliveries_warmup} in {self.profile.warmup_s:g} s warm-up); {latency}"
            )
            c = results.completeness()
            ledger = ledgers.get(name, LedgerTotals())
            verdict = "complete" if c.lost == 0 and c.duplicates == 0 and ledger.missing == 0 else "INCOMPLETE"
            lines.append(
                f"rtlab {name}: completeness over {results.receivers} receivers: received {c.received}, "
                f"lost {c.lost}, duplicates {c.duplicates}, out of order {c.out_of_order}; "
                f"senders' ledger: expected {ledger.expected}, never arrived {ledger.missing} ({verdict})"
            )
            r = results.reconnects()
            if r["reconnects"] or r["reconnect_failures"]:
                ms = r["reconnect_ms"]
                timing = ""
                if ms["max"] is not None:
                    timing = f" (p50 {ms['p50']:.1f} ms, p99 {ms['p99']:.1f} ms, max {ms['max']:.1f} ms)"
                lines.append(f"rtlab {name}: {r['reconnects']} reconnects{timing}; {r['reconnect_failures']} gave up")
        g = self.generator()
        cpu = (
            f"CPU mean {g['cpu_percent_of_one_core_mean']:.0f} % max {g['cpu_percent_of_one_core_max']:.0f} % of one core"
            if g["seconds_judged"]
            else "CPU not sampled"
        )
        lag = f"{g['sends']} sends, at worst {g['send_lag_max_ms']:.1f} ms behind schedule"
        if g["send_lag_p99_ms"] is not None:
            lag += f" (p99 {g['send_lag_p99_ms']:.1f} ms in the measured window)"
        if g["saturated"]:
            lines.append(
                f"rtlab generator: SATURATED: above {GENERATOR_SATURATION_PERCENT:g} % of one core for "
                f"{g['seconds_over_threshold']} of {g['seconds_judged']} s; {cpu}; {lag}. "
                "Latencies from this run measure the load generator, not the server."
            )
        elif g["sends_behind_schedule"]:
            lines.append(f"rtlab generator: SENDS BEHIND SCHEDULE: p99 over {SEND_LAG_LIMIT_MS:g} ms; {cpu}; {lag}. "
                         "Latencies from this run include the generator's lateness.")
        else:
            lines.append(f"rtlab generator: ok; {cpu}; {lag}")
        w = self.window
        if w.get("members") is not None:
            lines.append(f"rtlab window: opened {w['opened_by']}, {w['joined']} of {w['members']} members joined"
                         + (f" ({w['members_joined_late']} still connecting: flagged)" if w["members_joined_late"] else ""))
        return lines

    def write(self, directory: Path, prefix: str = "") -> list[Path]:
        """Write the histogram, completeness and generator files into `directory`; return their paths."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, results in sorted(self.transports.items()):
            hdr = directory / f"{prefix}deliver_latency_{name}.hdr"
            hdr.write_text(results.histogram.encode().decode("ascii") + "\n")
            hgrm = directory / f"{prefix}deliver_latency_{name}.hgrm"
            buffer = io.BytesIO()
            if results.deliveries_measured:
                results.histogram.output_percentile_distribution(buffer, 1000)  # µs -> ms
            hgrm.write_bytes(buffer.getvalue())
            hlog = directory / f"{prefix}deliver_latency_{name}.hlog"
            results.write_intervals(hlog)
            written += [hdr, hgrm, hlog]
        completeness = directory / f"{prefix}completeness.json"
        completeness.write_text(json.dumps(self._completeness_doc(), indent=2) + "\n")
        generator = directory / f"{prefix}generator.json"
        generator.write_text(json.dumps(self.generator(), indent=2) + "\n")
        return written + [completeness, generator]

    def _completeness_doc(self) -> dict:
        ledgers = self.ledger_totals()
        return {
            "started_at": self.started_at,
            "warmup_s": self.profile.warmup_s,
            # The measured window as the clients saw it: it opened once every member had joined (or at the deadline).
            "window": {**self.window, "measured_s": self.measured_s()},
            "profile": self.profile.as_dict(),
            "processes": self.processes,
            "ledger": {
                "stopped_at": self.stopped_at,
                "cutoff_unix_s": self.ledger_cutoff_s(),
                "rule": "expected: accepted sends by the others in the receiver's room, sent after it joined and "
                "before the cutoff; missing: expected minus received, per receiver",
            },
            "transports": {
                name: {**results.as_dict(), **ledgers.get(name, LedgerTotals()).as_dict()}
                for name, results in sorted(self.transports.items())
            },
        }

    def measured_s(self) -> float | None:
        """Seconds from the window's opening to the run's end (None until both are known)."""
        if self.stopped_at is None or not math.isfinite(self.measure_from):
            return None
        return round(max(0.0, self.stopped_at - self.measure_from), 3)

    def to_wire(self) -> dict:
        """A JSON-able copy of everything a Locust worker recorded, for its master (merge_wire)."""
        self.flush_send_lags()
        return {
            "transports": {name: results.to_wire() for name, results in self.transports.items()},
            "ledger": self.ledger.to_wire(),
            "cpu_samples": self.cpu_samples,
            "sends": self.sends,
            "send_lag_max_s": self.send_lag_max_s,
            "send_lag_us": self.send_lag_us.encode().decode("ascii"),
            "processes": self.processes,
        }

    def merge_wire(self, data: dict, label: str) -> None:
        """Add what a worker recorded (to_wire) to these results; `label` names its CPU samples."""
        for name, transport in data["transports"].items():
            self.for_transport(name).merge_wire(transport)
        self.ledger.merge_wire(data["ledger"])
        self.cpu_samples_by_process[label] = [tuple(s) for s in data["cpu_samples"]]
        self.sends += data["sends"]
        self.send_lag_max_s = max(self.send_lag_max_s, data["send_lag_max_s"])
        if data.get("send_lag_us"):
            self.send_lag_us.add(HdrHistogram.decode(data["send_lag_us"]))


def output_place(out_dir: str | None, csv_prefix: str | None) -> tuple[Path, str] | None:
    """Where rtlab's files go: `out_dir` when given, else beside Locust's CSVs with their prefix, else nowhere."""
    if out_dir:
        return Path(out_dir), ""
    if csv_prefix:
        path = Path(csv_prefix)
        return path.parent, f"{path.name}_"
    return None


def read_histogram(path: str | Path) -> HdrHistogram:
    """Load a `deliver_latency_*.hdr` file (values in microseconds)."""
    return HdrHistogram.decode(Path(path).read_text().strip())


def read_intervals(path: str | Path) -> list[tuple[float, HdrHistogram]]:
    """Load a `deliver_latency_*.hlog` file: (seconds from the window's opening to the interval's start, its
    histogram in µs), oldest first."""
    reader = HistogramLogReader(str(path), new_latency_histogram())
    out = []
    try:
        while (histogram := reader.get_next_interval_histogram()) is not None:  # the base time is read on the way
            out.append((histogram.get_start_time_stamp() / 1000 - reader.base_time_sec, histogram))
    finally:
        reader.input_file.close()
    return out
