"""Instrumentation: exact wire bytes per connection, chat counters and event-loop lag, served at /metrics."""

from __future__ import annotations

import asyncio
import bisect
import gc
import itertools
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from . import registry
from .config import ServerConfig
from .guard import ConnectionGuard, GuardedRequestHandler

COMMON = "common"  # routes every transport shares (POST, history, healthz) when several are mounted
UNMATCHED = "unmatched"  # the `route` label of requests no route matched (404, 405, a malformed request line)
METRICS_PATH = "/metrics"
# The 0.0.4 text format is what generate_latest() writes and what every Prometheus version reads.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOOP_LAG_INTERVAL_S = 0.25
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Tally:
    """Plain integer counters for one transport label, read only when /metrics is scraped.

    Hot paths add to these attributes directly: an integer add is the whole cost, no lock, no label lookup.
    """

    __slots__ = (
        "connections_open",
        "connections_opened",
        "empty_polls",
        "label",
        "messages_accepted",
        "messages_delivered",
        "payload_sent_bytes",
        "polls",
        "requests",
        "wire_received_bytes",
        "wire_sent_bytes",
    )

    def __init__(self, label: str) -> None:
        self.label = label
        self.wire_received_bytes = 0
        self.wire_sent_bytes = 0
        self.connections_opened = 0
        self.connections_open = 0
        self.requests: dict[str, int] = {}  # "GET /rooms/{room}/messages" -> count
        self.messages_accepted = 0
        self.messages_delivered = 0
        self.payload_sent_bytes = 0  # the delivered messages' own JSON, UTF-8
        self.polls = 0
        self.empty_polls = 0


class LagHistogram:
    """A pause (event-loop lag, a garbage collection) in buckets of LOOP_LAG_BUCKETS_S (plus +Inf), as plain counts."""

    __slots__ = ("counts", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(LOOP_LAG_BUCKETS_S) + 1)
        self.sum_s = 0.0

    def observe(self, lag_s: float) -> None:
        self.counts[bisect.bisect_left(LOOP_LAG_BUCKETS_S, lag_s)] += 1
        self.sum_s += lag_s

    def buckets(self) -> list[tuple[str, int]]:
        """Cumulative (le, count) pairs, +Inf last, as prometheus_client's HistogramMetricFamily takes them."""
        cumulative = list(itertools.accumulate(self.counts))
        return [(repr(bound), n) for bound, n in zip(LOOP_LAG_BUCKETS_S, cumulative)] + [("+Inf", cumulative[-1])]


# Where handlers count when instrumentation is off: absorbs the adds, never exported.
NULL_TALLY = Tally("off")
TALLY = web.RequestKey("rtlab_tally", Tally)


def tally_of(request: web.Request) -> Tally:
    """Return the counters of the transport label this request was routed to."""
    return request.get(TALLY, NULL_TALLY)


class ClientLedger(Protocol):
    """Bytes of one client, across every connection and request it makes (see Meter.client_of)."""

    bytes_in: int
    bytes_out: int


class WireCount:
    """Bytes in and out of one connection or one datagram flow, counted under a transport's label (and a client's
    ledger) once it is known: until then they wait in `pending_*`, and `settle` hands them over. A TCP connection
    waits for its request to be routed (MeteredTransport), a UDP flow for its session to say what it is (WebRTC's
    channel, an HTTP/3 session's CONNECT: servers.datagrams.DatagramMeter). Subclasses hold the four slots."""

    __slots__ = ()
    tally: Tally | None
    client: ClientLedger | None
    pending_in: int
    pending_out: int

    def count_in(self, size: int) -> None:
        tally = self.tally
        if tally is None:
            self.pending_in += size
        else:
            tally.wire_received_bytes += size
            if self.client is not None:
                self.client.bytes_in += size

    def count_out(self, size: int) -> None:
        tally = self.tally
        if tally is None:
            self.pending_out += size
        else:
            tally.wire_sent_bytes += size
            if self.client is not None:
                self.client.bytes_out += size

    def settle(self, tally: Tally, client: ClientLedger | None = None) -> None:
        """Count under `tally` (and `client`) from now on, the bytes waiting so far included."""
        self.tally = tally
        self.client = client
        if client is not None:
            client.bytes_in += self.pending_in
            client.bytes_out += self.pending_out
        tally.wire_received_bytes += self.pending_in
        tally.wire_sent_bytes += self.pending_out
        self.pending_in = self.pending_out = 0


class MeteredTransport(WireCount, asyncio.Transport):
    """A connection's transport that counts every byte written to it; also the connection's byte ledger.

    Bytes are added to `tally`, the label of the request the connection is serving. Between requests
    (`tally` is None) bytes wait in `pending_*` and go to the next request's label once it is routed,
    so a request's head, read before routing, is counted with that request.
    """

    __slots__ = ("_transport", "client", "last", "opened_as", "pending_in", "pending_out", "tally")

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self.tally: Tally | None = None  # the label being served now; None between requests
        self.last: Tally | None = None  # the label of the latest routed request
        self.opened_as: Tally | None = None  # the label this connection is counted under
        self.pending_in = 0
        self.pending_out = 0
        self.client: ClientLedger | None = None  # who sent the request being served, when it says

    def write(self, data: Any) -> None:
        transport = self._transport
        transport.write(data)
        # Lost before, or the send found it reset: asyncio dropped the bytes, and they never reached the wire.
        if not getattr(transport, "_conn_lost", 0):
            self.count_out(len(data))

    def writelines(self, list_of_data: Iterable[Any]) -> None:
        chunks = list_of_data if isinstance(list_of_data, (list, tuple)) else list(list_of_data)
        self._transport.writelines(chunks)
        if not getattr(self._transport, "_conn_lost", 0):  # dropped, as in write()
            self.count_out(sum(map(len, chunks)))

    # Everything else is the real transport's.
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()


class MeteredRequestHandler(GuardedRequestHandler):
    """The guarded per-connection protocol, counting bytes received and wrapping the transport to count bytes sent."""

    __slots__ = ("_meter", "_wire")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, meter: Meter, **kwargs: Any) -> None:
        super().__init__(manager, guard, **kwargs)
        self._meter = meter
        self._wire: MeteredTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._wire = MeteredTransport(transport)  # type: ignore[arg-type]
        super().connection_made(self._wire)

    def data_received(self, data: bytes) -> None:
        wire = self._wire
        if wire is not None:
            wire.count_in(len(data))
        super().data_received(data)

    def routed(self, tally: Tally, client: ClientLedger | None = None) -> None:
        """Serve `tally`'s label (and `client`) from now on; the bytes since the last request are theirs."""
        wire = self._wire
        if wire is None:
            return
        wire.settle(tally, client)
        wire.last = tally
        if wire.opened_as is None and tally is not self._meter.excluded:
            wire.opened_as = tally
            tally.connections_opened += 1
            tally.connections_open += 1

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            # The response is written; what arrives next is the next request's.
            if self._wire is not None:
                self._wire.tally = None
                self._wire.client = None

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        wire, self._wire = self._wire, None
        if wire is not None:
            self._meter.connection_closed(wire)


class Meter:
    """One app's instrumentation: counters per transport label, its own Prometheus registry, /metrics.

    Labels: on a server with one transport every request is labelled with it (POST and history
    included: they are part of what that transport costs). With several transports mounted, each
    route is labelled with the transport that mounted it, the shared routes with "common", and a route
    two transports share (the poll route) by the request: the first owner whose `claims(request)` holds
    (a poll asking to be held is long polling's, any other short polling's). /metrics itself is counted
    nowhere.
    """

    def __init__(self, config: ServerConfig) -> None:
        transports = config.transports
        self.single = transports[0] if len(transports) == 1 else None
        labels = (self.single,) if self.single else (*transports, COMMON)
        self.tallies = {label: Tally(label) for label in labels}
        self.default = self.tallies[self.single or COMMON]  # requests no route claims, connections never routed
        self.no_payload = {name for name in transports if not registry.get(name).counts_payload}
        self.excluded = Tally("metrics")  # /metrics requests and their bytes; never exported
        if self.single:
            self.mode = self.single
        elif set(transports) == set(registry.names()):
            self.mode = "all"
        else:
            self.mode = "+".join(transports)
        self.loop_lag = LagHistogram()
        # Pauses of the cyclic garbage collector, by generation: a full collection (2) walks every tracked object,
        # and with 10 000 connections held it stops the loop for hundreds of ms (docs/metrics.md).
        self.gc_pauses = [LagHistogram() for _ in range(3)]
        self._gc_started: float | None = None
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))
        self.transports: dict[str, Any] = {}  # name -> servers.transport.ServerTransport: gauges, claims
        self.sources: list[Callable[[], Iterable[Any]]] = []
        # route -> (tally, key), or (None, key) for a shared route: then _shared[route] lists (claims, tally).
        self._routes: dict[Any, tuple[Tally | None, str]] = {}
        self._shared: dict[Any, list[tuple[Callable[[web.Request], bool], Tally]]] = {}
        self._owners: dict[Any, list[str]] = {}
        self._metrics_route: Any = None
        self._lag_timer: asyncio.TimerHandle | None = None
        self._unlabelled: set[Any] = set()  # routes counted nowhere, like /metrics (see exclude)
        # Set by a caller that wants bytes per client too (the demo page): request -> its ledger, or None.
        self.client_of: Callable[[web.Request], ClientLedger | None] | None = None

    def exclude(self, routes: Iterable[Any]) -> None:
        """Count `routes` nowhere, like /metrics: instruments of the lab, not traffic of a transport."""
        self._unlabelled.update(routes)

    def install(self, app: web.Application, routes_of: dict[str, list[Any]], transports: dict[str, Any],
                gauges: Iterable[Callable[[], Iterable[Any]]] = ()) -> None:
        """Mount /metrics and the loop-lag watcher; `routes_of` maps each transport to the routes it owns,
        `transports` are the mounted servers.transport.ServerTransport objects (their gauges and claims), and
        `gauges` are more sources of metric families read at scrape time (the guard's).

        The app's middleware must also call `self.route` first (servers.app does) and the app be run by
        servers.aio.LabAppRunner, or no bytes are counted.
        """
        app[METER] = self
        self.transports = dict(transports)
        self.sources = [*(t.gauges for t in transports.values()), *gauges]
        self._owners = {}
        for name, routes in routes_of.items():
            for route in routes:
                self._owners.setdefault(route, []).append(name)
        self._metrics_route = app.router.add_get(METRICS_PATH, self.handle_metrics, allow_head=False)
        app.on_startup.append(self._index_routes)  # by then every route exists
        app.cleanup_ctx.append(self._watch_loop_lag)
        app.cleanup_ctx.append(self._watch_gc)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": METRICS_CONTENT_TYPE})

    def connection_closed(self, wire: MeteredTransport) -> None:
        """Settle a closed connection: bytes never claimed by a request go to its last label."""
        wire.settle(wire.last or self.default)
        if wire.opened_as is not None:
            wire.opened_as.connections_open -= 1
        elif wire.last is None:
            # It carried no routed request (a malformed one, or none at all): still a connection.
            self.default.connections_opened += 1

    async def _index_routes(self, app: web.Application) -> None:
        for route in app.router.routes():
            key = f"{route.method} {route.resource.canonical if route.resource else '?'}"
            if route is self._metrics_route or route in self._unlabelled:
                self._routes[route] = (self.excluded, key)
                continue
            owners = self._owners.get(route, [])
            if self.single:
                self._routes[route] = (self.default, key)
            elif not owners:
                self._routes[route] = (self.tallies[COMMON], key)
            elif len(owners) == 1:
                self._routes[route] = (self.tallies[owners[0]], key)
            else:
                self._routes[route] = (None, key)
                self._shared[route] = [(self.transports[name].claims, self.tallies[name]) for name in owners]

    def route(self, request: web.Request) -> None:
        """Count `request` under its transport's label (the first step of servers.app's one middleware, so a
        refused request is counted too): the bytes its connection carries from now on are that label's."""
        route = request.match_info.route
        entry = self._routes.get(route)
        if entry is None:
            tally, key = self.default, UNMATCHED
        else:
            tally, key = entry
            if tally is None:
                owners = self._shared[route]
                tally = next((t for claims, t in owners if claims(request)), owners[0][1])
        protocol = request.protocol
        if isinstance(protocol, MeteredRequestHandler):
            client_of = self.client_of
            protocol.routed(tally, client_of(request) if client_of is not None else None)
        requests = tally.requests
        requests[key] = requests.get(key, 0) + 1
        request[TALLY] = tally

    async def _watch_loop_lag(self, app: web.Application):
        loop = asyncio.get_running_loop()
        due = loop.time() + LOOP_LAG_INTERVAL_S
        self._lag_timer = loop.call_at(due, self._lag_tick, loop, due)
        yield
        self._lag_timer.cancel()

    async def _watch_gc(self, app: web.Application):
        gc.callbacks.append(self._gc_callback)
        yield
        gc.callbacks.remove(self._gc_callback)

    def _gc_callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None:
            self.gc_pauses[min(info["generation"], 2)].observe(time.perf_counter() - self._gc_started)
            self._gc_started = None

    def _lag_tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        # A bare timer callback, not a task: on an idle VM every wake-up costs ~0.15 ms of CPU, and a
        # task's sleep adds half as much again; at 4 Hz the whole watcher costs ~0.6 ms per second.
        now = loop.time()
        self.loop_lag.observe(max(0.0, now - due))
        due = now + LOOP_LAG_INTERVAL_S
        self._lag_timer = loop.call_at(due, self._lag_tick, loop, due)


METER = web.AppKey("meter", Meter)


# (family, name, help, Tally attribute): the per-label figures, exported in this order.
_PER_LABEL = (
    (CounterMetricFamily, "rtlab_wire_received_bytes",
     "TCP payload bytes received: request heads and bodies, and every frame a transport reads after a handshake "
     "(a UDP transport: every datagram's payload too).", "wire_received_bytes"),
    (CounterMetricFamily, "rtlab_wire_sent_bytes",
     "TCP payload bytes written: response heads and bodies, frames, streamed events, heartbeats (a UDP transport: "
     "every datagram's payload too).", "wire_sent_bytes"),
    (CounterMetricFamily, "rtlab_connections_opened",
     "Connections opened, counted under the label of their first request.", "connections_opened"),
    (GaugeMetricFamily, "rtlab_connections_open",
     "Connections open that have carried a request, under the label of their first.", "connections_open"),
    (CounterMetricFamily, "rtlab_messages_accepted",
     "Chat messages stored, from an HTTP POST or a transport's own send (a WebSocket send frame).", "messages_accepted"),
    (CounterMetricFamily, "rtlab_messages_delivered",
     "Chat messages written to clients: in poll responses, as message frames or as events.", "messages_delivered"),
    (CounterMetricFamily, "rtlab_message_payload_sent_bytes",
     "Bytes of the delivered messages' own JSON object (UTF-8), without HTTP heads, the poll envelope, a "
     "frame's header and envelope, or an event's field names.", "payload_sent_bytes"),
    (CounterMetricFamily, "rtlab_polls", "Poll responses, short or long.", "polls"),
    (CounterMetricFamily, "rtlab_empty_polls", "Poll responses that carried no message.", "empty_polls"),
)


class _Collector:
    """Turns the tallies into Prometheus families at scrape time, so counting never takes a lock."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def collect(self):
        meter = self.meter
        tallies = list(meter.tallies.values())
        for kind, name, doc, attribute in _PER_LABEL:
            family = kind(name, doc, labels=["transport"])
            for t in tallies:
                if attribute == "payload_sent_bytes" and t.label in meter.no_payload:
                    continue  # its server does not count them (a peer): absent, never a zero
                family.add_metric([t.label], getattr(t, attribute))
            yield family

        requests = CounterMetricFamily(
            "rtlab_requests", "HTTP requests by route, upgrades and event streams included.", labels=["transport", "route"]
        )
        for t in tallies:
            for route, count in sorted(t.requests.items()):
                requests.add_metric([t.label, route], count)
        yield requests

        lag = meter.loop_lag
        histogram = HistogramMetricFamily(
            "rtlab_event_loop_lag_seconds",
            f"How late a task scheduled every {LOOP_LAG_INTERVAL_S} s woke, past its due time.",
            labels=["transport"],
        )
        histogram.add_metric([meter.mode], lag.buckets(), lag.sum_s)
        yield histogram

        pauses = HistogramMetricFamily(
            "rtlab_gc_pause_seconds",
            "How long Python's cyclic garbage collector stopped this process, by generation (2: a full collection).",
            labels=["transport", "generation"],
        )
        for generation, pause in enumerate(meter.gc_pauses):
            pauses.add_metric([meter.mode, str(generation)], pause.buckets(), pause.sum_s)
        yield pauses

        try:  # scraped from the handler, on the loop's own thread
            held = len(asyncio.all_tasks())
        except RuntimeError:  # collected outside a running loop: nothing to count
            held = None
        if held is not None:
            tasks = GaugeMetricFamily("rtlab_asyncio_tasks", "Tasks the server's event loop holds now "
                                      "(asyncio.all_tasks): under a steady load, a count that only grows is a leak.",
                                      labels=["transport"])
            tasks.add_metric([meter.mode], held)
            yield tasks

        for source in meter.sources:
            yield from source()
