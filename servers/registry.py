"""The transport registry: each transport's name, label, colour, parts and knobs, read by every layer.

A transport is one registry entry here (or in a plugin module), one server module, one client module and,
when the demo page needs code of its own for it, one browser module. The CLI, the server, the Locust
users, the experiment runner, the figures, the notebooks, the demo page and the tests all read this
registry; nothing else lists transport names. The entries name their parts as "module:attribute" strings,
so reading the registry imports neither aiohttp nor gevent.

Plugins: a module named in the environment variable RTLAB_PLUGINS (comma-separated import names, as
pytest's PYTEST_PLUGINS) is imported the first time the registry is read, and registers its transports
with `register()`. Child processes inherit the variable, so a plugin's transport is known to the server,
Locust and the notebooks of a run alike. Installed packages can do the same through the entry-point
group "rtlab.transports".
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from . import rtc
from .settings import Knob, Value

STATIC = Path(__file__).with_name("static")
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
KNOB_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
PLUGINS_ENV = "RTLAB_PLUGINS"
ENTRY_POINT_GROUP = "rtlab.transports"
PRODUCT = "product"  # rtlab's own transports: what `--transport all` and an experiment's "all" mean
PEER = "peer"  # other implementations of the same chat, measured beside rtlab's (servers/peers, docs/peers.md)

class UnknownTransport(ValueError):
    """A transport name the registry does not know; the message lists the known ones."""


@dataclass(frozen=True, slots=True)
class Transport:
    """One transport's registry entry."""

    name: str  # "sse": the CLI's --transport, experiment files, summary rows, the /metrics label
    label: str  # "Server-Sent Events": what plots, tables and the demo page call it
    colour: str  # "#CC79A7": its colour in every plot and in the demo page
    server: str  # "servers.sse:ServerSentEvents": its servers.transport.ServerTransport subclass ("" for a process peer)
    client: str  # "clients.sse:SSEClient": its clients.base.ChatClient subclass
    browser: Path | None = None  # its demo pane, an ES module (servers/static/transports/<name>.js)
    server_knobs: tuple[Knob, ...] = ()
    profile_knobs: tuple[Knob, ...] = ()
    group: str = PRODUCT  # PRODUCT, or PEER for the other implementations that run beside rtlab's own
    summary: str = ""  # one line: how a member learns of a new message
    compare_with: str = ""  # a peer: rtlab's own transport its figures are divided by (the ratios; rtlab = 1.0)
    packages: tuple[str, ...] = ()  # distributions whose versions a run's manifest records (a peer's library)
    member: str = ""  # its Locust user class, when several entries share a client class (default: from it)
    counts_payload: bool = True  # its server counts the delivered messages' own bytes (a peer does not: absent)
    # What its members' bytes travel on: "tcp", or "udp" (WebRTC: datagrams, counted at the server's ICE sockets, which
    # a TCP capture or a TCP proxy does not see).
    carrier: str = "tcp"
    # What recovers (or not) a lost packet of its messages: "TCP", "SCTP" (WebRTC's data channels, over DTLS over UDP)
    # or "QUIC" (WebTransport, over UDP). The packet-loss notebook compares transports by it.
    protocol: str = "TCP"
    # A peer of another stack, not mounted in rtlab's aiohttp app: "module:serve", run by `python -m servers` on the
    # socket it binds (servers/peers/process.py says what it must serve). Its bytes come from the run's packet
    # capture only (capture = true), its deliveries from its own integer on /metrics.
    process: str = ""
    # Whether its messages reach a member in id order. False: each travels on its own (an unordered channel, a QUIC
    # stream per message), so a later one may overtake one held up by a loss; a gap is then no loss until the run
    # ends without it (the Locust user does not report it at once).
    ordered: bool = True
    # The transport's own expected mean delivery latency from its profile knobs, where theory gives one
    # (short polling: half the poll interval); shown beside the measured mean.
    theory_latency_ms: Callable[[Mapping[str, Value]], float] | None = field(default=None, compare=False)
    # The longest a healthy run may hold a message back before this transport delivers it, from its profile
    # knobs (short polling: one poll interval); the senders' ledger waits twice that for stragglers.
    max_delay_s: Callable[[Mapping[str, Value]], float] | None = field(default=None, compare=False)
    # The longest a healthy connection of this transport stays silent, from its server knobs (a held long
    # poll: its cap; a socket or stream: its heartbeat): a proxy's idle timeouts must be longer.
    max_silence_s: Callable[[Mapping[str, Value]], float] | None = field(default=None, compare=False)

    @property
    def member_class(self) -> str:
        """The Locust user class that drives this transport: `member`, or its client class name, Client -> Member."""
        if self.member:
            return self.member
        name = self.client.rsplit(":", 1)[1]
        return (name[: -len("Client")] if name.endswith("Client") else name) + "Member"


_registry: dict[str, Transport] = {}
_plugins_loaded = False


def register(transport: Transport) -> Transport:
    """Add `transport` to the registry; its name and knob names must be new. Return it."""
    if not NAME_RE.fullmatch(transport.name):
        raise ValueError(f"transport name {transport.name!r} must match ^[a-z][a-z0-9-]{{0,31}}$")
    if transport.name in _registry or transport.name in ("all",):
        raise ValueError(f"transport {transport.name!r} is registered already")
    if not re.fullmatch(r"#[0-9A-Fa-f]{6}", transport.colour):
        raise ValueError(f"{transport.name}: colour must be #RRGGBB, got {transport.colour!r}")
    if bool(transport.server) == bool(transport.process):
        raise ValueError(f"{transport.name}: give server (a ServerTransport) or process (a peer's serve), not both")
    if transport.process and (transport.group != PEER or transport.counts_payload):
        raise ValueError(f"{transport.name}: a process is a peer's (group=PEER, counts_payload=False)")
    for spec in (transport.server or transport.process, transport.client):
        if spec.count(":") != 1:
            raise ValueError(f"{transport.name}: {spec!r} must be 'module:attribute'")
    if transport.browser is not None and not Path(transport.browser).is_file():
        raise ValueError(f"{transport.name}: browser module {transport.browser} does not exist")
    if transport.member_class in {t.member_class for t in _registry.values()}:
        raise ValueError(f"{transport.name}: Locust user class {transport.member_class} is taken: set member=")
    taken = {knob.name for t in _registry.values() for knob in (*t.server_knobs, *t.profile_knobs)}
    for knob in (*transport.server_knobs, *transport.profile_knobs):
        if not KNOB_RE.fullmatch(knob.name):
            raise ValueError(f"{transport.name}: knob name {knob.name!r} must match ^[a-z][a-z0-9_]{{0,63}}$")
        if knob.name in taken:
            raise ValueError(f"{transport.name}: knob {knob.name!r} belongs to another transport already")
        taken.add(knob.name)
        knob.check(knob.default)
    _registry[transport.name] = transport
    return transport


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in filter(None, (part.strip() for part in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def transports(group: str | None = None) -> tuple[Transport, ...]:
    """Every registered transport in registration order (of one group, when given)."""
    _load_plugins()
    return tuple(t for t in _registry.values() if group is None or t.group == group)


def names(group: str | None = PRODUCT) -> tuple[str, ...]:
    """The names of the registered transports of `group` (default: rtlab's own; None: every one)."""
    return tuple(t.name for t in transports(group))


def get(name: str) -> Transport:
    """Return the entry of `name`; raise UnknownTransport naming the known ones."""
    _load_plugins()
    try:
        return _registry[name]
    except KeyError:
        raise UnknownTransport(f"unknown transport {name!r}; choose from {', '.join(_registry)}") from None


def expand(selection: str | Iterable[str]) -> tuple[str, ...]:
    """Resolve "all" (rtlab's own transports) or a list of names into names, checking each."""
    if isinstance(selection, str):
        return names() if selection == "all" else (get(selection).name,)
    return tuple(get(name).name for name in selection)


def server_knobs() -> dict[str, Knob]:
    """Every registered transport's server knobs, by name."""
    return {knob.name: knob for t in transports() for knob in t.server_knobs}


def profile_knobs() -> dict[str, Knob]:
    """Every registered transport's profile knobs, by name."""
    return {knob.name: knob for t in transports() for knob in t.profile_knobs}


def load(spec: str) -> Any:
    """Import and return the attribute a "module:attribute" string names."""
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def missing_packages(name: str) -> list[str]:
    """The distributions transport `name` needs (its `packages`) that are not installed here."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in get(name).packages:
        try:
            version(package)
        except PackageNotFoundError:
            out.append(package)
    return out


def colour(name: str, default: str = "#777777") -> str:
    """The colour of transport `name`, or `default` for a name the registry does not know (an old run)."""
    _load_plugins()
    entry = _registry.get(name)
    return entry.colour if entry else default


def label(name: str) -> str:
    """The label of transport `name`, or the name itself when the registry does not know it."""
    _load_plugins()
    entry = _registry.get(name)
    return entry.label if entry else name


# ---- rtlab's own transports -------------------------------------------------------------------------------------
# Colours: Okabe-Ito, which colour-blind readers and grey print tell apart.

register(Transport(
    name="short-polling",
    label="Short polling",
    colour="#D55E00",
    server="servers.polling:ShortPolling",
    client="clients.short_polling:ShortPollingClient",
    browser=STATIC / "transports" / "short-polling.js",
    summary="the member asks for what is new every poll interval; the server answers at once",
    profile_knobs=(
        Knob("poll_interval_s", 1.0, "short polling: from the start of one poll to the start of the next, s",
             low=0, low_open=True, high=3600, label="short-poll interval T (s)", phrase="poll every {:g} s"),
    ),
    theory_latency_ms=lambda knobs: float(knobs["poll_interval_s"]) * 1000 / 2,
    max_delay_s=lambda knobs: float(knobs["poll_interval_s"]),
))

register(Transport(
    name="long-polling",
    label="Long polling",
    colour="#0072B2",
    server="servers.polling:LongPolling",
    client="clients.long_polling:LongPollingClient",
    browser=STATIC / "transports" / "long-polling.js",
    summary="the member asks and the server holds the request until a message arrives or the wait runs out",
    server_knobs=(
        Knob("long_poll_max_wait_s", 30.0, "cap on a long poll's wait=, s", low=0, low_open=True, high=3600,
             flag="--long-poll-max-wait"),
    ),
    profile_knobs=(
        Knob("long_poll_wait_s", 20.0, "long polling: wait= sent with each poll, s (the server caps it, 30 s by default)",
             low=0, low_open=True, high=30, label="long-poll wait (s)"),
    ),
    max_silence_s=lambda knobs: float(knobs["long_poll_max_wait_s"]),
))

register(Transport(
    name="websocket",
    label="WebSocket",
    colour="#009E73",
    server="servers.websocket:WebSocket",
    client="clients.websocket:WebSocketClient",
    browser=STATIC / "transports" / "websocket.js",
    summary="one upgraded, persistent, full-duplex connection; the server pushes each message as a frame",
    server_knobs=(
        Knob("ws_send_queue", 1024, "frames queued per WebSocket before it is closed with 1013", low=1,
             high=1_000_000),
        Knob("ws_heartbeat_s", 20.0, "WebSocket ping interval, s; a peer that misses the pong is dropped",
             low=0, low_open=True, high=3600, flag="--ws-heartbeat"),
        Knob("ws_compress", False, "negotiate permessage-deflate"),
        Knob("max_ws_message_bytes", 64 * 1024, "largest WebSocket message a client may send (1009)", low=1,
             high=16 * 1024 * 1024),
    ),
    max_silence_s=lambda knobs: float(knobs["ws_heartbeat_s"]),
))

register(Transport(
    name="sse",
    label="Server-Sent Events",
    colour="#CC79A7",
    server="servers.sse:ServerSentEvents",
    client="clients.sse:SSEClient",
    browser=STATIC / "transports" / "sse.js",
    summary="one long HTTP response the server streams events down; sends are ordinary POSTs",
    server_knobs=(
        Knob("sse_heartbeat_s", 15.0, "comment heartbeat on every event stream, s: idle streams stay open, "
             "dead peers are noticed", low=0, low_open=True, high=3600, flag="--sse-heartbeat"),
        Knob("sse_retry_ms", 1000, "the reconnection delay every stream tells its client (retry:), ms", low=0,
             high=3_600_000),
        Knob("sse_send_queue", 1024, "events queued per stream before it is cut off (it resumes with "
             "Last-Event-ID)", low=1, high=1_000_000),
        Knob("sse_max_stream_s", 0.0, "end every stream after this long, s, so clients reconnect (with "
             "Last-Event-ID) and a balancer can spread them again; 0: never", low=0, high=86_400,
             flag="--sse-max-stream"),
    ),
    max_silence_s=lambda knobs: float(knobs["sse_heartbeat_s"]),
))


def _webrtc_knobs(prefix: str, what: str) -> tuple[Knob, ...]:
    flag = "--" + prefix.replace("_", "-")
    return (
        Knob(f"{prefix}_max_peers", 1000, f"{what} peer connections held at once (connecting or open); beyond, an "
             "offer is answered 503", low=1, high=1_000_000),
        Knob(f"{prefix}_connect_timeout_s", 10.0, f"{what}: a peer connection whose chat channel is not open this "
             "long after the offer is closed, s", low=0, low_open=True, high=600, flag=f"{flag}-connect-timeout"),
        Knob(f"{prefix}_send_queue", 1024, f"{what}: messages queued per data channel (beyond its SCTP buffer) "
             "before it is closed (1013)", low=1, high=1_000_000),
        Knob(f"{prefix}_ice_addresses", rtc.LOOPBACK, f"{what}: the addresses ICE offers host candidates on "
             "(repeatable; no other address of the machine, no STUN, no TURN)", flag=f"{flag}-ice-address",
             validate=rtc.check_addresses),
    )


register(Transport(
    name="webrtc",
    label="WebRTC data channel",
    colour="#E69F00",
    server="servers.webrtc:WebRTC",
    client="clients.webrtc:WebRTCClient",
    browser=STATIC / "transports" / "webrtc.js",
    summary="one SDP offer and answer over HTTP, then a reliable, ordered data channel over UDP (ICE, DTLS, SCTP)",
    server_knobs=_webrtc_knobs("webrtc", "WebRTC"),
    carrier="udp",
    protocol="SCTP",
))

register(Transport(
    name="webrtc-unreliable",
    label="WebRTC, unreliable",
    colour="#56B4E9",
    server="servers.webrtc:UnreliableWebRTC",
    client="clients.webrtc:UnreliableWebRTCClient",
    browser=STATIC / "transports" / "webrtc.js",
    summary="as WebRTC, but the data channel is unordered and never retransmits: a lost datagram's message stays lost",
    server_knobs=_webrtc_knobs("webrtc_unreliable", "WebRTC, unreliable"),
    carrier="udp",
    protocol="SCTP",
    ordered=False,
))


def _webtransport_knobs(prefix: str, what: str) -> tuple[Knob, ...]:
    return (
        Knob(f"{prefix}_max_sessions", 1000, f"{what} sessions held at once; beyond, a CONNECT is answered 503",
             low=1, high=1_000_000),
        Knob(f"{prefix}_max_streams", 16, f"{what}: streams a session's client may have open at once (its sends); "
             "beyond, a new one is stopped with an error message", low=1, high=1000),
        Knob(f"{prefix}_send_queue", 1024, f"{what}: messages queued per session (beyond its streams' 64 KiB in "
             "flight) before it is closed (1013)", low=1, high=1_000_000),
    )


register(Transport(
    name="webtransport",
    label="WebTransport (streams)",
    colour="#000000",
    server="servers.webtransport:WebTransport",
    client="clients.webtransport:WebTransportClient",
    browser=STATIC / "transports" / "webtransport.js",
    summary="one QUIC connection (HTTP/3 CONNECT) per member; each message on a QUIC stream of its own, so a lost "
            "packet holds up only its own message",
    server_knobs=(
        Knob("webtransport_port", 0, "the UDP port of the HTTP/3 endpoint both WebTransport transports share; 0: "
             "the HTTP port's number", low=0, high=65535),
        Knob("webtransport_heartbeat_s", 10.0, "a QUIC PING on every WebTransport connection this often, s, so a "
             "listening member stays inside the idle timeout (three heartbeats)", low=0, low_open=True, high=600,
             flag="--webtransport-heartbeat"),
        Knob("webtransport_streams", "per-message", "how pushes map onto QUIC streams: a stream per message, or one "
             "long stream per session (in order: a lost packet holds up everything behind it)",
             choices=("per-message", "one")),
        *_webtransport_knobs("webtransport", "WebTransport"),
    ),
    max_silence_s=lambda knobs: float(knobs["webtransport_heartbeat_s"]),
    carrier="udp",
    protocol="QUIC",
    ordered=False,
))

register(Transport(
    name="webtransport-datagram",
    label="WebTransport (datagrams)",
    colour="#EE6677",
    server="servers.webtransport:DatagramWebTransport",
    client="clients.webtransport:DatagramWebTransportClient",
    browser=STATIC / "transports" / "webtransport.js",
    summary="as WebTransport, but each message is one QUIC datagram: never retransmitted, in no order; a lost "
            "packet's message stays lost",
    server_knobs=_webtransport_knobs("webtransport_datagram", "WebTransport (datagrams)"),
    max_silence_s=lambda knobs: float(knobs.get("webtransport_heartbeat_s", 10.0)),
    carrier="udp",
    protocol="QUIC",
    ordered=False,
))


# ---- peers: the same chat served by other code, measured beside rtlab's own (docs/peers.md) ----------------------
# Not in "all": an experiment names them. Colours: Paul Tol's muted scheme, apart from rtlab's Okabe-Ito.

register(Transport(
    name="floor-websocket",
    counts_payload=False,
    label="Floor: WebSocket",
    colour="#117733",
    server="servers.peers.floor_websocket:FloorWebSocket",
    client="clients.websocket:WebSocketClient",
    member="FloorWebSocketMember",
    group=PEER,
    compare_with="websocket",
    summary="the yardstick: WebSocket fan-out as an expert writes it in forty lines of aiohttp",
    max_silence_s=lambda knobs: 20.0,
))

register(Transport(
    name="floor-long-polling",
    counts_payload=False,
    label="Floor: long polling",
    colour="#88CCEE",
    server="servers.peers.floor_long_polling:FloorLongPolling",
    client="clients.long_polling:LongPollingClient",
    member="FloorLongPollingMember",
    group=PEER,
    compare_with="long-polling",
    summary="the yardstick: long polling as an expert writes it in forty lines of aiohttp",
    max_silence_s=lambda knobs: 30.0,
))

register(Transport(
    name="floor-short-polling",
    counts_payload=False,
    label="Floor: short polling",
    colour="#DDCC77",
    server="servers.peers.floor_short_polling:FloorShortPolling",
    client="clients.short_polling:ShortPollingClient",
    member="FloorShortPollingMember",
    group=PEER,
    compare_with="short-polling",
    summary="the yardstick: a poll answered at once from a room's log, as an expert writes it in forty lines of aiohttp",
    theory_latency_ms=lambda knobs: float(knobs["poll_interval_s"]) * 1000 / 2,
    max_delay_s=lambda knobs: float(knobs["poll_interval_s"]),
))

register(Transport(
    name="floor-sse",
    counts_payload=False,
    label="Floor: SSE",
    colour="#AA4499",
    server="servers.peers.floor_sse:FloorServerSentEvents",
    client="clients.sse:SSEClient",
    member="FloorSSEMember",
    group=PEER,
    compare_with="sse",
    summary="the yardstick: an event stream per member as an expert writes it in forty lines of aiohttp",
    max_silence_s=lambda knobs: 30.0,
))

register(Transport(
    name="socketio-websocket",
    counts_payload=False,
    label="Socket.IO: WebSocket",
    colour="#999933",
    server="servers.peers.socketio_chat:SocketIOChat",
    client="clients.peers.socketio:SocketIOWebSocketClient",
    group=PEER,
    compare_with="websocket",
    packages=("python-socketio", "python-engineio"),
    summary="python-socketio's AsyncServer on aiohttp, Engine.IO's WebSocket transport only",
    max_silence_s=lambda knobs: 25.0,
))

register(Transport(
    name="socketio-polling",
    counts_payload=False,
    label="Socket.IO: long polling",
    colour="#332288",
    server="servers.peers.socketio_chat:SocketIOPollingChat",
    client="clients.peers.socketio:SocketIOPollingClient",
    group=PEER,
    compare_with="long-polling",
    packages=("python-socketio", "python-engineio"),
    summary="python-socketio's AsyncServer on aiohttp, Engine.IO's HTTP long-polling transport only",
    max_silence_s=lambda knobs: 25.0,
))


# ---- peers of other stacks, run as processes of their own (servers/peers/process.py; `pip install -e '.[peers]'`) --

register(Transport(
    name="fastapi-websocket",
    counts_payload=False,
    label="FastAPI: WebSocket",
    colour="#44AA99",
    server="",
    process="servers.peers.fastapi_websocket:serve",
    client="clients.websocket:WebSocketClient",
    member="FastAPIWebSocketMember",
    group=PEER,
    compare_with="websocket",
    packages=("fastapi", "starlette", "uvicorn", "websockets", "uvloop", "httptools"),
    summary="FastAPI on uvicorn (its defaults), the ConnectionManager of FastAPI's WebSocket docs, one per room",
    max_silence_s=lambda knobs: 20.0,
))

register(Transport(
    name="websockets-broadcast",
    counts_payload=False,
    label="websockets: broadcast()",
    colour="#882255",
    server="",
    process="servers.peers.websockets_broadcast:serve",
    client="clients.websocket:WebSocketClient",
    member="WebsocketsBroadcastMember",
    group=PEER,
    compare_with="websocket",
    packages=("websockets",),
    summary="the websockets library's asyncio server, broadcast() to a room's connections, compression=None",
    max_silence_s=lambda knobs: 20.0,
))

register(Transport(
    name="channels-websocket",
    counts_payload=False,
    label="Django Channels: WebSocket",
    colour="#661100",
    server="",
    process="servers.peers.channels_chat:serve",
    client="clients.websocket:WebSocketClient",
    member="ChannelsWebSocketMember",
    group=PEER,
    compare_with="websocket",
    packages=("channels", "daphne", "django", "twisted", "autobahn"),
    summary="the Channels tutorial's chat consumer, groups on the in-memory channel layer, served by daphne",
    max_silence_s=lambda knobs: 20.0,
))

register(Transport(
    name="sse-starlette",
    counts_payload=False,
    label="sse-starlette: SSE",
    colour="#6699CC",
    server="",
    process="servers.peers.sse_starlette_chat:serve",
    client="clients.sse:SSEClient",
    member="SSEStarletteMember",
    group=PEER,
    compare_with="sse",
    packages=("sse-starlette", "fastapi", "starlette", "uvicorn", "uvloop", "httptools"),
    summary="an EventSourceResponse per member (sse-starlette on FastAPI and uvicorn), posts as ordinary POSTs",
    max_silence_s=lambda knobs: 15.0,
))
