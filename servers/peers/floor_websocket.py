"""The floor for WebSocket: the chat room as an expert writes it in about forty lines of aiohttp, speaking rtlab's
wire contract and nothing more: a set of sockets per room, ids, one encoding per message, a log for since=;
no queues, no limits, no metrics of its own (the lab's meter around it counts bytes; one integer per message
counts deliveries, as rtlab's does)."""

from __future__ import annotations

import json
import time
from collections import defaultdict

from aiohttp import web

from ..metrics import tally_of
from ..transport import ServerTransport


class FloorWebSocket(ServerTransport):
    standalone = True

    def mount(self) -> list[web.AbstractRoute]:
        self.rooms: dict[str, set[web.WebSocketResponse]] = defaultdict(set)
        self.log: dict[str, list[str]] = defaultdict(list)  # each room's messages; id = index + 1
        router = self.app.router
        return [router.add_get("/rooms/{room}/ws", self.socket), router.add_get("/rooms/{room}/history", self.newest)]

    async def newest(self, request: web.Request) -> web.Response:  # how a client learns where to join
        log = self.log.get(request.match_info["room"])
        return web.Response(text=f'{{"messages":[{log[-1]}]}}' if log else '{"messages":[]}',
                            content_type="application/json")

    async def socket(self, request: web.Request) -> web.WebSocketResponse:
        room, tally = request.match_info["room"], tally_of(request)
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        log, members = self.log[room], self.rooms[room]
        i = int(request.query.get("since", len(log)))
        while i < len(log):  # catch up, then join: no await between the last check and joining
            await ws.send_str('{"type":"message",' + log[i][1:])
            tally.messages_delivered += 1
            i += 1
        members.add(ws)
        try:
            async for msg in ws:
                body = json.loads(msg.data)
                text = json.dumps({"id": len(log) + 1, "room": room, "user": body["user"], "text": body["text"],
                                   "sent_at": body.get("sent_at"), "ts": time.time()},
                                  separators=(",", ":"), ensure_ascii=False)
                log.append(text)
                frame = '{"type":"message",' + text[1:]
                tally.messages_accepted += 1
                tally.messages_delivered += len(members)
                for member in tuple(members):
                    await member.send_str(frame)
        finally:
            members.discard(ws)
        return ws

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        sockets = [ws for members in self.rooms.values() for ws in members]
        for ws in sockets:
            await ws.close(code=code, message=reason.encode())
        return {"websockets_closed": len(sockets)}
