"""The server part every transport implements: mount its routes, close its members, report its gauges."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .config import ServerConfig

CLOSE_GOING_AWAY = 1001  # the server is shutting down
CLOSE_SERVICE_RESTART = 1012  # a drain: reconnect (through the balancer) and resume after the last id seen


class ServerTransport:
    """One mounted transport. The app builds one per name in `config.transports` (the class its registry
    entry names) and talks to it only through these methods, so app, admin and metrics import no transport.

    The app's broker (servers.http.BROKER) is set before construction; state belongs on the instance, and
    background work starts in `mount` (e.g. on `app.on_startup`) and stops in `close_members`.
    """

    # A transport that serves every chat route itself (a peer's whole server): the app mounts none of its
    # common routes (posts, history) beside it, and no other transport.
    standalone: bool = False

    def __init__(self, name: str, app: web.Application, config: ServerConfig) -> None:
        self.name = name  # one class may serve several registry entries (e.g. both polling transports)
        self.app = app
        self.config = config

    def mount(self) -> list[web.AbstractRoute]:
        """Add this transport's routes to the app; return them (their requests are counted under its name).

        A route two transports share (both polling transports answer the poll route) is returned by both;
        `claims` then says, request by request, whose it is.
        """
        raise NotImplementedError

    def claims(self, request: web.Request) -> bool:
        """On a route this transport shares with another: is this request this transport's?"""
        return True

    async def listening(self, host: str, port: int) -> None:
        """The HTTP server is listening on `host`:`port` (the port is known only now when 0 was asked for): a
        transport with a socket of its own (an HTTP/3 endpoint's UDP port) opens it here, and closes it on the app's
        cleanup."""

    def page_sources(self) -> tuple[str, ...]:
        """Origins other than the page's own that its pane connects to (an HTTP/3 endpoint's https://host:UDP_PORT), for
        the demo page's Content-Security-Policy (connect-src)."""
        return ()

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        """Close every member now and every one that arrives later, telling them `code` where the transport
        can (CLOSE_GOING_AWAY at shutdown, CLOSE_SERVICE_RESTART for a drain). Return what was closed, e.g.
        {"websockets_closed": 12}, for the drain's answer."""
        return {}

    def held(self, room: str) -> int:
        """How many members of `room` this transport holds now (an open connection, a held request): those a
        message there reaches at once from this instance. None held (short polling): 0."""
        return 0

    def gauges(self) -> Iterable[Any]:
        """Prometheus metric families (prometheus_client.core) of this transport's state, read at scrape time."""
        return ()

    def health(self) -> dict[str, Any]:
        """Fields this transport adds to /healthz; a "compression" dict is merged with the others'."""
        return {}


MOUNTED = web.AppKey("transports", dict)  # name -> ServerTransport, in config.transports order


def mounted(app: web.Application) -> dict[str, ServerTransport]:
    return app.get(MOUNTED, {})
