"""The seam for peers that are not aiohttp ServerTransports: a server of another stack (FastAPI on uvicorn, Django
Channels on daphne, the websockets library) run as `python -m servers --transport NAME`, so the supervisor, the
ready file, the CPU pinning and the sampler treat it as every other server.

Its registry entry names `process="module:serve"` instead of a ServerTransport. `python -m servers` binds the
listening socket (host and port from the usual flags, port 0 allowed) and calls `serve(sock, ready)`
in this process: the peer serves on that socket with its own stack until SIGTERM, and calls `ready()` once it
accepts connections; the shell then writes the ready file. What the runner needs of the peer, beyond rtlab's
wire contract (docs/api.md) for the routes its members use:

- `GET /rooms/{room}/history?limit=1`: the room's newest message (how a client learns where to join);
- `GET /metrics`: `Counts.page()`, one integer per delivered message (and per accepted one), under rtlab's names;
- `GET /healthz`: `health(...)`: which library serves, its compression settings, what it negotiated.

Its bytes are counted by the run's packet capture (experiments/capture.py): it has no meter of its own.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .. import registry

BACKLOG = 2048  # uvicorn's default backlog; daphne and websockets take the socket as it is
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Counts:
    """The integers a peer keeps: messages it accepted, messages it delivered (one per member per message)."""

    transport: str
    accepted: int = 0
    delivered: int = 0

    def page(self) -> str:
        """The counters as a Prometheus text page, under the names rtlab's /metrics uses."""
        label = f'{{transport="{self.transport}"}}'
        return (f"# TYPE rtlab_messages_accepted_total counter\nrtlab_messages_accepted_total{label} {self.accepted}\n"
                f"# TYPE rtlab_messages_delivered_total counter\nrtlab_messages_delivered_total{label} {self.delivered}\n")


@dataclass
class Rooms:
    """Each room's log (id = index + 1), as the floors keep it: what `since=` catches up from."""

    log: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, room: str, body: dict) -> str:
        """Store a message from a client's `{"user", "text", "sent_at"}`; return its JSON (docs/api.md)."""
        log = self.log[room]
        text = json.dumps({"id": len(log) + 1, "room": room, "user": body["user"], "text": body["text"],
                           "sent_at": body.get("sent_at"), "ts": time.time()}, separators=(",", ":"),
                          ensure_ascii=False)
        log.append(text)
        return text

    def newest(self, room: str) -> str:
        """The history route's answer to `limit=1`."""
        log = self.log.get(room)
        return f'{{"messages":[{log[-1]}]}}' if log else '{"messages":[]}'


def health(transport: str, packages: tuple[str, ...], compression: dict[str, Any], **server: Any) -> str:
    """The /healthz answer: the libraries that serve and their versions, compression, other facts (the manifest
    records it)."""
    versions = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return json.dumps({"status": "ok", "transports": [transport], "versions": versions, "compression": compression,
                       "server": server})


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=BACKLOG)


def run(transport: str, host: str, port: int, ready_file: str | None, write_ready_file: Callable[[str, dict], None]) -> int:
    """Serve the process peer `transport` until SIGTERM (its registry entry's `process`)."""
    # Its library's info lines (one per connection, for some) off, as every rtlab server runs with --no-access-log.
    logging.getLogger().setLevel(logging.WARNING)
    from ..fds import raise_fd_limit

    raise_fd_limit()  # as rtlab's servers do: thousands of members each hold a descriptor
    entry = registry.get(transport)
    serve = registry.load(entry.process)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    url = f"http://{host}:{bound}"

    def ready() -> None:
        print(f"rtlab peer {transport} serving on {url}", flush=True)
        if ready_file:
            write_ready_file(ready_file, {"url": url, "port": bound, "pid": os.getpid(), "transports": [transport],
                                          "instance": ""})

    serve(sock, ready)
    return 0
