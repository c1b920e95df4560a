"""The floor for long polling: the chat room as an expert writes it in about forty lines of aiohttp, speaking
rtlab's wire contract and nothing more: a log per room, a set of waiting futures per room, one encoding per
message; no limits, no metrics of its own (the lab's meter around it counts bytes; integers count deliveries
and polls, as rtlab's do)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict

from aiohttp import web

from ..metrics import tally_of
from ..transport import ServerTransport


class FloorLongPolling(ServerTransport):
    standalone = True

    def mount(self) -> list[web.AbstractRoute]:
        self.log: dict[str, list[str]] = defaultdict(list)  # each room's messages; id = index + 1
        self.waiters: dict[str, set[asyncio.Future]] = defaultdict(set)
        router = self.app.router
        return [router.add_post("/rooms/{room}/messages", self.post), router.add_get("/rooms/{room}/messages", self.poll),
                router.add_get("/rooms/{room}/history", self.newest)]

    async def newest(self, request: web.Request) -> web.Response:  # how a client learns where to join
        log = self.log.get(request.match_info["room"])
        return web.Response(text=f'{{"messages":[{log[-1]}]}}' if log else '{"messages":[]}',
                            content_type="application/json")

    async def post(self, request: web.Request) -> web.Response:
        room, body = request.match_info["room"], await request.json()
        log = self.log[room]
        text = json.dumps({"id": len(log) + 1, "room": room, "user": body["user"], "text": body["text"],
                           "sent_at": body.get("sent_at"), "ts": time.time()}, separators=(",", ":"), ensure_ascii=False)
        log.append(text)
        for waiter in self.waiters.pop(room, ()):
            if not waiter.done():
                waiter.set_result(None)
        tally_of(request).messages_accepted += 1
        return web.Response(status=201, text=text, content_type="application/json")

    async def poll(self, request: web.Request) -> web.Response:
        room, query, tally = request.match_info["room"], request.query, tally_of(request)
        since, wait, limit = int(query.get("since", 0)), float(query.get("wait", 0)), int(query.get("limit", 100))
        log = self.log[room]
        if len(log) <= since and wait > 0:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters[room].add(waiter)
            try:
                await asyncio.wait_for(waiter, min(wait, 30.0))
            except TimeoutError:
                pass
            finally:
                self.waiters.get(room, set()).discard(waiter)
        page = log[since:since + limit]
        tally.polls += 1
        tally.messages_delivered += len(page)
        tally.empty_polls += not page
        return web.Response(text=f'{{"messages":[{",".join(page)}],"last_id":{len(log)},"truncated":false}}',
                            content_type="application/json")

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        released = 0
        for waiters in self.waiters.values():
            for waiter in waiters:
                released += not waiter.done()
                if not waiter.done():
                    waiter.set_result(None)
        return {"polls_released": released}
