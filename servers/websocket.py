"""WebSocket: `GET /rooms/{room}/ws?since=ID` upgrades; the server pushes every message as a text frame."""

from __future__ import annotations

import asyncio
import json
import logging
import struct

from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .broker import Broker
from .core import (
    ChatError,
    InvalidInput,
    Limits,
    Message,
    Unavailable,
    parse_send,
    validate_room,
)
from .guard import GUARD, SendLimiter, TokenBucket
from .http import BROKER, int_param
from .metrics import NULL_TALLY, Tally, tally_of
from .push import Encoded, Prepared, PushHub, PushMember
from .transport import ServerTransport

log = logging.getLogger("rtlab.server")

CLOSE_UNSUPPORTED_DATA = 1003  # binary frame
CLOSE_TOO_BIG = 1009  # aiohttp closes with it when a message exceeds max_msg_size
CLOSE_OVERFLOW = 1013  # "try again later" (overflow, broker unavailable): resume with since= from the last id seen
CLOSE_POLICY = 1008  # policy violation: the member kept on sending past its rate limit


def message_frame(message: Message) -> str:
    # {"type":"message", ...message}: splice the message's one JSON encoding instead of encoding again.
    return '{"type":"message",' + message.json[1:]


def text_frame(payload: bytes) -> bytes:
    """The bytes of an unmasked, final text frame carrying `payload`: what aiohttp writes for send_str, built once
    (as Gorilla's PreparedMessage and uWebSockets' publish do) instead of once per socket."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def prepared(text: str) -> Prepared:
    """A text frame for every member: its UTF-8 payload, and the whole frame: a server's frames are unmasked, so
    without compression they are the same bytes on every connection (RFC 6455 §5.2)."""
    payload = text.encode()
    return Prepared(payload, text_frame(payload))


def unprepared(text: str) -> Prepared:  # with permessage-deflate each socket compresses with its own context
    return Prepared(text.encode(), None)


def encoder(compress: bool):
    frame = unprepared if compress else prepared

    def encode(message: Message) -> Encoded:
        """The frame of one message, the same for every member, and the bytes of the message JSON within it."""
        return frame(message_frame(message)), message.json_bytes

    return encode


def error_frame(error: str) -> Prepared:
    return unprepared(json.dumps({"type": "error", "error": error}))


class Member(PushMember):
    """One open WebSocket; its sends take from a token bucket of its own (the socket is the member). A prepared
    frame goes straight to the transport while the member is idle (PushMember.write_now)."""

    __slots__ = ("ws", "bucket", "refused_running")

    def __init__(self, ws: web.WebSocketResponse, queue_size: int, tally: Tally = NULL_TALLY,
                 bucket: TokenBucket | None = None, transport: asyncio.Transport | None = None) -> None:
        super().__init__(queue_size, tally, transport)
        self.ws = ws
        self.bucket = bucket
        self.refused_running = 0  # sends refused since the last one accepted

    async def send(self, data: Prepared) -> None:
        await self.ws.send_frame(data.body, WSMsgType.TEXT)

    def wire(self, data: Prepared) -> bytes | None:
        return None if self.ws.closed else data.wire

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())


class WebSocket(ServerTransport):
    """`GET /rooms/{room}/ws?since=ID`: the backlog after `since`, then every new message as a text frame."""

    def mount(self) -> list[web.AbstractRoute]:
        knob = self.config.knob
        self.send_queue = int(knob("ws_send_queue"))
        self.heartbeat_s = float(knob("ws_heartbeat_s"))
        self.compress = bool(knob("ws_compress"))
        self.max_message_bytes = int(knob("max_ws_message_bytes"))
        self.limits: Limits = self.config.limits
        self.broker: Broker = self.app[BROKER]
        self.limiter: SendLimiter = self.app[GUARD].limiter
        self.hub = PushHub(self.broker, encoder(self.compress),
                           (CLOSE_OVERFLOW, "send queue overflow; reconnect with since="))
        return [self.app.router.add_get("/rooms/{room}/ws", self.handle)]

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        return {"websockets_closed": await self.hub.close_all(code, reason)}

    def held(self, room: str) -> int:
        return self.hub.held(room)

    def health(self) -> dict:
        return {"compression": {"websocket_permessage_deflate": self.compress}}

    def gauges(self):
        frames, deepest = self.hub.queued()
        for kind, name, doc, value in (
            (GaugeMetricFamily, "rtlab_ws_send_queue_frames", "Frames waiting in all WebSocket send queues.", frames),
            (GaugeMetricFamily, "rtlab_ws_send_queue_max_frames", "Frames waiting in the fullest WebSocket send queue.",
             deepest),
            (CounterMetricFamily, "rtlab_ws_overflow_closes",
             "WebSockets closed with 1013 because their send queue was full.", self.hub.overflow_closes),
        ):
            family = kind(name, doc, labels=["transport"])
            family.add_metric([self.name], value)
            yield family

    async def handle(self, request: web.Request) -> web.StreamResponse:
        hub = self.hub
        room = validate_room(request.match_info["room"])
        since = int_param(request, "since", None, 0, 2**53)
        ws = web.WebSocketResponse(heartbeat=self.heartbeat_s, max_msg_size=self.max_message_bytes,
                                   compress=self.compress)
        if not ws.can_prepare(request).ok:
            raise InvalidInput("this route needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
        if hub.closing is not None:
            raise Unavailable("this instance is shutting down or draining: connect again (through the balancer)")
        await ws.prepare(request)

        # Its token bucket is made at its first send: most members listen far more than they talk.
        member = Member(ws, self.send_queue, tally_of(request), None, request.transport)
        hub.join(room, member)  # before reading the backlog, so nothing posted meanwhile is missed
        hub.start_writer(member, room, since, self.limits.page, lambda task: hub.writer_done(
            member, task, "websocket",
            # The peer went away mid-send (or the writer failed): close so the handler's receive loop ends.
            lambda error: hub.close_soon(member, WSCloseCode.INTERNAL_ERROR if error else WSCloseCode.OK,
                                         "writer stopped")))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await _on_text(self.broker, self.limits, self.limiter, room, member, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await ws.close(code=CLOSE_UNSUPPORTED_DATA, message=b"binary frames are not accepted")
                # ERROR (e.g. a message over max_msg_size): aiohttp has already closed with its code (1009).
        finally:
            hub.leave(room, member)
            member.stop()
            if not ws.closed:
                await ws.close()
        return ws


async def _on_text(broker: Broker, limits: Limits, limiter: SendLimiter, room: str, member: Member,
                   data: str) -> None:
    try:
        user, text, sent_at = parse_send(data, limits.text_chars, "frame")
        if not limiter.admit(member):  # it keeps on after being told: cut it off
            await member.ws.close(code=CLOSE_POLICY, message=b"sending too fast")
            return
        await broker.post(room, user, text, sent_at)  # the sender hears its own message through fan-out
        member.tally.messages_accepted += 1
    except ChatError as error:
        member.offer((0, error_frame(str(error)), 0))


