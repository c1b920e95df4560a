"""sse-starlette on FastAPI and uvicorn: an event stream per member as sse-starlette's README teaches it (an async
generator handed to EventSourceResponse, yielding dicts with id and data; the client's going away cancels it),
fed by an asyncio.Queue per member that a POST puts each new message on; posts are ordinary FastAPI POSTs with a
Pydantic body. Speaks rtlab's wire contract (docs/api.md): since= or Last-Event-ID to catch up. sse-starlette's
defaults: a comment ping every 15 s, CRLF line ends; uvicorn's defaults as in fastapi_websocket. A peer: no
limits, no bounded queues, never on a network."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from collections.abc import Callable

from fastapi import FastAPI, Header, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from . import on_uvicorn
from .process import METRICS_CONTENT_TYPE, Counts, Rooms, health

NAME = "sse-starlette"
PACKAGES = ("sse-starlette", "fastapi", "starlette", "uvicorn", "uvloop", "httptools")

app = FastAPI()
rooms = Rooms()
streams: dict[str, set[asyncio.Queue]] = defaultdict(set)
counts = Counts(NAME)
server_facts: dict[str, object] = {}


class Send(BaseModel):
    user: str
    text: str
    sent_at: float | None = None


@app.post("/rooms/{room}/messages", status_code=201)
async def post(room: str, message: Send) -> Response:
    text = rooms.add(room, message.model_dump())
    counts.accepted += 1
    event = (len(rooms.log[room]), text)
    for queue in streams[room]:
        queue.put_nowait(event)
    return Response(text, status_code=201, media_type="application/json")


@app.get("/rooms/{room}/events")
async def events(room: str, request: Request, since: int | None = None,
                 last_event_id: str | None = Header(default=None)) -> EventSourceResponse:
    log = rooms.log[room]
    start = int(last_event_id) if last_event_id else since if since is not None else len(log)

    async def event_publisher():
        queue: asyncio.Queue = asyncio.Queue()
        streams[room].add(queue)
        joined_at = len(log)  # later ids come through the queue
        try:
            for i in range(start, joined_at):
                yield {"id": str(i + 1), "data": log[i]}
                counts.delivered += 1
            while True:
                message_id, text = await queue.get()
                if message_id > joined_at:
                    yield {"id": str(message_id), "data": text}
                    counts.delivered += 1
        finally:
            streams[room].discard(queue)

    return EventSourceResponse(event_publisher())


@app.get("/rooms/{room}/history")
async def history(room: str) -> Response:
    return Response(rooms.newest(room), media_type="application/json")


@app.get("/metrics")
async def metrics() -> PlainTextResponse:
    return PlainTextResponse(counts.page(), media_type=METRICS_CONTENT_TYPE)


@app.get("/healthz")
async def healthz() -> Response:
    from sse_starlette.sse import EventSourceResponse as Response_

    return Response(health(NAME, PACKAGES, {"http": False}, ping_s=getattr(Response_, "DEFAULT_PING_INTERVAL", None),
                           **server_facts), media_type="application/json")


def serve(sock: socket.socket, ready: Callable[[], None]) -> None:
    on_uvicorn.run(app, sock, ready, server_facts)
