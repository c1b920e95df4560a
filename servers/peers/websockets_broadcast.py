"""The websockets library's own asyncio server: the chat room as its docs teach broadcasting ("Broadcasting"
topic guide: keep the connections in a set, `broadcast(connections, message)` writes to each without waiting),
one set per room, speaking rtlab's wire contract (docs/api.md). `compression=None`, as its docs advise for a
benchmark; everything else its defaults (pings every 20 s). Plain HTTP routes (history, /metrics, /healthz) are
answered in `process_request`, its hook for requests that do not upgrade. A peer: never on a network."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from collections import defaultdict
from collections.abc import Callable
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, broadcast, serve as ws_serve
from websockets.http11 import Request, Response

from .process import METRICS_CONTENT_TYPE, Counts, Rooms, health

NAME = "websockets-broadcast"
PACKAGES = ("websockets",)
COMPRESSION = None  # the docs' advice for a benchmark; the library's default is permessage-deflate

rooms = Rooms()
connections: dict[str, set[ServerConnection]] = defaultdict(set)
counts = Counts(NAME)


def room_of(path: str) -> tuple[str | None, dict[str, list[str]]]:
    """("lobby", query) for /rooms/lobby/ws?..., (None, {}) for any other path."""
    parts = urlsplit(path)
    segments = parts.path.split("/")
    if len(segments) == 4 and segments[1] == "rooms" and segments[3] == "ws":
        return segments[2], parse_qs(parts.query)
    return None, {}


def process_request(connection: ServerConnection, request: Request) -> Response | None:
    path = urlsplit(request.path).path
    if path == "/metrics":
        return answer(connection, counts.page(), METRICS_CONTENT_TYPE)
    if path == "/healthz":
        return answer(connection, health(NAME, PACKAGES, {"websocket_permessage_deflate": COMPRESSION is not None,
                                                          "compression": COMPRESSION, "http": False},
                                         ping_interval_s=20, max_queue=16), "application/json")
    segments = path.split("/")
    if len(segments) == 4 and segments[1] == "rooms" and segments[3] == "history":
        return answer(connection, rooms.newest(segments[2]), "application/json")
    return None  # the WebSocket handshake (a path that is not a room's socket is refused in the handler)


def answer(connection: ServerConnection, body: str, content_type: str) -> Response:
    response = connection.respond(HTTPStatus.OK, body)
    del response.headers["Content-Type"]  # respond() says text/plain; a Headers object adds, not replaces
    response.headers["Content-Type"] = content_type
    return response


async def handler(websocket: ServerConnection) -> None:
    room, query = room_of(websocket.request.path)
    if room is None:
        await websocket.close(1008, "not a room's socket")
        return
    log, members = rooms.log[room], connections[room]
    i = int(query.get("since", [len(log)])[0])
    while i < len(log):  # catch up, then join: no await between the last check and joining
        await websocket.send('{"type":"message",' + log[i][1:])
        counts.delivered += 1
        i += 1
    members.add(websocket)
    try:
        async for message in websocket:
            text = rooms.add(room, json.loads(message))
            counts.accepted += 1
            broadcast(members, '{"type":"message",' + text[1:])
            counts.delivered += len(members)
    finally:
        members.discard(websocket)


async def main(sock: socket.socket, ready: Callable[[], None]) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with ws_serve(handler, sock=sock, compression=COMPRESSION, process_request=process_request):
        ready()
        await stop


def serve(sock: socket.socket, ready: Callable[[], None]) -> None:
    asyncio.run(main(sock, ready))
