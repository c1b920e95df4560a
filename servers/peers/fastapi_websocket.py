"""FastAPI on uvicorn: the chat room as FastAPI's WebSocket docs teach it ("Handling disconnections and multiple
clients": a ConnectionManager that accepts, keeps the active connections and broadcasts with send_text), one
manager per room, speaking rtlab's wire contract (docs/api.md). uvicorn runs with its defaults (what `pip install
"fastapi[standard]"` brings: uvloop, httptools, the websockets implementation, permessage-deflate accepted when a
client offers it); /healthz says which it chose. A peer: no limits, no queues, never on a network."""

from __future__ import annotations

import json
import socket
from collections import defaultdict
from collections.abc import Callable

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import PlainTextResponse, Response

from . import on_uvicorn
from .process import METRICS_CONTENT_TYPE, Counts, Rooms, health

NAME = "fastapi-websocket"
PACKAGES = ("fastapi", "starlette", "uvicorn", "websockets", "uvloop", "httptools")


class ConnectionManager:
    def __init__(self) -> None:
        self.active_connections: list[WebSocket] = []

    async def connect(self, websocket: WebSocket) -> None:
        await websocket.accept()

    def join(self, websocket: WebSocket) -> None:
        self.active_connections.append(websocket)

    def disconnect(self, websocket: WebSocket) -> None:
        self.active_connections.remove(websocket)

    async def broadcast(self, message: str) -> None:
        for connection in list(self.active_connections):
            await connection.send_text(message)
            counts.delivered += 1


app = FastAPI()
rooms = Rooms()
managers: dict[str, ConnectionManager] = defaultdict(ConnectionManager)
counts = Counts(NAME)
offers = {"permessage-deflate": 0, "none": 0}  # what the members' upgrade requests offered
server_facts: dict[str, object] = {}


@app.get("/rooms/{room}/history")
async def history(room: str) -> Response:
    return Response(rooms.newest(room), media_type="application/json")


@app.get("/metrics")
async def metrics() -> PlainTextResponse:
    return PlainTextResponse(counts.page(), media_type=METRICS_CONTENT_TYPE)


@app.get("/healthz")
async def healthz(request: Request) -> Response:
    deflate = bool(server_facts.get("ws_per_message_deflate"))
    compression = {"websocket_permessage_deflate": "accepted when offered" if deflate else False,
                   "offered_by_members": offers, "negotiated": offers["permessage-deflate"] if deflate else 0,
                   "http": False}
    return Response(health(NAME, PACKAGES, compression, **server_facts), media_type="application/json")


@app.websocket("/rooms/{room}/ws")
async def websocket_endpoint(websocket: WebSocket, room: str) -> None:
    manager = managers[room]
    log = rooms.log[room]
    offers["permessage-deflate" if "permessage-deflate" in websocket.headers.get("sec-websocket-extensions", "")
           else "none"] += 1
    await manager.connect(websocket)
    i = int(websocket.query_params.get("since", len(log)))
    while i < len(log):  # catch up, then join: no await between the last check and joining
        await websocket.send_text('{"type":"message",' + log[i][1:])
        counts.delivered += 1
        i += 1
    manager.join(websocket)
    try:
        while True:
            data = json.loads(await websocket.receive_text())
            text = rooms.add(room, data)
            counts.accepted += 1
            await manager.broadcast('{"type":"message",' + text[1:])
    except WebSocketDisconnect:
        manager.disconnect(websocket)


def serve(sock: socket.socket, ready: Callable[[], None]) -> None:
    on_uvicorn.run(app, sock, ready, server_facts)
