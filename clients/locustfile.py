"""Locust users for every transport: one chat behaviour, one client per transport, DELIVER latency and completeness.

The user classes are made from servers.registry, one per registered transport (`<Client>Member`, e.g.
WebSocketMember for clients.websocket:WebSocketClient), so a new transport needs no edit here.
"""

# ruff: noqa: I001  (locust is imported first on purpose; sorting would move it)

import locust  # noqa: F401  first: Locust monkey-patches with gevent on import, before anything opens a socket

import json
import logging
import math
import os
import random
import string
import sys
import time
from array import array
from dataclasses import dataclass, field
from itertools import count
from typing import ClassVar

import gevent
import locust.stats
import numpy as np
import psutil
from locust import User, constant, events, task
from locust.exception import StopUser
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC, RequestStats, StatsEntry

# Locust puts this file's directory first on sys.path while it imports us, and there
# clients/websocket.py would shadow the websocket-client package. Import that package with the
# directory stepped aside, then put it back: Locust deletes sys.path[0] when we return.
_here = os.path.dirname(os.path.abspath(__file__))
_stepped_aside = sys.path.pop(0) if sys.path and os.path.abspath(sys.path[0]) == _here else None
try:
    import websocket  # noqa: F401  websocket-client, now in sys.modules for clients.websocket
finally:
    if _stepped_aside is not None:
        sys.path.insert(0, _stepped_aside)

from clients import http
from clients.base import Backoff, ChatClient, Message, ms_since
from clients.completeness import Arrival, LedgerReceiver, ReceiverTracker
from clients.profile import DEFAULT_PROFILE_PATH, Profile, ProfileError, load_profile
from clients.results import BATCH_S, MEASURING_MARKER, Batch, RunResults, next_batch, output_place
from clients.schedule import SendSchedule, message_text
from servers import registry

log = logging.getLogger("rtlab.locust")

WARMUP_SUFFIX = " [warm-up]"
RESULTS_MESSAGE = "rtlab_results"  # a Locust worker's RunResults, sent to the master at test_stop
STOP_MESSAGE = "rtlab_stop"  # the master asks its workers to stop (and so send their results)
JOINED_MESSAGE = "rtlab_joined"  # a worker tells its master how many of its members have joined
WINDOW_MESSAGE = "rtlab_window"  # the master tells its workers when the measured window opens
# The join barrier: how often the window's opener looks at the joined count, and (with workers) how long after its
# decision the window opens, so that every worker has heard of it before then.
JOIN_CHECK_S = 0.05
WINDOW_NOTICE_S = 0.25
WORKER_RESULTS_TIMEOUT_S = 30.0
CPU_SAMPLE_INTERVAL_S = 1.0
MAX_CPU_SAMPLES = 7 * 24 * 3600 / CPU_SAMPLE_INTERVAL_S  # the longest run a profile allows
SENDS_PER_TASK = 1000


class MessagesLost(Exception):
    """Ids after the receiver's join point never arrived (a gap in a room's contiguous ids)."""


class DuplicateMessage(Exception):
    """An id arrived twice, or one the receiver had already declared it had."""


class NeverArrived(Exception):
    """A message another member of the room sent (and the server accepted) after this member joined never
    reached it: the senders' ledger (clients.completeness.DeliveryLedger) counts what the ids cannot see."""


class RequestBatch:
    """Successful requests of one type and name, on their way into Locust's stats a batch at a time (`log_batch`):
    Locust's request event costs the generator about 20 µs a request, and every message sent draws one."""

    def __init__(self, stats: RequestStats, request_type: str, name: str) -> None:
        self.stats, self.request_type, self.name = stats, request_type, name
        self.latencies_ms = array("d")
        self.length = 0
        self.second = 0
        self.flush_at = 0.0

    def flush(self, now: float) -> None:
        if self.latencies_ms:
            measured = np.frombuffer(self.latencies_ms, dtype=np.float64)
            batch = Batch(self.second, min(now, self.flush_at), measured, self.length, NO_LATENCIES, 0)
            log_batch(self.stats, self.name, batch, self.request_type)
            self.latencies_ms, self.length = array("d"), 0
        self.second, self.flush_at = next_batch(now)


@dataclass
class Run:
    """The state of the test Locust is running now: created on test_start, written out on test_stop."""

    profile: Profile
    results: RunResults
    members: count = field(default_factory=count)  # hands out member indexes: room and user name
    cpu_sampler: gevent.Greenlet | None = None
    flusher: gevent.Greenlet | None = None  # records the deliveries' batches once due when none arrives to do it
    worker_stops: list[float] = field(default_factory=list)  # when each Locust worker stopped (master only)
    # The successful SENDs, by name, on their way into Locust's stats a batch at a time, as the deliveries go.
    sends: dict[str, RequestBatch] = field(default_factory=dict)
    joined: int = 0  # this process's members that have joined their room
    worker_joined: dict[str, int] = field(default_factory=dict)  # a master's workers' joined members, by worker
    window_opener: gevent.Greenlet | None = None  # the join barrier (a master or a lone process)
    joined_reporter: gevent.Greenlet | None = None  # a worker's: sends its joined count to the master

    def joined_total(self) -> int:
        return self.joined + sum(self.worker_joined.values())

    def record_send(self, stats: RequestStats, name: str, response_time_ms: float, length: int, now: float) -> None:
        batch = self.sends.get(name)
        if batch is None:
            batch = self.sends[name] = RequestBatch(stats, "SEND", name)
        if now >= batch.flush_at:
            batch.flush(now)
        batch.latencies_ms.append(response_time_ms)
        batch.length += length

    def flush(self, now: float, due_only: bool = False) -> None:
        """Record the pending batches (only those due by `now` when `due_only`): deliveries and sends."""
        self.results.flush(now, due_only)
        for batch in list(self.sends.values()):
            if not due_only or now >= batch.flush_at:
                batch.flush(now)


class _Current:
    environment: Environment | None = None
    run: Run | None = None
    profile: Profile | None = None  # loaded at init, so a bad file stops Locust before anything starts


current = _Current()


# ---- Locust plumbing: options, profile, run start and end ---------------------------------------------------------


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    # Not --profile: Locust has that option already (it groups test runs).
    parser.add_argument(
        "--rtlab-profile",
        default=os.environ.get("RTLAB_PROFILE", str(DEFAULT_PROFILE_PATH)),
        help="TOML load profile (env RTLAB_PROFILE; default clients/default_profile.toml)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--rtlab-out",
        default=os.environ.get("RTLAB_OUT", ""),
        help="directory for deliver_latency_*.hdr, completeness.json, generator.json "
        "(env RTLAB_OUT; default: beside --csv files, with their prefix)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--rtlab-http",
        default=os.environ.get("RTLAB_HTTP", "1.1"),
        choices=http.VERSIONS,
        help="the HTTP every member speaks: 1.1, or 2 (one h2 connection per member: TLS for an https:// host, "
        "h2c for http://) (env RTLAB_HTTP; clients/http.py)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--rtlab-tls-ca",
        default=os.environ.get("RTLAB_TLS_CA", ""),
        help="PEM certificate that verifies an https:// host, e.g. the proxy's self-signed one (env RTLAB_TLS_CA)",
        include_in_web_ui=False,
    )
    parser.add_argument(
        "--rtlab-local-rooms",
        action="store_true",
        default=os.environ.get("RTLAB_LOCAL_ROOMS") == "1",
        help="distributed runs: each Locust worker gets rooms of its own (w<index>-room-<k>), so every member "
        "of a room, and every clock its latencies read, is on one machine; give it to the master, which "
        "passes it on (env RTLAB_LOCAL_ROOMS=1; docs/scaling.md)",
        include_in_web_ui=False,
    )


@events.init.add_listener
def refresh_event_loop_clock(environment: Environment, **_kwargs) -> None:
    # gevent's loop caches "now" and only refreshes it when it turns. Locust's imports (and ours)
    # run without turning it, so on a busy machine the cached time can be seconds old when Locust
    # arms its --run-time timer next, and a 3 s run ends at once. Refresh it before that happens.
    gevent.get_hub().loop.update_now()


@events.init.add_listener
def load_profile_once(environment: Environment, **_kwargs) -> None:
    current.environment = environment
    options = environment.parsed_options
    path = getattr(options, "rtlab_profile", None) or os.environ.get("RTLAB_PROFILE") or DEFAULT_PROFILE_PATH
    try:
        current.profile = load_profile(path)
    except ProfileError as error:
        log.error("%s", error)
        raise SystemExit(2) from None
    if options is not None:
        http.configure(getattr(options, "rtlab_http", "1.1"), getattr(options, "rtlab_tls_ca", "") or None)
    # Locust's own run options come from the profile unless given on the command line.
    if options is not None:
        if getattr(options, "num_users", None) is None:
            options.num_users = current.profile.users
        if getattr(options, "spawn_rate", None) is None:
            options.spawn_rate = current.profile.spawn_rate
        if getattr(options, "run_time", None) is None:
            options.run_time = current.profile.duration_s


@events.test_start.add_listener
def start_run(environment: Environment, **_kwargs) -> None:
    profile = current.profile or load_profile(DEFAULT_PROFILE_PATH)
    run = Run(profile, RunResults(profile, time.time()))
    run.results.hold_window()  # until every member has joined (open_window_when_joined)
    run.cpu_sampler = gevent.spawn(sample_cpu, run.results)
    run.flusher = gevent.spawn(flush_batches, run)
    current.run = run
    if isinstance(environment.runner, WorkerRunner):
        run.joined_reporter = gevent.spawn(report_joined, environment.runner, run)
        return
    run.window_opener = gevent.spawn(open_window_when_joined, environment, run)
    place = output_place(getattr(environment.parsed_options, "rtlab_out", None), None)
    if place is not None:
        # The experiment runner times the run from this moment.
        place[0].mkdir(parents=True, exist_ok=True)
        marker = {"t_unix_s": run.results.started_at, "t_mono_s": time.monotonic()}
        (place[0] / "started.json").write_text(json.dumps(marker) + "\n")


def open_window_when_joined(environment: Environment, run: Run) -> None:
    """The join barrier: open the measured window once every member has joined and warmup_s has passed, or at the
    profile's join deadline with the members still connecting counted; tell the workers and the experiment runner
    (MEASURING_MARKER)."""
    runner = environment.runner
    earliest = run.results.started_at + run.profile.warmup_s
    deadline = run.results.started_at + run.profile.join_deadline()
    while True:
        now = time.time()
        members, joined = runner.target_user_count, run.joined_total()
        if now >= earliest and members and joined >= members:
            opened_by = "every member joined"
            break
        if now >= deadline:
            opened_by = "join deadline"
            break
        gevent.sleep(JOIN_CHECK_S)
    notice = WINDOW_NOTICE_S if isinstance(runner, MasterRunner) else 0.0
    at = now + notice
    run.results.open_window(at, opened_by, members, joined)
    if isinstance(runner, MasterRunner):
        runner.send_message(WINDOW_MESSAGE, run.results.window)
    if joined < members:
        log.warning("rtlab: the measured window opened at the join deadline with %d of %d members joined",
                    joined, members)
    place = output_place(getattr(environment.parsed_options, "rtlab_out", None), None)
    if place is not None:
        marker = {**run.results.window, "t_unix_s": at, "t_mono_s": time.monotonic() + (at - time.time())}
        (place[0] / MEASURING_MARKER).write_text(json.dumps(marker) + "\n")


def report_joined(runner: WorkerRunner, run: Run) -> None:
    """A worker: send the master its joined count whenever it changed (checked every JOIN_CHECK_S)."""
    told = 0
    for _ in range(int(MAX_CPU_SAMPLES / JOIN_CHECK_S)):
        if run.joined != told:
            told = run.joined
            runner.send_message(JOINED_MESSAGE, {"joined": told})
        gevent.sleep(JOIN_CHECK_S)


@events.test_stop.add_listener
def finish_run(environment: Environment, **_kwargs) -> None:
    run = current.run
    if run is None:
        return
    for greenlet in (run.cpu_sampler, run.flusher, run.window_opener, run.joined_reporter):
        if greenlet is not None:
            greenlet.kill(block=False)
    now = time.time()
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        current.run = None
        run.flush(now)
        # The master writes the files, from every worker's results. Our final Locust stats go first, so the
        # master's CSV counts every DELIVER the histogram does by the time our results arrive.
        runner._send_stats()
        runner.send_message(RESULTS_MESSAGE, {"stopped_at": now, "results": run.results.to_wire()})
        return
    if isinstance(runner, MasterRunner):
        wait_for_workers(runner, run)
    current.run = None
    # A master's workers may have stopped before it fires test_stop: time the ledger's cutoff from the first.
    run.results.finish(min(run.worker_stops, default=now))
    run.flush(now)
    report_never_arrived(environment, run)
    for line in run.results.summary_lines():
        print(line, flush=True)
    options = environment.parsed_options
    csv_prefix = getattr(options, "csv_prefix", None)
    place = output_place(getattr(options, "rtlab_out", None), csv_prefix)
    if place is not None:
        for path in run.results.write(*place):
            # The name only: the log is kept in the run's folder (a reference run is committed), which may lie anywhere.
            log.info("rtlab wrote %s", path.name)
    if csv_prefix:
        # Locust rewrites its CSVs once a second and not again at exit, so the last second would be
        # missing and the CSV's DELIVER count would fall short of the histogram's. Let it write once more.
        wait_for_rewrite(f"{csv_prefix}_stats.csv", CSV_STATS_INTERVAL_SEC + 0.25)


def wait_for_rewrite(path: str, timeout_s: float) -> None:
    """Return once `path` has been written again, or after `timeout_s`. Locust's CSV writer is a greenlet that writes
    a whole file between two switches: called once the stats are final and before this greenlet yields, whatever
    writes the file next writes the final stats. (Its time is compared with the file's time before, not with the
    clock: a file's time is the kernel's coarse clock, a few ms behind, and an overdue writer runs at our first yield.)"""
    def written() -> int | None:
        try:
            return os.stat(path).st_mtime_ns
        except OSError:
            return None

    before = written()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        gevent.sleep(0.02)
        if written() != before:
            return


def wait_for_workers(runner: MasterRunner, run: Run) -> None:
    """Make sure every worker's results are in before the master writes.

    Stopped from the web UI, a master stops its workers and waits for them before test_stop, so their
    results are here already. At the end of a headless --run-time run it fires test_stop first and
    tells the workers to quit afterwards: ask them to stop now, and wait (bounded) for what they send.
    """
    expected = runner.worker_count
    if len(run.worker_stops) >= expected:
        return
    runner.send_message(STOP_MESSAGE)
    deadline = time.monotonic() + WORKER_RESULTS_TIMEOUT_S
    while len(run.worker_stops) < expected and time.monotonic() < deadline:
        gevent.sleep(0.05)
    if len(run.worker_stops) < expected:
        log.error("rtlab: results from %d of %d workers only; the files count those", len(run.worker_stops), expected)


def report_never_arrived(environment: Environment, run: Run) -> None:
    """Fire one LOST failure per message the senders' ledger says never arrived, so Locust's stats show it."""
    for transport, totals in run.results.ledger_totals().items():
        if transport in LOSSY:
            continue  # counted in completeness.json and delivered_ratio: losing some is what it promises
        for _ in range(totals.missing):
            environment.events.request.fire(
                request_type="LOST", name=f"{transport} (never arrived)", response_time=0, response_length=0,
                exception=NeverArrived("a message of the room never reached this member"), context={},
            )


@events.init.add_listener
def exchange_results(environment: Environment, **_kwargs) -> None:
    if isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(RESULTS_MESSAGE, merge_worker_results)
        environment.runner.register_message(JOINED_MESSAGE, count_worker_joined)
    elif isinstance(environment.runner, WorkerRunner):
        # Stopping fires test_stop here, which sends our results (finish_run); a later "quit" finds us stopped.
        environment.runner.register_message(STOP_MESSAGE, lambda environment, msg, **_: environment.runner.stop())
        environment.runner.register_message(WINDOW_MESSAGE, open_worker_window)


def count_worker_joined(environment: Environment, msg, **_kwargs) -> None:
    if current.run is not None:
        current.run.worker_joined[msg.node_id] = msg.data["joined"]


def open_worker_window(environment: Environment, msg, **_kwargs) -> None:
    if current.run is not None:
        window = msg.data
        current.run.results.open_window(window["measure_from_unix_s"], window["opened_by"], window["members"],
                                        window["joined"])


def merge_worker_results(environment: Environment, msg, **_kwargs) -> None:
    run = current.run
    if run is None:
        log.warning("rtlab: results from a worker arrived after the run ended; ignored")
        return
    worker = environment.runner.get_worker_index(msg.node_id) if isinstance(environment.runner, MasterRunner) else 0
    run.results.merge_wire(msg.data["results"], label=f"worker-{worker}")
    run.worker_stops.append(msg.data["stopped_at"])
    run.results.processes = len(run.worker_stops)


@events.reset_stats.add_listener
def reset_histograms(**_kwargs) -> None:
    # Keep the histogram counting what Locust counts when its stats are reset (web UI, --reset-stats).
    # Completeness is not reset: a receiver's stream goes on, and a loss before the reset is still a loss.
    if current.run is not None:
        current.run.results.reset_deliveries()


@events.spawning_complete.add_listener
def reset_histograms_with_locust(user_count: int, **_kwargs) -> None:
    # Locust's --reset-stats resets its stats here without firing reset_stats.
    environment = current.environment
    if environment is not None and environment.reset_stats:
        reset_histograms()


def flush_batches(run: Run) -> None:
    """Record each batch of deliveries or sends once it is due, should no delivery or send come to do it."""
    for _ in range(int(MAX_CPU_SAMPLES * CPU_SAMPLE_INTERVAL_S / BATCH_S)):
        gevent.sleep(BATCH_S)
        run.flush(time.time(), due_only=True)


NO_LATENCIES = np.zeros(0)


def log_batch(stats: RequestStats, name: str, batch: Batch, request_type: str = "DELIVER") -> None:
    """Add a batch of deliveries (or of other requests) to Locust's stats as `log_request` would one by one (the
    same count, sum, extremes, response-time buckets and requests per second), through `StatsEntry.extend`, the
    way Locust's master adds up its workers: one `log_request` cost about 5 µs per delivery on the generator's
    hot path."""
    for latencies_ms, length, entry_name in ((batch.measured_ms, batch.measured_bytes, name),
                                             (batch.warmup_ms, batch.warmup_bytes, name + WARMUP_SUFFIX)):
        if not len(latencies_ms):
            continue
        part = StatsEntry(stats, entry_name, request_type)
        part.num_requests = len(latencies_ms)
        part.total_response_time = float(latencies_ms.sum())
        part.min_response_time = float(latencies_ms.min())
        part.max_response_time = float(latencies_ms.max())
        part.total_content_length = length
        part.num_reqs_per_sec = {batch.second: len(latencies_ms)}
        part.last_request_timestamp = batch.last_at
        part.response_times = response_time_buckets(latencies_ms)
        stats.get(entry_name, request_type).extend(part)
        stats.total.extend(part)


_locust_bucket_response_time = locust.stats.bucket_response_time


def response_time_buckets(latencies_ms: np.ndarray) -> dict[int, int]:
    """Count response times in Locust's buckets (`locust.stats.bucket_response_time`: about two significant
    digits) at once; a bucketing the run replaced is applied value by value."""
    bucket = locust.stats.bucket_response_time
    if bucket is _locust_bucket_response_time:
        # Its rule: under 100 ms to the ms, under 1 000 to 10 ms, under 10 000 to 100 ms, else to the second.
        step = np.select([latencies_ms < 100, latencies_ms < 1000, latencies_ms < 10000], [1.0, 10.0, 100.0], 1000.0)
        keys, counts = np.unique((np.rint(latencies_ms / step) * step).astype(np.int64), return_counts=True)
        return dict(zip(keys.tolist(), counts.tolist()))
    buckets: dict[int, int] = {}
    for value in latencies_ms.tolist():
        key = bucket(value)
        buckets[key] = buckets.get(key, 0) + 1
    return buckets


def sample_cpu(results: RunResults) -> None:
    """Record this process's CPU use, in % of one core, once a second until killed at test_stop."""
    process = psutil.Process()
    process.cpu_percent(None)  # the first reading only starts the interval
    for _ in range(int(MAX_CPU_SAMPLES)):
        gevent.sleep(CPU_SAMPLE_INTERVAL_S)
        results.record_cpu(process.cpu_percent(None), time.time())


# ---- Users: one per transport owns its client; the chat behaviour is written once ----------------------------------


class ClientUser(User):
    """Owns one transport client and turns each of its operations into a Locust request event."""

    abstract = True
    client_class: ClassVar[type[ChatClient]]
    transport_name: ClassVar[str]  # the registry entry this user drives

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.transport = self.transport_name
        self.client = self.new_client()

    def new_client(self) -> ChatClient:
        """A client of this user's transport, with the profile's options, reporting to this user."""
        options = self.client_class.options(current.profile) if current.profile else {}
        client = self.client_class(self.host, self.on_message, self.report, **options)
        client.transport = self.transport  # one client class may drive several entries
        return client

    def report(
        self,
        request_type: str,
        name: str,
        response_time_ms: float,
        response_length: int,
        exception: BaseException | None = None,
    ) -> None:
        run = current.run
        if run is not None and request_type == "RECONNECT":
            run.results.record_reconnect(self.transport, response_time_ms, exception is None)
        now = time.time()
        if run is not None and run.results.in_warmup(now):
            name += WARMUP_SUFFIX
        if run is not None and request_type == "SEND" and exception is None:
            run.record_send(self.environment.stats, name, response_time_ms, response_length, now)
            return
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=response_time_ms,
            response_length=response_length,
            exception=exception,
            context={},
        )

    def on_message(self, message: Message, received_at: float) -> None:
        """Called for every message the client receives; the chat behaviour decides what it means."""


class ChatMember(ClientUser):
    """A chat member: joins its room at the newest id, receives everything after it, sends on schedule.

    Sends are open loop: each is due at a time the SendSchedule fixed in advance and carries that
    time as `sent_at`, so a member held up by a slow server sends late but is measured from when
    it should have sent. DELIVER = receive time - sent_at, for messages from other members.
    """

    abstract = True
    wait_time = constant(0)  # the schedule does the waiting
    report_gaps = True  # a gap in the ids is reported as LOST at once (member_class sets it from the registry)

    def on_start(self) -> None:
        run = current.run
        if run is None:
            raise RuntimeError("no run in progress: rtlab users start from Locust's test_start")
        self.run = run
        self.started_at = time.time()  # connection set-up is timed from here: to joined, and to the first message
        index = next(run.members)
        runner = self.environment.runner
        # Locust workers number their members from 0 each: the worker's index keeps names unique in a room.
        worker = f"w{runner.worker_index}-" if isinstance(runner, WorkerRunner) else ""
        self.user_name = f"member-{worker}{index}"
        self.room = run.profile.room_for(index)
        if worker and getattr(self.environment.parsed_options, "rtlab_local_rooms", False):
            # Generators on several machines: a room's senders and receivers share this machine's clock.
            self.room = worker + self.room
        self.sequence = 0
        self.rng = rng = random.Random()
        self.rejoin_at = math.inf  # when this member leaves and rejoins its room next (reconnect_every_s)
        self.seed_text = "".join(rng.choices(string.ascii_letters + string.digits, k=64))
        self.tracker: ReceiverTracker | None = None
        self.ledger: LedgerReceiver | None = None
        room, user = self.room, self.user_name
        self.client.on_send_accepted = lambda sent_at: run.results.record_accepted(room, user, sent_at)
        try:
            since = self.client.latest_id(self.room)
            self.tracker = run.results.add_receiver(self.transport, since)
            self.deliveries = run.results.for_transport(self.transport)
            if self.deliveries.on_batch is None:
                stats, name = self.environment.stats, self.transport
                self.deliveries.on_batch = lambda batch: log_batch(stats, name, batch)
            self.client.on_message = self._first_message  # once, then the hot path's own on_message
            self.client.join(self.room, since)
            joined_at = time.time()
            # Listening from here: every message the others send from now on must reach this member.
            self.ledger = run.results.add_ledger_receiver(self.room, self.user_name, self.transport, joined_at)
            run.results.record_join(self.transport, (joined_at - self.started_at) * 1000)
            run.joined += 1
            # The member's sends are due from the moment it is in its room, not from before it could send.
            self.schedule = SendSchedule(run.profile.messages_per_second, run.profile.arrival, joined_at, rng)
            self.rejoin_at = self.next_rejoin(joined_at)
        except Exception:
            self.client.close()  # Locust skips on_stop when on_start fails
            raise

    @task
    def send_when_due(self) -> None:
        # Many sends per task: Locust's task machinery and the zero wait between tasks (a gevent.sleep(0), a switch
        # through the hub) cost more than the send itself. Locust stops a user by killing it, in the sleep below.
        for _ in range(SENDS_PER_TASK):
            due = self.schedule.next()
            if due == float("inf"):  # messages_per_second = 0: listen only
                self.wait_until(time.time() + 1.0)
                return
            self.wait_until(due)
            self.run.results.record_send(max(0.0, time.time() - due), due)
            text = message_text(self.seed_text, self.sequence, self.run.profile.message_bytes)
            self.sequence += 1
            self.client.send(self.user_name, text, sent_at=due)

    def wait_until(self, when: float) -> None:
        """Sleep until unix time `when`, leaving and rejoining the room on the way whenever that is due."""
        while self.rejoin_at < when:
            delay = self.rejoin_at - time.time()
            if delay > 0:
                gevent.sleep(delay)
            self.rejoin()
        delay = when - time.time()
        if delay > 0:
            gevent.sleep(delay)

    def next_rejoin(self, now: float) -> float:
        """When to leave and rejoin next: exponential gaps of mean reconnect_every_s; never when it is 0."""
        every = self.run.profile.reconnect_every_s
        return now + self.rng.expovariate(1 / every) if every > 0 else math.inf

    def rejoin(self) -> None:
        """Leave the room and join it again on a new client (a new connection, as a page reload makes), resuming
        from what the old client received (ChatClient.resume_point: where its own reconnect would resume), so nothing
        is lost or seen twice; RECONNECT times it, from closing the old client to the new one listening. A failed join
        is retried with backoff (clients.base.Backoff)."""
        started = time.perf_counter()
        old = self.client
        old.close()
        backoff = Backoff()
        while True:
            client = self.new_client()
            client.on_send_accepted = old.on_send_accepted
            try:
                client.join(self.room, old.resume_point())
                break
            except BaseException as error:  # stopped meanwhile (GreenletExit) too: nothing left open
                client.close()
                if not isinstance(error, Exception):
                    raise
                if not backoff.retry():
                    self.report("RECONNECT", self.transport, ms_since(started), 0, error)
                    raise StopUser() from error
        self.client = client
        self.report("RECONNECT", self.transport, ms_since(started), 0)
        self.rejoin_at = self.next_rejoin(time.time())

    def _first_message(self, message: Message, received_at: float) -> None:
        """The client's callback until the first message: time it, then hand the client the hot path's."""
        self.client.on_message = self.on_message
        self.run.results.record_first_message(self.transport, (received_at - self.started_at) * 1000)
        self.on_message(message, received_at)

    def on_message(self, message: Message, received_at: float) -> None:
        # The load generator's hot path: it runs for every message every member receives, and the generator
        # must stay well under the server's CPU per delivery (docs/metrics.md). So the common case (the id
        # expected next, another member's message, after the warm-up) is written out flat.
        tracker = self.tracker
        if tracker is None:  # a message before on_start finished joining cannot happen; be safe
            return
        message_id = message["id"]
        if message_id == tracker.next_id:
            tracker.next_id = message_id + 1
            tracker.received += 1
        else:
            arrival, missing = tracker.observe(message_id)
            if arrival is Arrival.GAP and self.report_gaps:
                # Reported when seen, so the web UI shows it at once; if the ids turn up later,
                # completeness.json counts them out of order instead.
                for _ in range(missing):
                    self.report("LOST", self.transport, 0, 0, MessagesLost(f"id gap in {self.room}"))
            elif arrival is Arrival.DUPLICATE:
                self.report("DUPLICATE", self.transport, 0, 0, DuplicateMessage(f"id seen twice in {self.room}"))
        user = message.get("user")
        sent_at = message.get("sent_at")
        if user == self.user_name or (sent_at.__class__ is not float and sent_at.__class__ is not int):
            return  # our own echo, or no usable sent_at (a bool is neither class): not in the ledger either
        if self.ledger is not None:
            self.ledger.count(sent_at)  # what LedgerReceiver.observe checks first is checked above
        # Into the transport's batch (clients/results.py, TransportResults): the histogram and Locust's stats get
        # a batch at a time, every delivery in it with its own latency.
        deliveries = self.deliveries
        if received_at >= deliveries.flush_at:
            deliveries.flush(received_at)
        if received_at >= deliveries.measure_from:
            deliveries.pending.append(received_at - sent_at)
            deliveries.pending_bytes += len(message.get("text", ""))
        else:
            deliveries.pending_warmup.append(received_at - sent_at)
            deliveries.pending_warmup_bytes += len(message.get("text", ""))

    def on_stop(self) -> None:
        self.client.close()


def member_class(transport: registry.Transport) -> type[ChatMember]:
    """Make the Locust user class that drives `transport`: the chat behaviour over its client class."""
    return type(transport.member_class, (ChatMember,), {
        "abstract": False,
        "client_class": registry.load(transport.client),
        "transport_name": transport.name,
        # A gap is a loss at once only where ids arrive in order and losing one is not the transport's contract.
        "report_gaps": transport.ordered and not registry.load(transport.client).expects_loss,
        "__module__": __name__,
        "__doc__": f"A chat member over {transport.label}.",
    })


# Locust finds user classes among this module's names.
LOSSY: set[str] = set()  # the transports whose clients expect to lose messages (ChatClient.expects_loss)
for _transport in registry.transports():
    globals()[_transport.member_class] = member_class(_transport)
    if globals()[_transport.member_class].client_class.expects_loss:
        LOSSY.add(_transport.name)
