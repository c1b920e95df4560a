"""The floor for Server-Sent Events: the chat room as an expert writes it in about forty lines of aiohttp, speaking
rtlab's wire contract and nothing more: a log per room, a set of open streams per room, one event encoding per
message written to every stream; no queues, no limits, no heartbeat, no metrics of its own (the lab's meter
around it counts bytes; integers count deliveries, as rtlab's do)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

from aiohttp import web

from ..metrics import tally_of
from ..transport import ServerTransport


class FloorServerSentEvents(ServerTransport):
    standalone = True

    def mount(self) -> list[web.AbstractRoute]:
        self.log: dict[str, list[str]] = defaultdict(list)  # each room's messages; id = index + 1
        self.streams: dict[str, dict[web.StreamResponse, object]] = defaultdict(dict)  # stream -> its tally
        self.closed = asyncio.Event()
        router = self.app.router
        return [router.add_post("/rooms/{room}/messages", self.post), router.add_get("/rooms/{room}/events", self.events),
                router.add_get("/rooms/{room}/history", self.newest)]

    async def newest(self, request: web.Request) -> web.Response:  # how a client learns where to join
        log = self.log.get(request.match_info["room"])
        return web.Response(text=f'{{"messages":[{log[-1]}]}}' if log else '{"messages":[]}',
                            content_type="application/json")

    async def post(self, request: web.Request) -> web.Response:
        room, body, tally = request.match_info["room"], await request.json(), tally_of(request)
        log, streams = self.log[room], self.streams[room]
        text = json.dumps({"id": len(log) + 1, "room": room, "user": body["user"], "text": body["text"],
                           "sent_at": body.get("sent_at"), "ts": time.time()}, separators=(",", ":"), ensure_ascii=False)
        log.append(text)
        event = f"id: {len(log)}\ndata: {text}\n\n".encode()
        tally.messages_accepted += 1
        for stream, counts in tuple(streams.items()):
            try:
                await stream.write(event)
                counts.messages_delivered += 1
            except ConnectionError:
                streams.pop(stream, None)
        return web.Response(status=201, text=text, content_type="application/json")

    async def events(self, request: web.Request) -> web.StreamResponse:
        room = request.match_info["room"]
        log, streams = self.log[room], self.streams[room]
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        counts = tally_of(request)
        await stream.prepare(request)
        i = int(request.headers.get("Last-Event-ID") or request.query.get("since", len(log)))
        while i < len(log):  # catch up, then join: no await between the last check and joining
            await stream.write(f"id: {i + 1}\ndata: {log[i]}\n\n".encode())
            counts.messages_delivered += 1
            i += 1
        streams[stream] = counts
        try:
            await self.closed.wait()  # until the client goes away (aiohttp cancels the handler) or the server stops
        finally:
            streams.pop(stream, None)
        return stream

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        count = sum(len(streams) for streams in self.streams.values())
        self.closed.set()
        return {"streams_closed": count}
