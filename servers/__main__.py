"""`python -m servers`: run one transport, or all of them over one core, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

from . import registry
from .app import start_server
from .config import ServerConfig, config_from_settings, own_knobs, server_settings
from .core import Unavailable
from .fds import raise_fd_limit
from .settings import Knob


def parse_args(argv: list[str] | None) -> ServerConfig:
    return parse(argv)[0]


def parse(argv: list[str] | None) -> tuple[ServerConfig, str | None]:
    """Return the configuration and the --ready-file path (None when not given)."""
    p = argparse.ArgumentParser(
        prog="python -m servers",
        description="rtlab chat server: " + ", ".join(t.label for t in registry.transports(registry.PRODUCT))
        + " over one chat core.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--transport", required=True, choices=[*registry.names(None), "all"],
                   help="which transport to mount; all: every one of rtlab's own over one core")
    p.add_argument("--ready-file", metavar="PATH",
                   help="once listening, write {url, port, pid, transports} here as JSON (for supervisors)")
    # Every other flag is a declared setting (servers/config.py, servers/core.py Limits) or a transport's knob
    # (its registry entry): the flag, its default, its help and its bounds come from the declaration.
    add_knobs(p, own_knobs())
    for transport in registry.transports():
        add_knobs(p.add_argument_group(f"{transport.label} ({transport.name})"), transport.server_knobs)
    a = p.parse_args(argv)
    values = {}
    for knob in server_settings().values():
        try:
            values[knob.name] = knob.check(getattr(a, dest(knob)))
        except ValueError as error:
            p.error(f"{knob.cli_flag}: {error}")
    try:
        return config_from_settings(registry.expand(a.transport), values), a.ready_file
    except ValueError as error:
        p.error(str(error))


def dest(knob: Knob) -> str:
    return f"setting__{knob.name}"


def add_knobs(parser, knobs) -> None:
    """Add one flag per knob: --name (or its own flag), typed, with its default and help."""
    for knob in knobs:
        if knob.kind is bool:
            parser.add_argument(knob.cli_flag, dest=dest(knob), action=argparse.BooleanOptionalAction,
                                default=knob.default, help=knob.help)
        elif knob.kind is tuple:
            parser.add_argument(knob.cli_flag, dest=dest(knob), action=_Items, default=list(knob.default),
                                metavar="VALUE", help=knob.help)
        else:
            parser.add_argument(knob.cli_flag, dest=dest(knob), type=knob.kind, default=knob.default,
                                help=knob.help, metavar=_metavar(knob.name, knob.kind))


class _Items(argparse.Action):
    """A repeatable flag whose values replace its default (argparse's "append" would add to a non-empty one)."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, self.dest)
        if items is self.default:
            items = []
        setattr(namespace, self.dest, [*items, values])


def _metavar(name: str, kind: type) -> str:
    for suffix, unit in (("_per_s", "RATE"), ("_ms", "MS"), ("_s", "S"), ("_bytes", "BYTES")):
        if name.endswith(suffix):
            return unit
    return "N" if kind is int else name.split("_")[0].upper()


def write_ready_file(path: str | Path, info: dict) -> None:
    """Write `info` to `path` as JSON, atomically: a supervisor reading it sees all of it or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)


async def serve(config: ServerConfig, ready_file: str | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close every transport's members (WebSockets 1001, held polls
    answered, streams ended), and return."""
    raise_fd_limit()
    server = await start_server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)  # a second one while stopping asks the same: nothing more
    broker = "" if config.broker_url == "memory" else f" (broker {config.broker_url})"
    print(f"rtlab serving {', '.join(config.transports)} on {server.url}{broker}", flush=True)
    if ready_file:
        write_ready_file(ready_file, {"url": server.url, "port": server.port, "pid": os.getpid(),
                                      "transports": list(config.transports), "instance": config.instance})
    try:
        await stop.wait()
    finally:
        try:
            await server.stop()
        finally:
            stop_listening_for_signals(loop)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_listening_for_signals(loop: asyncio.AbstractEventLoop) -> None:
    """Take the stop signals' handlers off `loop` while it still runs, and ignore those signals for the few
    milliseconds left to exit. asyncio.run closes the loop's self-pipe (the signal wakeup fd) before it removes
    handlers still set: a signal in between (the supervisor's second SIGTERM, a second Ctrl-C) found the fd closed
    and printed a traceback ("Exception ignored when trying to write to the signal wakeup fd"); with the default
    action instead, it would kill a server that has already closed every member."""
    for sig in STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)


def main(argv: list[str] | None = None) -> int:
    config, ready_file = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    entry = registry.get(config.transports[0])
    if entry.process:  # a peer of another stack: its own server on our socket (servers/peers/process.py)
        if missing := registry.missing_packages(entry.name):
            print(f"rtlab: {entry.name} needs {', '.join(missing)}: pip install -e '.[peers]'", file=sys.stderr)
            return 2
        from .peers import process

        return process.run(entry.name, config.host, config.port, ready_file, write_ready_file)
    try:
        asyncio.run(serve(config, ready_file))
    except OSError as error:  # e.g. the port is taken
        print(f"rtlab: cannot serve on {config.host}:{config.port}: {error.strerror or error}", file=sys.stderr)
        return 1
    except Unavailable as error:  # e.g. Redis unreachable at start
        print(f"rtlab: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
