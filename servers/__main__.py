"""`python -m servers`: run one transport, or all of them over one core, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from . import registry
from .app import start_server
from .config import BROKER_SCHEMES, ServerConfig
from .core import Limits, Unavailable


def parse_args(argv: list[str] | None) -> ServerConfig:
    defaults = ServerConfig(transports=registry.names(None)[:1])
    limits = Limits()
    p = argparse.ArgumentParser(
        prog="python -m servers",
        description="rtlab chat server: " + ", ".join(t.label for t in registry.transports(registry.PRODUCT))
        + " over one chat core.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--transport", required=True, choices=[*registry.names(None), "all"],
                   help="which transport to mount; all: every one of rtlab's own over one core")
    p.add_argument("--host", default=defaults.host, help="address to bind (loopback unless you mean it)")
    p.add_argument("--port", type=int, default=defaults.port, help="port to bind; 0 picks a free one")
    p.add_argument("--history", type=int, default=limits.history, help="messages kept per room")
    p.add_argument("--max-rooms", type=int, default=limits.rooms, help="rooms kept at once")
    p.add_argument("--max-text-chars", type=int, default=limits.text_chars, help="longest message text")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="largest HTTP body (413)")
    p.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=defaults.access_log)
    p.add_argument(
        "--metrics", action=argparse.BooleanOptionalAction, default=defaults.metrics,
        help="count wire bytes and chat events and serve GET /metrics (off only to measure what it costs)",
    )
    p.add_argument(
        "--broker", default=defaults.broker_url,
        help="memory (this process only) or redis://host:port/db: rooms, ids and history shared by every instance",
    )
    p.add_argument("--instance", default=defaults.instance, help="a name for this instance, reported by /healthz")
    p.add_argument("--demo", action=argparse.BooleanOptionalAction, default=None,
                   help="serve the teaching page at / (default: when more than one transport is mounted)")
    # Each transport's own settings, from its registry entry; a knob of a transport not mounted is ignored.
    for transport in registry.transports():
        group = p.add_argument_group(f"{transport.label} ({transport.name})")
        for knob in transport.server_knobs:
            dest = f"knob__{knob.name}"
            if knob.kind is bool:
                group.add_argument(knob.cli_flag, dest=dest, action=argparse.BooleanOptionalAction,
                                   default=knob.default, help=knob.help)
            else:
                group.add_argument(knob.cli_flag, dest=dest, type=knob.kind, default=knob.default, help=knob.help,
                                   metavar=_metavar(knob.name, knob.kind))
    a = p.parse_args(argv)
    if a.broker != "memory" and not a.broker.startswith(BROKER_SCHEMES):
        p.error("--broker must be memory or a redis://host:port/db URL")
    for name in ("history", "max_rooms", "max_text_chars", "max_body_bytes"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= a.port <= 65535:
        p.error("--port must be from 0 to 65535")
    knobs = {}
    for knob in registry.server_knobs().values():
        try:
            knobs[knob.name] = knob.check(getattr(a, f"knob__{knob.name}"))
        except ValueError as error:
            p.error(f"{knob.cli_flag}: {error}")
    return ServerConfig(
        transports=registry.expand(a.transport),
        host=a.host,
        port=a.port,
        limits=Limits(history=a.history, text_chars=a.max_text_chars, rooms=a.max_rooms),
        max_body_bytes=a.max_body_bytes,
        access_log=a.access_log,
        metrics=a.metrics,
        broker_url=a.broker,
        instance=a.instance,
        demo=a.demo,
        knobs=knobs,
    )


def _metavar(name: str, kind: type) -> str:
    for suffix, unit in (("_ms", "MS"), ("_s", "S"), ("_bytes", "BYTES")):
        if name.endswith(suffix):
            return unit
    return "N" if kind is int else "VALUE"


async def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then close every transport's members (WebSockets 1001, held polls
    answered, streams ended), and return."""
    server = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    broker = "" if config.broker_url == "memory" else f" (broker {config.broker_url})"
    print(f"rtlab serving {', '.join(config.transports)} on {server.url}{broker}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(config))
    except OSError as error:  # e.g. the port is taken
        print(f"rtlab: cannot serve on {config.host}:{config.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    except Unavailable as error:  # e.g. Redis unreachable at start
        print(f"rtlab: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
