"""WebRTC data channels: `POST /rooms/{room}/webrtc?since=ID` answers an SDP offer; the chat then runs peer to peer
over UDP (ICE, DTLS, SCTP) on the one data channel the client offered, `chat`, with the WebSocket's messages."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import rtc
from .broker import Broker
from .core import (
    ChatError,
    InvalidInput,
    Limits,
    Message,
    Unavailable,
    validate_room,
)
from .guard import GUARD, SendLimiter
from .datagrams import DatagramMeter
from .http import BROKER, int_param, json_text, query_value, read_json
from .metrics import METER, NULL_TALLY, Tally, tally_of
from .push import Encoded, Prepared, PushHub, SendingMember
from .transport import ServerTransport

log = logging.getLogger("rtlab.server")

CHANNEL_LABEL = "chat"
RELIABLE, UNRELIABLE = "reliable", "unreliable"  # what the client's channel is, by its parameters
MAX_MESSAGE_CHARS = 64 * 1024  # a send is a few hundred bytes; SCTP would assemble up to 256 KiB (a=max-message-size)
# The channel's own send buffer (RTCDataChannel.bufferedAmount: bytes aiortc holds before SCTP takes them): above
# HIGH a member's messages wait in its bounded queue, and its writer resumes once the buffer is down to LOW.
BUFFER_HIGH_BYTES = 64 * 1024
BUFFER_LOW_BYTES = 16 * 1024
CLOSE_GRACE_S = 1.0  # for the peer to take the close message and the channel's reset, before the association goes

# The WebSocket's close codes, told in a last {"type": "close"} message (a data channel has no close code).
CLOSE_POLICY = 1008  # kept on sending past its rate limit
CLOSE_OVERFLOW = 1013  # too slow a reader, or the broker unavailable: reconnect with since= the last id seen


def channel_kind(channel) -> str | None:
    """RELIABLE (ordered, fully reliable), UNRELIABLE (unordered, never retransmitted), or None (anything else)."""
    if channel.maxPacketLifeTime is not None:
        return None
    if channel.ordered and channel.maxRetransmits is None:
        return RELIABLE
    if not channel.ordered and channel.maxRetransmits == 0:
        return UNRELIABLE
    return None


def message_text(message: Message) -> str:
    # {"type":"message", ...message}, as on a WebSocket: splice the message's one JSON encoding.
    return '{"type":"message",' + message.json[1:]


def encode(message: Message) -> Encoded:
    """One message as every member's channel sends it (a string message; each peer's DTLS seals its own), and the
    bytes of the message JSON in it."""
    return Prepared(message_text(message), None), message.json_bytes


def error_item(error: str) -> tuple[int, Prepared, int]:
    return 0, Prepared(json.dumps({"type": "error", "error": error}), None), 0


class ChannelBuffer:
    """A data channel as push.PushMember's write-through target: `write` is RTCDataChannel.send (synchronous: it
    hands the message to the SCTP association), and the write buffer is the channel's bufferedAmount."""

    __slots__ = ("channel",)

    def __init__(self, channel) -> None:
        self.channel = channel

    def write(self, data: str) -> None:
        self.channel.send(data)

    def is_closing(self) -> bool:
        return self.channel.readyState != "open"

    def get_write_buffer_size(self) -> int:
        return self.channel.bufferedAmount

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return BUFFER_LOW_BYTES, BUFFER_HIGH_BYTES


class Member(SendingMember):
    """One open chat channel. Its sends take from a token bucket of its own, and are posted one after another."""

    __slots__ = ("peer", "channel", "wakeup")

    def __init__(self, peer: Peer, channel, queue_size: int, tally: Tally) -> None:
        super().__init__(queue_size, tally, ChannelBuffer(channel), peer.owner.broker, peer.room)
        self.peer = peer
        self.channel = channel
        self.wakeup: asyncio.Future | None = None  # the writer waits on it while the channel's buffer is full
        channel.bufferedAmountLowThreshold = BUFFER_LOW_BYTES
        channel.on("bufferedamountlow", self._wake)
        channel.on("close", self._wake)

    def wire(self, data: Prepared) -> str | None:
        return data.body

    async def send(self, data: Prepared) -> None:
        channel = self.channel
        while channel.readyState == "open" and channel.bufferedAmount > BUFFER_HIGH_BYTES:
            self.wakeup = asyncio.get_running_loop().create_future()
            await self.wakeup
        if channel.readyState != "open":
            raise ConnectionResetError("the data channel closed")
        channel.send(data.body)

    def _wake(self) -> None:
        if self.wakeup is not None and not self.wakeup.done():
            self.wakeup.set_result(None)

    async def close(self, code: int, reason: str) -> None:
        """Tell the peer why (the WebSocket's close code), close the channel after what is queued, then the
        connection."""
        await close_channel(self.channel, {"type": "close", "code": code, "reason": reason})
        await self.peer.close()

    def on_message(self, data: str | bytes) -> None:
        """A message from the peer: a send is checked and rate-limited now, and posted in its turn; anything else is
        answered with an error message, and the channel stays open."""
        owner = self.peer.owner
        if len(data) > MAX_MESSAGE_CHARS:
            self.refuse(f"message over {MAX_MESSAGE_CHARS} characters")
        elif not self.receive(data, owner.limits, owner.limiter):  # it keeps on after being told: cut it off
            owner.hub.close_soon(self, CLOSE_POLICY, "sending too fast")

    def refuse(self, error: str) -> None:
        self.offer(error_item(error))

    def dropped(self) -> None:
        self.peer.close_soon()


class Peer:
    """One peer connection, from the offer until it closes. Its UDP datagrams are counted in `meter` under the label
    of the transport whose channel it opens (reliable or not, which only the channel says); until then they wait."""

    __slots__ = ("owner", "pc", "room", "since", "meter", "member", "timer", "closed", "done")

    def __init__(self, owner: WebRTC, pc, room: str, since: int | None, meter: DatagramMeter) -> None:
        self.owner = owner  # the transport holding it now (the one that answered; the channel's once open)
        self.pc = pc
        self.room = room
        self.since = since
        self.meter = meter
        self.member: Member | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False
        self.done: asyncio.Future | None = None
        pc.on("datachannel", self.on_channel)
        pc.on("connectionstatechange", self.on_state)

    # ---- events ----
    def on_state(self) -> None:
        if self.pc.connectionState in ("failed", "closed"):
            self.close_soon()

    def on_channel(self, channel) -> None:
        if self.closed:
            return
        background = self.owner.background
        if self.member is not None:  # one channel per peer connection: the chat
            background(_refuse(channel, "one data channel per connection: this one already has its chat channel"))
            return
        kind = channel_kind(channel)
        if channel.label != CHANNEL_LABEL or kind is None:
            background(_refuse(channel, f'offer one data channel labelled "{CHANNEL_LABEL}", either ordered and '
                                        "reliable, or ordered: false with maxRetransmits: 0", self))
            return
        owner = self.owner.signaling.owners.get(kind)
        if owner is None:
            background(_refuse(channel, f"this server has no {kind} WebRTC channels", self))
            return
        if owner is not self.owner:  # e.g. an unreliable channel offered without channel=unreliable
            if owner.hub.closing is not None or len(owner.peers) >= owner.max_peers:
                background(_refuse(channel, f"this server holds its most {kind} WebRTC peer connections; try again "
                                            "later", self))
                return
            self.owner.peers.discard(self)
            owner.peers.add(self)
            self.owner = owner
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.meter.settle(owner.tally)
        member = self.member = Member(self, channel, owner.send_queue, owner.tally)
        channel.on("message", member.on_message)
        channel.on("close", self.close_soon)
        hub = owner.hub
        hub.join(self.room, member)  # before reading the backlog, so nothing posted meanwhile is missed
        hub.start_writer(member, self.room, self.since, owner.limits.page, lambda task: hub.writer_done(
            member, task, "webrtc", lambda error: member.peer.close_soon()))

    def timed_out(self) -> None:
        self.timer = None
        if self.member is None and not self.closed:
            self.owner.connect_timeouts += 1
            self.close_soon()

    # ---- the end ----
    def close_soon(self) -> None:
        if self.closed:
            return
        self.owner.background(self.close())

    async def close(self) -> None:
        """Leave the room, close the connection (its sockets, its tasks) and forget it. Idempotent."""
        if self.closed:
            if self.done is not None:
                await asyncio.shield(self.done)
            return
        self.closed = True
        self.done = asyncio.get_running_loop().create_future()
        owner = self.owner
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        member = self.member
        if member is not None:
            owner.hub.leave(self.room, member)
            member.stop()
        try:
            await rtc.close(self.pc)
        except Exception as error:  # noqa: BLE001 (a closing connection must not keep its place)
            log.warning("closing a WebRTC peer connection failed: %r", error)
        finally:
            self.member = None  # it holds this peer: freed with it when the last reference goes, not by the collector
            self.meter.settle_fallback()
            owner.peers.discard(self)
            self.done.set_result(None)


async def close_channel(channel, last: dict) -> None:
    """Send `last`, then close the channel, waiting (a moment at most) until the peer has acknowledged its reset,
    which SCTP sends after the messages queued before it: closing the connection at once would drop them."""
    if channel.readyState != "open":
        return
    closed = asyncio.get_running_loop().create_future()
    channel.on("close", lambda: closed.done() or closed.set_result(None))
    channel.send(json.dumps(last))
    channel.close()
    await asyncio.wait((closed,), timeout=CLOSE_GRACE_S)


async def _refuse(channel, error: str, peer: Peer | None = None) -> None:
    """Answer a channel the chat cannot take with an error, close it, and its connection with it when given."""
    await close_channel(channel, {"type": "error", "error": error})
    if peer is not None:
        await peer.close()


class Signaling:
    """The signaling route, added once whichever WebRTC transport mounts first; it hands each offer to the
    transport the `channel=` hint names (default: the reliable one, when mounted)."""

    def __init__(self, app: web.Application) -> None:
        self.owners: dict[str, WebRTC] = {}  # RELIABLE / UNRELIABLE -> its mounted transport
        self.route = app.router.add_post("/rooms/{room}/webrtc", self.handle)

    def answering(self, hint: str | None) -> WebRTC:
        if hint is None:
            return self.owners.get(RELIABLE) or self.owners[UNRELIABLE]
        owner = self.owners.get(hint)
        if owner is None:
            raise InvalidInput(f"this server has no {hint} WebRTC channels; it has {', '.join(self.owners)} ones")
        return owner

    async def handle(self, request: web.Request) -> web.Response:
        hint = query_value(request, "channel")
        if hint is not None and hint not in (RELIABLE, UNRELIABLE):
            raise InvalidInput(f"channel must be {RELIABLE} or {UNRELIABLE}")
        return await self.answering(hint).answer(request)


SIGNALING = web.AppKey("webrtc_signaling", Signaling)


class WebRTC(ServerTransport):
    """`POST /rooms/{room}/webrtc?since=ID` with an offer; the members of its kind of channel (reliable here)."""

    kind = RELIABLE
    knob_prefix = "webrtc"  # its registry entry's knobs: webrtc_max_peers, ...

    def mount(self) -> list[web.AbstractRoute]:
        knob = lambda name: self.config.knob(f"{self.knob_prefix}_{name}")  # noqa: E731
        self.max_peers = int(knob("max_peers"))
        self.connect_timeout_s = float(knob("connect_timeout_s"))
        self.send_queue = int(knob("send_queue"))
        self.addresses = rtc.check_addresses(knob("ice_addresses"))
        self.limits: Limits = self.config.limits
        self.broker: Broker = self.app[BROKER]
        self.limiter: SendLimiter = self.app[GUARD].limiter
        self.hub = PushHub(self.broker, encode, (CLOSE_OVERFLOW, "send queue overflow; reconnect with since="))
        self.peers: set[Peer] = set()  # every live peer connection: connecting, or with its channel open
        self.connect_timeouts = 0
        self.refused = 0
        self._tasks: set[asyncio.Task] = set()
        if SIGNALING not in self.app:
            self.app[SIGNALING] = Signaling(self.app)
        self.signaling = self.app[SIGNALING]
        self.signaling.owners[self.kind] = self
        self.app.on_startup.append(self._find_tally)
        import aiortc  # noqa: F401  (0.2 s: paid at startup, not by the first offer's answer)

        rtc.install()
        return [self.signaling.route]

    async def _find_tally(self, app: web.Application) -> None:
        meter = app.get(METER)  # this transport's label: its own, or the only one on a single-transport server
        self.tally = meter.tallies.get(self.name, meter.default) if meter is not None else NULL_TALLY

    def claims(self, request: web.Request) -> bool:
        hint = request.query.get("channel")
        return hint == self.kind or (hint is None and self.signaling.answering(None) is self)

    def background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def answer(self, request: web.Request) -> web.Response:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        room = validate_room(request.match_info["room"])
        since = int_param(request, "since", None, 0, 2**53)
        if self.hub.closing is not None:
            raise Unavailable("this instance is shutting down or draining: connect again (through the balancer)")
        if len(self.peers) >= self.max_peers:
            self.refused += 1
            raise Unavailable(f"this server holds its most {self.kind} WebRTC peer connections ({self.max_peers}); "
                              "try again later")
        sdp = rtc.without_unresolvable_candidates(rtc.parse_offer(await read_json(request)))
        meter = request.app.get(METER)
        client = meter.client_of(request) if meter is not None and meter.client_of is not None else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.connect_timeout_s  # for the answer, and then for the channel to open
        pc = RTCPeerConnection(rtc.configuration())
        peer = Peer(self, pc, room, since, DatagramMeter(tally_of(request), client))
        self.peers.add(peer)  # counted against the cap from the offer on
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                    answer = await pc.createAnswer()
                except (ValueError, LookupError, AssertionError) as error:
                    raise InvalidInput(f"the offer cannot be answered: {error}") from None
                with rtc.gathering(self.addresses, peer.meter):  # host candidates on these addresses; datagrams counted
                    await pc.setLocalDescription(answer)
        except BaseException as error:
            closed_meanwhile = peer.closed  # by a drain or a shutdown, under aiortc's feet
            self.background(peer.close())  # not awaited here: this task may be being cancelled
            if isinstance(error, TimeoutError):
                raise Unavailable(f"the answer was not ready within {self.connect_timeout_s:g} s") from None
            if closed_meanwhile and not isinstance(error, (ChatError, asyncio.CancelledError)):
                raise Unavailable("this instance is shutting down or draining: connect again") from None
            raise
        # ICE, DTLS, SCTP and the channel's opening must be done in time, or the connection is closed.
        peer.timer = loop.call_at(deadline, peer.timed_out)
        return json_text(200, json.dumps({"type": "answer", "sdp": pc.localDescription.sdp}))

    async def close_members(self, code: int, reason: str) -> dict[str, int]:
        connecting = [peer for peer in self.peers if peer.member is None]
        closed = await self.hub.close_all(code, reason)  # also refuses new offers from now on
        if connecting:
            await asyncio.wait([asyncio.ensure_future(peer.close()) for peer in connecting], timeout=2.0)
        if self._tasks:
            await asyncio.wait(tuple(self._tasks), timeout=2.0)
        return {f"{self.knob_prefix}_peers_closed": closed + len(connecting)}

    def held(self, room: str) -> int:
        return self.hub.held(room)

    def gauges(self):
        # Both WebRTC transports share metric names (by their transport label): the first mounted reports both, so
        # each family appears once in /metrics.
        owners = list(self.signaling.owners.values())
        if owners[0] is not self:
            return
        rows = []
        for t in owners:
            queued, deepest = t.hub.queued()
            rows.append((t.name, len(t.peers), queued, deepest, t.hub.overflow_closes, t.connect_timeouts, t.refused))
        for column, (kind, name, doc) in enumerate((
            (GaugeMetricFamily, "rtlab_webrtc_peer_connections",
             "WebRTC peer connections held: connecting (offer answered) or with their chat channel open."),
            (GaugeMetricFamily, "rtlab_webrtc_send_queue_messages",
             "Messages waiting in all data-channel send queues."),
            (GaugeMetricFamily, "rtlab_webrtc_send_queue_max_messages",
             "Messages waiting in the fullest data-channel send queue."),
            (CounterMetricFamily, "rtlab_webrtc_overflow_closes",
             "Data channels closed (1013) because their send queue was full."),
            (CounterMetricFamily, "rtlab_webrtc_connect_timeouts",
             "Peer connections closed because their channel was not open in time."),
            (CounterMetricFamily, "rtlab_webrtc_offers_refused",
             "Offers answered 503 because the peer connections were at their cap."),
        ), start=1):
            family = kind(name, doc, labels=["transport"])
            for row in rows:
                family.add_metric([row[0]], row[column])
            yield family


class UnreliableWebRTC(WebRTC):
    """The members whose chat channel is unordered and never retransmitted (`ordered: false, maxRetransmits: 0`):
    a lost datagram's message stays lost, and the receiver sees a gap in the ids."""

    kind = UNRELIABLE
    knob_prefix = "webrtc_unreliable"
