"""`python -m servers`: run one transport, or all of them over one core, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .app import TRANSPORTS, start_server
from .config import BROKER_SCHEMES, ServerConfig
from .core import Limits, Unavailable


def parse_args(argv: list[str] | None) -> ServerConfig:
    defaults = ServerConfig()
    limits = Limits()
    p = argparse.ArgumentParser(
        prog="python -m servers",
        description="rtlab chat server: short polling, long polling or WebSocket over one chat core.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--transport", required=True, choices=[*TRANSPORTS, "all"], help="which transport(s) to mount")
    p.add_argument("--host", default=defaults.host, help="address to bind (loopback unless you mean it)")
    p.add_argument("--port", type=int, default=defaults.port, help="port to bind; 0 picks a free one")
    p.add_argument("--history", type=int, default=limits.history, help="messages kept per room")
    p.add_argument("--max-rooms", type=int, default=limits.rooms, help="rooms kept at once")
    p.add_argument("--max-text-chars", type=int, default=limits.text_chars, help="longest message text")
    p.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes, help="largest HTTP body (413)")
    p.add_argument(
        "--max-ws-message-bytes", type=int, default=defaults.max_ws_message_bytes, help="largest WebSocket message (1009)"
    )
    p.add_argument("--long-poll-max-wait", type=float, default=defaults.long_poll_max_wait_s, help="cap on wait=, s")
    p.add_argument("--ws-send-queue", type=int, default=defaults.ws_send_queue, help="frames queued per socket (1013)")
    p.add_argument("--ws-heartbeat", type=float, default=defaults.ws_heartbeat_s, help="WebSocket ping interval, s")
    p.add_argument(
        "--ws-compress", action=argparse.BooleanOptionalAction, default=defaults.ws_compress,
        help="negotiate permessage-deflate",
    )
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
    a = p.parse_args(argv)
    if a.broker != "memory" and not a.broker.startswith(BROKER_SCHEMES):
        p.error("--broker must be memory or a redis://host:port/db URL")
    for name in ("history", "max_rooms", "max_text_chars", "max_body_bytes", "max_ws_message_bytes", "ws_send_queue"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("long_poll_max_wait", "ws_heartbeat"):
        if not getattr(a, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= a.port <= 65535:
        p.error("--port must be from 0 to 65535")
    return ServerConfig(
        transports=tuple(TRANSPORTS) if a.transport == "all" else (a.transport,),
        host=a.host,
        port=a.port,
        limits=Limits(history=a.history, text_chars=a.max_text_chars, rooms=a.max_rooms),
        max_body_bytes=a.max_body_bytes,
        max_ws_message_bytes=a.max_ws_message_bytes,
        long_poll_max_wait_s=a.long_poll_max_wait,
        ws_send_queue=a.ws_send_queue,
        ws_heartbeat_s=a.ws_heartbeat,
        ws_compress=a.ws_compress,
        access_log=a.access_log,
        metrics=a.metrics,
        broker_url=a.broker,
        instance=a.instance,
    )


async def serve(config: ServerConfig) -> None:
    """Serve until SIGTERM or SIGINT, then close WebSockets (1001), answer held polls, and return."""
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
