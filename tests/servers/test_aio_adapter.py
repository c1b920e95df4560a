"""servers/aio.py reaches into aiohttp's internals (no public hook gives the protocol class): these fail
loudly, naming what changed, when an aiohttp upgrade moves any of them."""

from __future__ import annotations

import inspect

from aiohttp import web, web_protocol

from servers.aio import LabServer
from servers.guard import GuardedRequestHandler
from servers.metrics import MeteredRequestHandler


async def test_the_internals_the_adapter_uses_are_still_there():
    assert inspect.iscoroutinefunction(web.AppRunner._make_server), "AppRunner._make_server is gone"
    server = web.Server(lambda request: None, keepalive_timeout=5)
    assert hasattr(server, "_loop"), "web.Server keeps its loop elsewhere"
    assert server._kwargs == {"keepalive_timeout": 5}, "web.Server keeps the protocol's kwargs elsewhere"
    for name in ("request_handler", "request_factory", "handler_cancellation"):
        assert hasattr(server, name), f"web.Server.{name} is gone"
    # The protocol methods the guard and the meter override, with the arguments they pass on.
    init = inspect.signature(web_protocol.RequestHandler.__init__).parameters
    assert list(init)[:2] == ["self", "manager"] and "keepalive_timeout" in init and "loop" in init
    assert list(inspect.signature(web_protocol.RequestHandler.finish_response).parameters) == [
        "self", "request", "resp", "start_time"]
    for method in ("connection_made", "data_received", "connection_lost"):
        assert callable(getattr(web_protocol.RequestHandler, method)), method


async def test_the_meter_knows_when_asyncio_drops_a_write():
    """servers/metrics.py counts no byte written to a lost connection (asyncio's `_conn_lost`: it drops them)."""
    import asyncio
    import socket

    left, right = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().connect_accepted_socket(asyncio.Protocol, left)
    assert transport._conn_lost == 0, "asyncio's socket transport no longer says whether its connection is lost"
    transport.close()
    await asyncio.sleep(0)
    assert transport._conn_lost > 0
    right.close()


async def test_every_connection_gets_the_labs_protocol(app_server):
    metered = await app_server("websocket")
    bare = await app_server("websocket", metrics=False)
    for server, kind in ((metered, MeteredRequestHandler), (bare, GuardedRequestHandler)):
        factory = server.runner.server
        assert isinstance(factory, LabServer)
        assert type(factory()) is kind  # what aiohttp's loop gets for each new connection
