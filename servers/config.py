"""Server configuration: read once at the edge (the CLI or an experiment), frozen, passed down."""

from __future__ import annotations

from dataclasses import dataclass, field

from .core import Limits

TRANSPORT_NAMES = ("short-polling", "long-polling", "websocket")
BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    transports: tuple[str, ...] = TRANSPORT_NAMES
    host: str = "127.0.0.1"
    port: int = 8080
    limits: Limits = field(default_factory=Limits)
    max_body_bytes: int = 64 * 1024  # HTTP request bodies; larger gets 413
    max_ws_message_bytes: int = 64 * 1024  # WebSocket messages; larger closes with 1009
    poll_limit_default: int = 100
    history_limit_default: int = 50
    long_poll_max_wait_s: float = 30.0  # a longer `wait` is capped to this
    ws_send_queue: int = 1024  # messages queued per WebSocket before it is closed with 1013
    ws_heartbeat_s: float = 20.0  # ping interval; a peer that misses the pong is dropped
    ws_compress: bool = False  # permessage-deflate; off unless asked for, reported by /healthz
    shutdown_timeout_s: float = 3.0
    access_log: bool = False  # logging a line per request costs about as much as the request
    metrics: bool = True  # count wire bytes and chat events, serve /metrics; off only to measure its cost
    broker_url: str = "memory"  # "memory" (this process only) or redis://host:port/db (shared by instances)
    instance: str = ""  # a name for this instance, reported by /healthz (which instance answered)

    def __post_init__(self) -> None:
        unknown = [t for t in self.transports if t not in TRANSPORT_NAMES]
        if unknown or not self.transports:
            raise ValueError(f"unknown transport {unknown[0] if unknown else '(none)'}; choose from {TRANSPORT_NAMES}")
        if self.broker_url != "memory" and not self.broker_url.startswith(BROKER_SCHEMES):
            raise ValueError(f"broker must be memory or a redis://host:port/db URL, got {self.broker_url!r}")
