"""Server configuration: read once at the edge (the CLI or an experiment), frozen, passed down.

Every setting is declared once, as a field with `setting()` metadata (servers.settings): the CLI's flags,
their validation and an experiment's `[server]` keys are derived from these declarations, and a
transport's own settings from its registry entry's knobs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import registry
from .core import Limits
from .settings import Knob, field_knobs, setting

BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    transports: tuple[str, ...] = field(default_factory=registry.names)
    host: str = field(default="127.0.0.1", metadata=setting(
        "address to bind (loopback unless you mean it)", experiment=False))
    port: int = field(default=8080, metadata=setting("port to bind; 0 picks a free one", low=0, high=65535,
                                                     experiment=False))
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = field(default=64 * 1024, metadata=setting(
        "largest HTTP request body, bytes (413)", low=1, high=64 * 1024 * 1024))
    history_limit_default: int = 50
    shutdown_timeout_s: float = 3.0
    access_log: bool = field(default=False, metadata=setting(
        "log a line per request (costs about as much as the request)"))
    metrics: bool = field(default=True, metadata=setting(
        "count wire bytes and chat events and serve GET /metrics (off only to measure what it costs)"))
    broker_url: str = field(default="memory", metadata=setting(
        "memory (this process only) or redis://host:port/db: rooms, ids and history shared by every instance",
        flag="--broker", experiment=False))
    instance: str = field(default="", metadata=setting(
        "a name for this instance, reported by /healthz", experiment=False))
    demo: bool | None = field(default=None, metadata=setting(
        "serve the teaching page at / (default: when more than one transport is mounted)", value_type=bool,
        experiment=False))

    # ---- what keeps hostile pages and clients out (docs/security.md) ----
    allow_origins: tuple[str, ...] = field(default=(), metadata=setting(
        "an Origin served besides the server's own (scheme://host:port), repeatable; a browser request from "
        "any other origin gets 403", flag="--allow-origin", value_type=tuple))
    allow_hosts: tuple[str, ...] = field(default=(), metadata=setting(
        "a Host name served besides IP addresses and localhost, repeatable; any other name gets 403 "
        "(a DNS-rebinding page)", flag="--allow-host", value_type=tuple))
    send_rate_per_s: float = field(default=20.0, metadata=setting(
        "messages a member may send per second, sustained (its token bucket's rate); beyond: 429, or an "
        "error frame", low=0, low_open=True, high=1_000_000, flag="--send-rate"))
    send_burst: int = field(default=40, metadata=setting(
        "messages a member may send at once (its token bucket's size); a WebSocket member refused this many "
        "times running is closed with 1008", low=1, high=1_000_000))
    max_connections: int = field(default=20_000, metadata=setting(
        "connections held at once; beyond, a new one is answered 503 and closed", low=1, high=10_000_000))
    max_connections_per_client: int = field(default=5_000, metadata=setting(
        "connections held at once from one client address; beyond, 503 and closed", low=1, high=10_000_000))
    request_head_timeout_s: float = field(default=5.0, metadata=setting(
        "a request head (or a POST body) not complete this long after its first byte, or a new connection "
        "silent this long, is closed (slowloris)", low=0, low_open=True, high=10, flag="--request-head-timeout"))
    keepalive_timeout_s: float = field(default=30.0, metadata=setting(
        "an idle keep-alive connection is closed after this long", low=0, low_open=True, high=3600,
        flag="--keepalive-timeout"))

    gc_freeze: bool = field(default=False, metadata=setting(
        "freeze what survives each full garbage collection (gc.freeze), and what the server holds once started, so "
        "the next full collection walks only what is newer: with 10 000 held connections a pause of milliseconds, "
        "not half a second; but cycles among frozen objects are never collected", value_type=bool))

    # The transports' own settings (servers.registry.Knob), by knob name; a knob not given has its default.
    knobs: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.transports:
            raise ValueError(f"no transport given; choose from {', '.join(registry.names(None))}")
        for name in self.transports:
            registry.get(name)  # raises UnknownTransport, naming the known ones
        if len(set(self.transports)) != len(self.transports):
            raise ValueError("a transport is listed twice")
        if self.broker_url != "memory" and not self.broker_url.startswith(BROKER_SCHEMES):
            raise ValueError(f"broker must be memory or a redis://host:port/db URL, got {self.broker_url!r}")
        for knob in own_knobs():
            if knob.name in LIMIT_FIELDS:
                knob.check(getattr(self.limits, knob.name))
            else:
                object.__setattr__(self, knob.name, knob.check(getattr(self, knob.name)))
        known = registry.server_knobs()
        checked = {}
        for name, value in self.knobs.items():
            if name not in known:
                raise ValueError(f"unknown server knob {name!r}; the knobs are {', '.join(known)}")
            checked[name] = known[name].check(value)
        object.__setattr__(self, "knobs", MappingProxyType(checked))

    def knob(self, name: str) -> object:
        """The value of a transport's server knob: as configured, else its registered default."""
        if name in self.knobs:
            return self.knobs[name]
        return registry.server_knobs()[name].default

    @property
    def demo_mounted(self) -> bool:
        return self.demo if self.demo is not None else len(self.transports) > 1

    def settings(self) -> dict[str, object]:
        """The value of every setting a run may change (the server's own limits and its transports' knobs; not
        where it listens or its broker, which /healthz says otherwise): what /healthz and manifests record."""
        values = {knob.name: getattr(self.limits if knob.name in LIMIT_FIELDS else self, knob.name)
                  for knob in own_knobs() if knob.experiment}
        for name in self.transports:
            for knob in registry.get(name).server_knobs:
                values[knob.name] = self.knob(knob.name)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


LIMIT_FIELDS = {knob.name for knob in field_knobs(Limits)}


def own_knobs() -> list[Knob]:
    """The server's own settings (ServerConfig's and Limits' declared fields), in the order --help lists them."""
    return [*field_knobs(ServerConfig), *field_knobs(Limits)]


def server_settings() -> dict[str, Knob]:
    """Every setting a server takes, its own and every registered transport's, by name."""
    return {**{knob.name: knob for knob in own_knobs()}, **registry.server_knobs()}


def config_from_settings(transports: tuple[str, ...], values: Mapping[str, object]) -> ServerConfig:
    """Build a ServerConfig from setting values by name (the CLI's, an experiment's); the rest keep defaults."""
    own = {knob.name for knob in field_knobs(ServerConfig)}
    transport_knobs = registry.server_knobs()
    unknown = sorted(set(values) - own - LIMIT_FIELDS - set(transport_knobs))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    limits = Limits(**{k: v for k, v in values.items() if k in LIMIT_FIELDS})
    return ServerConfig(
        transports=transports,
        limits=limits,
        knobs={k: v for k, v in values.items() if k in transport_knobs},
        **{k: v for k, v in values.items() if k in own},
    )
