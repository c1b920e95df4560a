"""uvicorn as `uvicorn main:app` runs it (its defaults), on the socket `python -m servers` bound, saying when it is
ready and what it chose (event loop, HTTP and WebSocket implementations, permessage-deflate) for /healthz."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn


def name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


class Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready: Callable[[], None], facts: dict[str, Any]) -> None:
        super().__init__(config)
        self.ready, self.facts = ready, facts

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        config = self.config
        self.facts.update(loop=name(type(asyncio.get_running_loop())), http=name(config.http_protocol_class),
                          ws=name(config.ws_protocol_class) if config.ws_protocol_class else None,
                          ws_per_message_deflate=config.ws_per_message_deflate,
                          ws_ping_interval_s=config.ws_ping_interval, ws_max_queue=config.ws_max_queue)
        if self.started:
            self.ready()


def run(app: Any, sock: socket.socket, ready: Callable[[], None], facts: dict[str, Any]) -> None:
    """Serve `app` with uvicorn's defaults until SIGTERM; only the access log is off, as every server's in a run."""
    Server(uvicorn.Config(app, access_log=False, log_level="warning"), ready, facts).run(sockets=[sock])
