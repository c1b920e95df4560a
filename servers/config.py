"""Server configuration: read once at the edge (the CLI or an experiment), frozen, passed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from . import registry
from .core import Limits

BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    transports: tuple[str, ...] = field(default_factory=registry.names)
    host: str = "127.0.0.1"
    port: int = 8080
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 64 * 1024  # HTTP request bodies; larger gets 413
    history_limit_default: int = 50
    shutdown_timeout_s: float = 3.0
    access_log: bool = False  # logging a line per request costs about as much as the request
    metrics: bool = True  # count wire bytes and chat events, serve /metrics; off only to measure its cost
    broker_url: str = "memory"  # "memory" (this process only) or redis://host:port/db (shared by instances)
    instance: str = ""  # a name for this instance, reported by /healthz (which instance answered)
    demo: bool | None = None  # the teaching page at /; None: when more than one transport is mounted
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
