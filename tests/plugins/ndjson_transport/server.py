"""The NDJSON stream's server part: `GET /rooms/{room}/ndjson?since=ID`, one message JSON per line."""

from __future__ import annotations

import asyncio

from aiohttp import web

from servers.core import Message, Unavailable, validate_room
from servers.http import BROKER, int_param
from servers.metrics import tally_of
from servers.push import PushHub, PushMember
from servers.transport import ServerTransport


def encode(message: Message):
    payload = message.json.encode()
    return payload + b"\n", len(payload)


class Line(PushMember):
    __slots__ = ("response", "ended")

    def __init__(self, response: web.StreamResponse, queue_size: int, tally) -> None:
        super().__init__(queue_size, tally)
        self.response = response
        self.ended = asyncio.Event()

    async def send(self, data: bytes) -> None:
        await self.response.write(data)

    async def close(self, code: int, reason: str) -> None:
        self.ended.set()


class NdjsonStream(ServerTransport):
    def mount(self) -> list[web.AbstractRoute]:
        self.heartbeat_s = float(self.config.knob("ndjson_heartbeat_s"))
        self.hub = PushHub(self.app[BROKER], encode, (0, "queue overflow"))
        return [self.app.router.add_get("/rooms/{room}/ndjson", self.handle, allow_head=False)]

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        return {"ndjson_streams_closed": await self.hub.close_all(code, reason)}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        room = validate_room(request.match_info["room"])
        since = int_param(request, "since", None, 0, 2**53)
        if self.hub.closing is not None:
            raise Unavailable("draining")
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        member = Line(response, 1024, tally_of(request))
        self.hub.join(room, member)
        self.hub.start_writer(member, room, since, self.config.limits.page, lambda task: member.ended.set())
        try:
            while not member.ended.is_set():
                try:
                    await asyncio.wait_for(member.ended.wait(), self.heartbeat_s)
                except TimeoutError:
                    await response.write(b"\n")  # a heartbeat: an empty line, which readers skip
        finally:
            self.hub.leave(room, member)
            member.closing = True
            member.writer.cancel()
        return response
