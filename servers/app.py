"""The app factory: common routes, the mounted transports, and a runner shared by the CLI and the tests."""

from __future__ import annotations

import gc
import json
import socket
from dataclasses import dataclass

from aiohttp import web

from . import admin, demo, metrics, observe, registry
from .aio import LabAppRunner
from .broker import Broker, MemoryBroker
from .config import ServerConfig
from .core import ChatCore, RateLimited, parse_post, validate_room
from .guard import GUARD, Guard
from .http import BROKER, CONFIG, error_answer, int_param, json_text, messages_json, messages_resource, read_json
from .transport import CLOSE_GOING_AWAY, MOUNTED, ServerTransport, mounted


async def handle_healthz(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    broker = request.app[BROKER]
    draining = admin.draining(request.app)
    body = {
        # A draining instance answers 503, so the balancer's health check takes it out of rotation.
        "status": "draining" if draining else "ok",
        "transports": list(config.transports),
        "broker": broker.name,
    }
    compression: dict[str, bool] = {}
    for transport in mounted(request.app).values():
        extra = dict(transport.health())
        compression.update(extra.pop("compression", {}))
        body.update(extra)
    body["compression"] = {**compression, "http": False}
    if config.instance:
        body["instance"] = config.instance
    # The settings a run may change (limits, timeouts, origins, the transports' knobs), as configured here.
    body["settings"] = config.settings()
    if hasattr(broker, "state"):
        body[broker.name] = broker.state()  # e.g. the Redis link: connected, reconnects, last outage
    return json_text(503 if draining else 200, json.dumps(body))


async def handle_post(request: web.Request) -> web.Response:
    room = validate_room(request.match_info["room"])
    user, text, sent_at = parse_post(await read_json(request), request.app[CONFIG].limits.text_chars)
    limiter = request.app[GUARD].limiter
    wait = limiter.check((room, user))  # the member: this name in this room
    if wait:
        raise RateLimited(f"{user} sends faster than {limiter.rate:g} messages/s in {room}: wait {wait:.2f} s", wait)
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


def make_broker(config: ServerConfig) -> Broker:
    """Return the broker `config.broker_url` names: in memory over a new core, or Redis shared by instances."""
    if config.broker_url == "memory":
        return MemoryBroker(ChatCore(config.limits))
    from .redis_broker import RedisBroker  # imported only when used

    return RedisBroker(config.broker_url, config.limits)


def lab_middleware(meter: metrics.Meter | None, guard: Guard, observer: observe.Observer):
    """The app's one middleware: count the request (the meter first, so a refused request is still counted),
    refuse it when its Host or Origin may not (the guard, before anything reads it), run the handler, and turn
    what it raises into a JSON error; while someone watches the instance (/admin/events), report its start and end. One layer, not three: a held WebSocket, event stream or long poll keeps
    its middlewares' frames for as long as it lives, and every request pays for each layer."""

    @web.middleware
    async def middleware(request: web.Request, handler):
        if meter is not None:
            meter.route(request)
        refused = guard.refuse(request)
        if refused is not None:
            return refused
        number = observer.opened(request) if observer.watching else None
        response = None
        try:
            response = await handler(request)
        except Exception as error:  # noqa: BLE001 (error_answer re-raises what is not an error: a redirect)
            response = await error_answer(request, error)
        finally:  # also when the handler is cancelled: its client went away
            if number is not None:
                observer.closed(number, None if response is None else response.status)
        guard.answered(response)
        return response

    return middleware


def create_app(config: ServerConfig, broker: Broker | None = None) -> web.Application:
    """Build the app for `config.transports` over one broker (by default the one config.broker_url names)."""
    if broker is None:
        broker = make_broker(config)
    meter = metrics.Meter(config) if config.metrics else None
    guard = Guard(config)
    observer = observe.Observer(config)
    app = web.Application(middlewares=[lab_middleware(meter, guard, observer)], client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[BROKER] = observe.install(app, observer, broker)  # the transports' broker: reports what it does when watched
    app[GUARD] = guard
    classes = {name: registry.load(registry.get(name).server) for name in config.transports}
    standalone = [name for name, cls in classes.items() if cls.standalone]
    if standalone and len(classes) > 1:
        raise ValueError(f"{standalone[0]} serves every chat route itself: mount it alone")
    app.router.add_get("/healthz", handle_healthz)
    if not standalone:
        messages_resource(app).add_route("POST", handle_post)
        app.router.add_get("/rooms/{room}/history", handle_history)
    admin.add_routes(app, config)
    transports: dict[str, ServerTransport] = {}
    routes_of: dict[str, list[web.AbstractRoute]] = {}  # which transport owns which routes, for the metrics' labels
    for name, cls in classes.items():
        transport = cls(name, app, config)
        routes_of[name] = transport.mount()
        transports[name] = transport
    app[MOUNTED] = transports
    if meter:
        meter.install(app, routes_of, transports, gauges=[lambda: guard.gauges(meter.mode)])
        meter.exclude([app[observe.EVENTS_ROUTE]])
    if config.demo_mounted:
        # The teaching page at / shows one room over every mounted transport (docs/demo.md).
        demo.add_routes(app, config)

    async def close_members(app: web.Application) -> None:
        for transport in transports.values():
            await transport.close_members(CLOSE_GOING_AWAY, "server shutdown")

    app.on_shutdown.append(close_members)

    async def broker_ctx(app: web.Application):
        await broker.start()
        yield
        await broker.close()

    app.cleanup_ctx.append(broker_ctx)
    if config.gc_freeze:
        app.cleanup_ctx.append(freeze_survivors)
    return app


def _freeze_after_full_collection(phase: str, info: dict) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()  # what survived a full collection is long-lived: held connections, history, the app


async def freeze_survivors(app: web.Application):
    """--gc-freeze: a full collection walks every object the collector tracks, about 75 per held aiohttp connection,
    and stops the process while it does (0.4-0.65 s at 10 000 connections, docs/metrics.md). Frozen objects are
    left out of the walk. The price: a cycle among them that becomes garbage (a closed connection's, say) is never
    collected, so the process grows with the churn of connections; what refcounting frees is freed as ever."""
    gc.collect()
    gc.freeze()  # the modules, the app, the routes: everything the server holds once it has started
    gc.callbacks.append(_freeze_after_full_collection)
    yield
    gc.callbacks.remove(_freeze_after_full_collection)
    gc.unfreeze()


def runner_options(config: ServerConfig) -> dict:
    """Options for web.run_app / web.AppRunner, the same in the CLI and in tests."""
    return {
        # Cancel a handler when its client goes away, so abandoned long polls are not held.
        "handler_cancellation": True,
        "access_log": web.access_logger if config.access_log else None,
        "shutdown_timeout": config.shutdown_timeout_s,
        "keepalive_timeout": config.keepalive_timeout_s,
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

    def transport(self, name: str) -> ServerTransport:
        """The mounted transport `name` (its hub, its members), for tests and benchmarks."""
        return self.app[MOUNTED][name]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_server(config: ServerConfig, broker: Broker | None = None) -> RunningServer:
    """Start the app on config.host:config.port (port 0 picks a free one); call stop() when done."""
    app = create_app(config, broker)
    runner = LabAppRunner(app, **runner_options(config))
    await runner.setup()
    sock = socket.socket(socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    site = web.SockSite(runner, sock)
    await site.start()
    port = sock.getsockname()[1]
    try:
        for transport in mounted(app).values():
            await transport.listening(config.host, port)
    except BaseException:
        await runner.cleanup()
        raise
    return RunningServer(runner, app, config.host, port)
