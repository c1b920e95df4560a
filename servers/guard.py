"""What keeps hostile pages and hostile clients out (docs/security.md): Host and Origin checks, per-member send
rate limits, connection caps, and timeouts for requests that never finish (slowloris)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web, web_protocol
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .config import ServerConfig
from .core import RateLimited
from .fds import fd_budget
from .http import error_response

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
MAX_BUCKETS = 100_000  # send-rate buckets kept; the least recently used is forgotten first (it was full anyway)


# ---- send rate ---------------------------------------------------------------------------------------------------


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; a send takes one."""

    __slots__ = ("rate", "burst", "tokens", "at")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> float:
        """Take a token; return 0 when there was one, else the seconds until there will be (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    @property
    def full_at(self) -> float:
        return self.at + (self.burst - self.tokens) / self.rate


class SendLimiter:
    """A token bucket per member (for HTTP sends: per room and user), at most `max_keys` kept."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_BUCKETS) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self.refused = 0  # sends refused, HTTP and WebSocket alike

    def bucket(self) -> TokenBucket:
        """A bucket of one's own (a WebSocket member's: the socket is the member)."""
        return TokenBucket(self.rate, self.burst, self.clock())

    def take(self, bucket: TokenBucket) -> float:
        wait = bucket.take(self.clock())
        if wait:
            self.refused += 1
        return wait

    def admit(self, member: Any) -> bool:
        """Take a token for a send of a member that is its connection (a WebSocket, a data channel, an HTTP/3
        session: `member.bucket`, made here at its first send, and `member.refused_running`). Return True to accept
        it; raise RateLimited when refused; return False once it has kept on past `burst` refusals in a row: cut it
        off (close 1008)."""
        if member.bucket is None:  # made at its first send: most members listen far more than they talk
            member.bucket = self.bucket()
        wait = self.take(member.bucket)
        if not wait:
            member.refused_running = 0
            return True
        member.refused_running += 1
        if member.refused_running >= self.burst:
            return False
        raise RateLimited(f"sending faster than {self.rate:g} messages/s: wait {wait:.2f} s", wait)

    def check(self, key: Hashable) -> float:
        """Take a token from `key`'s bucket; return 0, or the seconds to wait before the next send."""
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return self.take(bucket)


# ---- Host and Origin --------------------------------------------------------------------------------------------


VERDICTS_KEPT = 1024  # (Host, Origin, scheme) verdicts remembered


def split_host(host: str) -> tuple[str, int | None]:
    """Split a Host header (`name`, `name:port`, `[v6]:port`) into its lower-cased name and port."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name, int(port) if port.isdigit() else None


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normal_origin(origin: str) -> str | None:
    """`scheme://host[:port]`, lower-cased, the scheme's default port left out; None when it is not one."""
    try:
        url = urlsplit(origin.strip())
        port = url.port
    except ValueError:
        return None
    if url.scheme not in DEFAULT_PORTS or not url.hostname or url.path not in ("", "/") or url.query:
        return None
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return f"{url.scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[url.scheme]) else f":{port}")


class OriginPolicy:
    """Which Host names and which page origins a request may carry.

    Host: an IP address, `localhost`, or a name in `allow_hosts`: a page on any other name that resolves here
    (DNS rebinding) reaches the server as a request for a name it does not know, and is refused. Origin,
    when a request carries one (browsers do on WebSocket upgrades, event streams, posts, cross-origin reads):
    the server's own (the scheme, host and port the request was addressed to) or one in `allow_origins`.
    """

    def __init__(self, allow_origins: Iterable[str] = (), allow_hosts: Iterable[str] = ()) -> None:
        origins = {}
        for origin in allow_origins:
            normal = normal_origin(origin)
            if normal is None:
                raise ValueError(f"--allow-origin must be scheme://host[:port], got {origin!r}")
            origins[normal] = origin
        self.allow_origins = frozenset(origins)
        self.allow_hosts = frozenset(split_host(h)[0] for h in allow_hosts)
        self._verdicts: dict[tuple[str | None, str | None, str], str | None] = {}

    def problem(self, request: web.Request) -> str | None:
        """Why this request must be refused (403), or None."""
        headers = request.headers
        host, origin = headers.get("Host"), headers.get("Origin")
        key = (host, origin, request.scheme)
        verdicts = self._verdicts
        try:
            return verdicts[key]  # a server sees a handful of (Host, Origin) pairs: judge each once
        except KeyError:
            pass
        verdict = self._judge(host, origin, request.scheme)
        if len(verdicts) >= VERDICTS_KEPT:
            verdicts.clear()  # a client inventing names does not grow memory
        verdicts[key] = verdict
        return verdict

    def session_problem(self, authority: str, origin: str | None, page_port: int) -> str | None:
        """Why a session a page opens on another port (an HTTP/3 CONNECT, to https://host:UDP_PORT) must be
        refused (403), or None: its :authority must be a name of this server, as a Host, and its Origin, when it has
        one, the page's own (http://that name:`page_port`, where this server serves pages) or an allowed one."""
        name, _ = split_host(authority)
        host = f"[{name}]" if ":" in name else name
        return self._judge(authority, origin, "http", own=normal_origin(f"http://{host}:{page_port}"))

    def _judge(self, host: str | None, origin: str | None, scheme: str, own: str | None = None) -> str | None:
        if host is not None:
            name, _ = split_host(host)
            if not (is_ip(name) or name == "localhost" or name in self.allow_hosts):
                return (f"Host {name!r} is not a name of this server (an address, localhost, or --allow-host): "
                        "refused, as a page on a name that resolves here would be")
        if origin is None:
            return None
        normal = normal_origin(origin)
        if own is None:
            own = normal_origin(f"{scheme}://{host}") if host else None
        if normal is not None and (normal == own or normal in self.allow_origins):
            return None
        return (f"Origin {origin!r} may not use this server: only its own pages ({own or 'none'}) and "
                "--allow-origin may")


# ---- connections -------------------------------------------------------------------------------------------------


def canned_response(status: int, reason: str, error: str, headers: dict[str, str] | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for a client aiohttp is not serving."""
    body = json.dumps({"error": error}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


class ConnectionGuard:
    """Connections held, in all and per client address, against their caps; heads that took too long."""

    def __init__(self, config: ServerConfig) -> None:
        # A connection is a file descriptor: beyond the process's limit accept() fails (EMFILE), so the cap is
        # kept under it, with room for the listening socket, the broker's connections and files.
        self.max_total = min(config.max_connections, fd_budget())
        self.max_per_client = min(config.max_connections_per_client, self.max_total)
        self.head_timeout_s = config.request_head_timeout_s
        self.open = 0
        self.per_client: dict[str, int] = {}
        self.refused = 0
        self.request_timeouts = 0

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or return why it is refused."""
        if self.open >= self.max_total:
            self.refused += 1
            return f"this server holds its most connections ({self.max_total}); try again later"
        held = self.per_client.get(address, 0)
        if held >= self.max_per_client:
            self.refused += 1
            return f"your address holds its most connections here ({self.max_per_client}); close some"
        self.open += 1
        self.per_client[address] = held + 1
        return None

    def release(self, address: str) -> None:
        self.open -= 1
        held = self.per_client.get(address, 0) - 1
        if held > 0:
            self.per_client[address] = held
        else:
            self.per_client.pop(address, None)


class GuardedRequestHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection protocol, refusing connections over the caps and closing a connection whose
    request head (or whose first request) does not arrive in time. servers.app's middleware calls `head_done` (Guard.refuse)."""

    # One per connection, held as long as it is: slots, not a dict per instance (aiohttp's RequestHandler has slots).
    __slots__ = ("_guard", "_address", "_head_timer", "_in_request", "_refused")

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._in_request = False
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        reason = self._guard.admit(address)
        if reason is not None:
            self._refused = True
            transport.write(canned_response(503, "Service Unavailable", reason, {"Retry-After": "1"}))
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._arm()  # a connection that says nothing at all is closed too

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if not self._in_request and self._head_timer is None and b"\r\n\r\n" not in data:
            # The first bytes of a request head that is not complete in them, on a kept-alive connection: its
            # clock starts now. (A head that arrives whole, as nearly every one does, needs no clock.)
            self._arm()
        super().data_received(data)

    def head_done(self) -> None:
        """The request head is in and routed: stop its clock."""
        self._in_request = True
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    async def finish_response(self, request: Any, resp: Any, start_time: float | None) -> Any:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._in_request = False  # idle until the next head; aiohttp's keep-alive timeout bounds that

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._address is not None:
            self._guard.release(self._address)
            self._address = None
        transport = self.transport
        super().connection_lost(exc)
        # aiohttp drops the WebSocket's frame parser here but keeps its heartbeat hook (a method of the
        # WebSocketResponse, whose request holds this protocol): a cycle that keeps every closed WebSocket's
        # connection, transport and buffers until a full garbage collection (docs/metrics.md, the soak).
        self._data_received_cb = None
        # asyncio's socket transport keeps a method of itself for its selector (`_read_ready_cb`): a cycle that keeps
        # the closed transport and its socket object (7 objects, ~1.5 kB a connection) until a full collection, which
        # the half-hour soak's WebSocket server never made (it grew ~57 kB a minute). Its reader is off the selector
        # before the connection is lost: drop the method. (Another loop's transport has no such attribute.)
        transport = getattr(transport, "_transport", transport)  # under the meter's MeteredTransport
        if getattr(transport, "_read_ready_cb", None) is not None:
            transport._read_ready_cb = None

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._guard.head_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_request or self.transport is None:
            return
        self._guard.request_timeouts += 1
        self.transport.write(canned_response(408, "Request Timeout",
                                             f"no whole request within {self._guard.head_timeout_s:g} s"))
        self.transport.close()


# ---- the app's part ----------------------------------------------------------------------------------------------


class Guard:
    """One app's protections: its policy, its limiter and its connection guard, its request checks and gauges."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.policy = OriginPolicy(config.allow_origins, config.allow_hosts)
        self.limiter = SendLimiter(config.send_rate_per_s, config.send_burst)
        self.connections = ConnectionGuard(config)

    def refuse(self, request: web.Request) -> web.Response | None:
        """Before anything reads `request`: stop its head's clock, and answer 403 when its Host or Origin may not
        use this server (servers.app's one middleware calls this, then the handler, then `answered`)."""
        protocol = request.protocol
        if isinstance(protocol, GuardedRequestHandler):
            protocol.head_done()
        problem = self.policy.problem(request)
        return None if problem is None else error_response(403, problem)

    def answered(self, response: web.StreamResponse) -> None:
        if response.status == 408:  # a body that stopped coming (servers.http.read_json)
            self.connections.request_timeouts += 1

    def gauges(self, label: str):
        """The guard's counts as metric families, labelled `transport=label` (the server's mode, as loop lag is)."""
        c = self.connections
        for kind, name, doc, value in (
            (GaugeMetricFamily, "rtlab_guard_connections", "Connections held now (the caps count these).", c.open),
            (GaugeMetricFamily, "rtlab_guard_connections_max",
             "The cap on connections in force: --max-connections, or less when the open-file limit is lower.",
             c.max_total),
            (CounterMetricFamily, "rtlab_guard_connections_refused",
             "Connections refused with 503 at accept: over --max-connections or --max-connections-per-client.",
             c.refused),
            (CounterMetricFamily, "rtlab_guard_request_timeouts",
             "Connections closed because a request head or body was not complete in --request-head-timeout.",
             c.request_timeouts),
            (CounterMetricFamily, "rtlab_guard_sends_refused",
             "Sends refused by the per-member rate limit (429, or a WebSocket error frame).", self.limiter.refused),
        ):
            family = kind(name, doc, labels=["transport"])
            family.add_metric([label], value)
            yield family


GUARD = web.AppKey("guard", Guard)


def retry_after(wait_s: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
