"""The one place rtlab reaches into aiohttp's internals: the per-connection protocol its server makes.

aiohttp has no public hook for the protocol class, so LabAppRunner wraps the web.Server that AppRunner makes
(its private `_make_server`, and the Server's `_loop` and `_kwargs`) to hand out the lab's protocol: guarded
(servers.guard: connection caps, request timeouts) and, with metrics on, metered (servers.metrics: exact
bytes). tests/servers/test_aio_adapter.py fails loudly when an aiohttp upgrade changes any of these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol

from .guard import GUARD, GuardedRequestHandler
from .metrics import METER, MeteredRequestHandler

HandlerFactory = Callable[..., web_protocol.RequestHandler]


class LabServer(web.Server):
    """aiohttp's protocol factory, handing out the lab's protocol instead of its own."""

    def __init__(self, base: web.Server, make_handler: HandlerFactory) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._make_handler = make_handler

    def __call__(self) -> web_protocol.RequestHandler:
        return self._make_handler(self, loop=self._loop, **self._kwargs)


class LabAppRunner(web.AppRunner):
    """An AppRunner whose connections are guarded by the app's Guard and, with metrics on, counted by its Meter."""

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        guard = self.app[GUARD].connections
        meter = self.app.get(METER)

        def make_handler(manager: web.Server, **kwargs: Any) -> web_protocol.RequestHandler:
            if meter is not None:
                return MeteredRequestHandler(manager, guard, meter, **kwargs)
            return GuardedRequestHandler(manager, guard, **kwargs)

        return LabServer(base, make_handler)
