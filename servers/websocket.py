"""WebSocket: `GET /rooms/{room}/ws?since=ID` upgrades; the server pushes every message as a text frame."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Callable

from aiohttp import WSCloseCode, WSMsgType, web

from .broker import Broker
from .config import ServerConfig
from .core import ChatError, InvalidInput, Message, Unavailable, parse_post, validate_room
from .http import BROKER, CONFIG, int_param
from .metrics import NULL_TALLY, Tally, tally_of

log = logging.getLogger("rtlab.server")

CLOSE_UNSUPPORTED_DATA = 1003  # binary frame
CLOSE_TOO_BIG = 1009  # aiohttp closes with it when a message exceeds max_msg_size
CLOSE_OVERFLOW = 1013  # "try again later" (overflow, broker unavailable): resume with since= from the last id seen
CLOSE_GOING_AWAY = 1001  # server shutdown


# What message_frame adds to a message's JSON: `"type":"message",` (ASCII); the rest is the message itself.
FRAME_ENVELOPE_BYTES = len('"type":"message",')


def message_frame(message: Message) -> str:
    # {"type":"message", ...message}: splice the message's one JSON encoding instead of encoding again.
    return '{"type":"message",' + message.json[1:]


def error_frame(error: str) -> str:
    return json.dumps({"type": "error", "error": error})


class Member:
    """One open WebSocket: a bounded send queue drained by its own writer task."""

    __slots__ = ("ws", "queue", "last_id", "writer", "closing", "tally")

    def __init__(self, ws: web.WebSocketResponse, queue_size: int, tally: Tally = NULL_TALLY) -> None:
        self.ws = ws
        self.tally = tally  # where its accepted and delivered messages are counted
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(queue_size)
        self.last_id = 0  # newest message id sent to this member
        self.writer: asyncio.Task | None = None
        self.closing = False

    def offer(self, message_id: int, frame: str) -> bool:
        """Queue a frame; return False when the queue is full (the caller closes the member)."""
        if self.closing:
            return True
        try:
            self.queue.put_nowait((message_id, frame))
        except asyncio.QueueFull:
            return False
        return True

    async def write(self, broker: Broker, room: str, since: int | None, page_size: int) -> None:
        """Send the backlog after `since`, then every queued frame, skipping ids already sent."""
        if since is not None:
            self.last_id = since
            while True:
                page = await broker.since(room, self.last_id, page_size)
                for message in page.messages:
                    await self.ws.send_str(message_frame(message))
                    self.last_id = message.id
                    self.tally.messages_delivered += 1
                    self.tally.payload_sent_bytes += len(message.json.encode())
                if not page.messages or self.last_id >= page.last_id:
                    break
        tally = self.tally
        while True:
            message_id, frame = await self.queue.get()
            if message_id and message_id <= self.last_id:
                continue  # already sent as backlog
            await self.ws.send_str(frame)
            if message_id:
                self.last_id = message_id
                tally.messages_delivered += 1
                tally.payload_sent_bytes += len(frame.encode()) - FRAME_ENVELOPE_BYTES


class WebSocketHub:
    """Members per room; one broker subscription per room with members; one encoding per message."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._rooms: dict[str, set[Member]] = {}
        self._unsubscribe: dict[str, Callable[[], None]] = {}
        self._closers: set[asyncio.Task] = set()
        self.overflow_closes = 0
        self.closing: tuple[int, str] | None = None  # set by close_all: later members are closed the same way

    @property
    def members(self) -> int:
        return sum(len(m) for m in self._rooms.values())

    def queued_frames(self) -> tuple[int, int]:
        """Return the frames waiting in all send queues and in the fullest one (read when /metrics is scraped)."""
        depths = [member.queue.qsize() for members in self._rooms.values() for member in members]
        return sum(depths), max(depths, default=0)

    def join(self, room: str, member: Member) -> None:
        members = self._rooms.get(room)
        if members is None:
            members = self._rooms[room] = set()
            self._unsubscribe[room] = self._broker.subscribe(room, self._on_message)
        members.add(member)

    def leave(self, room: str, member: Member) -> None:
        members = self._rooms.get(room)
        if members is None or member not in members:
            return
        members.discard(member)
        if not members:
            del self._rooms[room]
            self._unsubscribe.pop(room)()

    def _on_message(self, message: Message) -> None:
        frame = message_frame(message)
        for member in tuple(self._rooms.get(message.room, ())):
            if not member.offer(message.id, frame):
                # A slow reader must not stall the room or grow memory: cut it loose; it resumes with since=.
                self.overflow_closes += 1
                self.close_soon(member, CLOSE_OVERFLOW, "send queue overflow; reconnect with since=")

    def close_soon(self, member: Member, code: int, reason: str) -> None:
        if member.closing:
            return
        member.closing = True
        if member.writer is not None:
            member.writer.cancel()
        task = asyncio.get_running_loop().create_task(member.ws.close(code=code, message=reason.encode()))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def close_all(self, code: int, reason: str) -> None:
        """Close every member with `code` (1001 shutdown, 1012 drain), and every member that joins later."""
        self.closing = (code, reason)
        for members in tuple(self._rooms.values()):
            for member in tuple(members):
                self.close_soon(member, code, reason)
        if self._closers:
            await asyncio.wait(tuple(self._closers), timeout=2.0)


WS_HUB = web.AppKey("websocket_hub", WebSocketHub)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    config = request.app[CONFIG]
    hub = request.app[WS_HUB]
    room = validate_room(request.match_info["room"])
    since = int_param(request, "since", None, 0, 2**53)
    ws = web.WebSocketResponse(
        heartbeat=config.ws_heartbeat_s,
        max_msg_size=config.max_ws_message_bytes,
        compress=config.ws_compress,
    )
    if not ws.can_prepare(request).ok:
        raise InvalidInput("this route needs a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
    if hub.closing is not None:
        raise Unavailable("this instance is shutting down or draining: connect again (through the balancer)")
    await ws.prepare(request)

    member = Member(ws, config.ws_send_queue, tally_of(request))
    hub.join(room, member)  # before reading the backlog, so nothing posted meanwhile is missed
    if hub.closing is not None:  # close_all ran while the upgrade was being answered
        hub.close_soon(member, *hub.closing)
    member.writer = asyncio.get_running_loop().create_task(
        member.write(request.app[BROKER], room, since, config.limits.page)
    )
    member.writer.add_done_callback(lambda task: _writer_done(hub, member, task))
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await _on_text(request.app[BROKER], config, room, member, msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.close(code=CLOSE_UNSUPPORTED_DATA, message=b"binary frames are not accepted")
            # ERROR (e.g. a message over max_msg_size): aiohttp has already closed with its code (1009).
    finally:
        hub.leave(room, member)
        member.closing = True
        member.writer.cancel()
        if not ws.closed:
            await ws.close()
    return ws


async def _on_text(broker: Broker, config: ServerConfig, room: str, member: Member, data: str) -> None:
    try:
        try:
            body = json.loads(data)
        except ValueError:
            raise InvalidInput("frame is not valid JSON") from None
        except RecursionError:
            raise InvalidInput("frame is nested too deeply") from None
        if not isinstance(body, dict):
            raise InvalidInput("frame must be a JSON object")
        kind = body.pop("type", None)
        if kind != "send":
            raise InvalidInput('type must be "send"')
        user, text, sent_at = parse_post(body, config.limits.text_chars)
        await broker.post(room, user, text, sent_at)  # the sender hears its own message through fan-out
        member.tally.messages_accepted += 1
    except ChatError as error:
        member.offer(0, error_frame(str(error)))


def _writer_done(hub: WebSocketHub, member: Member, task: asyncio.Task) -> None:
    if task.cancelled():
        return
    error = task.exception()
    if isinstance(error, Unavailable):
        # The broker could not answer the backlog read (Redis down): "try again later", with since=.
        hub.close_soon(member, CLOSE_OVERFLOW, "broker unavailable; reconnect with since=")
        return
    if error is not None and not isinstance(error, ConnectionError):
        log.error("websocket writer failed: %r", error)
    # The peer went away mid-send (or the writer failed): close so the handler's receive loop ends.
    hub.close_soon(member, WSCloseCode.INTERNAL_ERROR if error else WSCloseCode.OK, "writer stopped")


def add_routes(app: web.Application, config: ServerConfig) -> None:
    hub = app[WS_HUB] = WebSocketHub(app[BROKER])
    app.router.add_get("/rooms/{room}/ws", handle_ws)

    async def close_websockets(app: web.Application) -> None:
        await hub.close_all(CLOSE_GOING_AWAY, "server shutdown")

    app.on_shutdown.append(close_websockets)
