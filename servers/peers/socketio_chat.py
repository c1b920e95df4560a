"""The Socket.IO peers: the chat room as python-socketio's users write it (rooms, emit to the room, acks), on
its AsyncServer attached to aiohttp, restricted to Engine.IO's WebSocket transport or to its HTTP
long-polling transport. The same message fields as every rtlab transport; a log per room so that a member
joining with `since` catches up. Compression is off (as rtlab's): `http_compression=False`, and the Locust
client offers no permessage-deflate."""

from __future__ import annotations

import json
import time
from collections import defaultdict

import socketio
from aiohttp import web

from ..metrics import METER, NULL_TALLY, Tally
from ..transport import ServerTransport


class SocketIOChat(ServerTransport):
    """socketio-websocket and socketio-polling: one class, the Engine.IO transport named by the entry."""

    standalone = True
    engineio_transport = "websocket"

    def mount(self) -> list[web.AbstractRoute]:
        self.sio = sio = socketio.AsyncServer(async_mode="aiohttp", transports=[self.engineio_transport],
                                              http_compression=False)
        self.log: dict[str, list[dict]] = defaultdict(list)  # each room's messages; id = index + 1
        self.room_of: dict[str, str] = {}  # sid -> its room
        self.members: dict[str, int] = defaultdict(int)  # room -> members in it (deliveries per emit)

        @sio.event
        async def join(sid, data):
            room = str(data["room"])
            log = self.log[room]
            i = int(data.get("since") if data.get("since") is not None else len(log))
            while i < len(log):  # catch up, then enter the room: enter_room does not yield, so nothing is missed
                await sio.emit("message", log[i], to=sid)
                self.tally().messages_delivered += 1
                i += 1
            await sio.enter_room(sid, room)
            self.room_of[sid] = room
            self.members[room] += 1
            return len(log)

        @sio.event
        async def send(sid, data):
            room = self.room_of[sid]
            log = self.log[room]
            message = {"id": len(log) + 1, "room": room, "user": data["user"], "text": data["text"],
                       "sent_at": data.get("sent_at"), "ts": time.time()}
            log.append(message)
            tally = self.tally()
            tally.messages_accepted += 1
            tally.messages_delivered += self.members[room]
            await sio.emit("message", message, room=room)
            return message["id"]  # the ack: accepted as this id

        @sio.event
        async def disconnect(sid, *reason):
            room = self.room_of.pop(sid, None)
            if room is not None:
                self.members[room] -= 1

        sio.attach(self.app)
        self.app.router.add_get("/rooms/{room}/history", self.newest)
        return []

    def tally(self) -> Tally:
        """The lab's counters for this server (it runs alone: one label), where the events count their messages."""
        meter = self.app.get(METER)
        return meter.default if meter is not None else NULL_TALLY

    async def newest(self, request: web.Request) -> web.Response:  # how a client learns where to join
        log = self.log.get(request.match_info["room"])
        return web.Response(text=json.dumps({"messages": log[-1:] if log else []}), content_type="application/json")

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        sids = list(self.room_of)
        for sid in sids:
            await self.sio.disconnect(sid)
        return {"socketio_disconnected": len(sids)}

    def health(self) -> dict:
        return {"compression": {"socketio_http_compression": False}}


class SocketIOPollingChat(SocketIOChat):
    engineio_transport = "polling"
