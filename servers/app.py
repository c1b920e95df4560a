"""The app factory: common routes, the transport registry, and a runner shared by the CLI and the tests."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from . import admin, demo, long_polling, metrics, short_polling, websocket
from .broker import Broker, MemoryBroker
from .config import ServerConfig
from .core import ChatCore, parse_post, validate_room
from .http import BROKER, CONFIG, error_middleware, int_param, json_text, messages_json, read_json

# Adding a transport: one module with add_routes(app, config), and one line here.
TRANSPORTS: dict[str, Callable[[web.Application, ServerConfig], None]] = {
    "short-polling": short_polling.add_routes,
    "long-polling": long_polling.add_routes,
    "websocket": websocket.add_routes,
}


async def handle_healthz(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    broker = request.app[BROKER]
    draining = admin.draining(request.app)
    body = {
        # A draining instance answers 503, so the balancer's health check takes it out of rotation.
        "status": "draining" if draining else "ok",
        "transports": list(config.transports),
        "broker": broker.name,
        "compression": {"websocket_permessage_deflate": config.ws_compress, "http": False},
    }
    if config.instance:
        body["instance"] = config.instance
    if hasattr(broker, "state"):
        body[broker.name] = broker.state()  # e.g. the Redis link: connected, reconnects, last outage
    return json_text(503 if draining else 200, json.dumps(body))


async def handle_post(request: web.Request) -> web.Response:
    room = validate_room(request.match_info["room"])
    user, text, sent_at = parse_post(await read_json(request), request.app[CONFIG].limits.text_chars)
    message = await request.app[BROKER].post(room, user, text, sent_at)
    metrics.tally_of(request).messages_accepted += 1
    return json_text(201, message.json)


async def handle_history(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    room = validate_room(request.match_info["room"])
    before = int_param(request, "before", None, 0, 2**53)
    limit = int_param(request, "limit", config.history_limit_default, 1, config.limits.page)
    messages = await request.app[BROKER].history(room, before, limit)
    return json_text(200, f'{{"messages":{messages_json(messages)}}}')


async def handle_absent(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


def make_broker(config: ServerConfig) -> Broker:
    """Return the broker `config.broker_url` names: in memory over a new core, or Redis shared by instances."""
    if config.broker_url == "memory":
        return MemoryBroker(ChatCore(config.limits))
    from .redis_broker import RedisBroker  # imported only when used

    return RedisBroker(config.broker_url, config.limits)


def create_app(config: ServerConfig, broker: Broker | None = None) -> web.Application:
    """Build the app for `config.transports` over one broker (by default the one config.broker_url names)."""
    if broker is None:
        broker = make_broker(config)
    meter = metrics.Meter(config) if config.metrics else None
    middlewares = [meter.middleware, error_middleware] if meter else [error_middleware]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[BROKER] = broker
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_post("/rooms/{room}/messages", handle_post)
    app.router.add_get("/rooms/{room}/history", handle_history)
    admin.add_routes(app, config)
    routes_of: dict[str, list] = {}  # which transport added which routes, for the metrics' labels
    for name in config.transports:
        known = len(app.router.routes())
        TRANSPORTS[name](app, config)
        routes_of[name] = list(app.router.routes())[known:]
    if not short_polling.poll_route_mounted(app):
        # POST shares the path, so aiohttp would say 405; the contract says this transport is absent: 404.
        app.router.add_get("/rooms/{room}/messages", handle_absent)
    if meter:
        meter.install(app, routes_of, app.get(long_polling.LONG_POLL_HUB), app.get(websocket.WS_HUB))
    if set(config.transports) == set(TRANSPORTS):
        # The teaching page at / shows one room over every transport, so it needs them all (docs/demo.md).
        demo.add_routes(app, config)

    async def broker_ctx(app: web.Application):
        await broker.start()
        yield
        await broker.close()

    app.cleanup_ctx.append(broker_ctx)
    return app


def runner_options(config: ServerConfig) -> dict:
    """Options for web.run_app / web.AppRunner, the same in the CLI and in tests."""
    return {
        # Cancel a handler when its client goes away, so abandoned long polls are not held.
        "handler_cancellation": True,
        "access_log": web.access_logger if config.access_log else None,
        "shutdown_timeout": config.shutdown_timeout_s,
    }


@dataclass
class RunningServer:
    runner: web.AppRunner
    app: web.Application
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(config: ServerConfig, broker: Broker | None = None) -> RunningServer:
    """Start the app on config.host:config.port (port 0 picks a free one); call stop() when done."""
    app = create_app(config, broker)
    runner_class = metrics.MeteredAppRunner if config.metrics else web.AppRunner
    runner = runner_class(app, **runner_options(config))
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    site = web.SockSite(runner, sock)
    await site.start()
    return RunningServer(runner, app, config.host, sock.getsockname()[1])
