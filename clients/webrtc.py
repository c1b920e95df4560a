"""WebRTC data channel client: aiortc on the process's asyncio bridge (clients/bridge.py), under gevent members."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, ClassVar

from servers import rtc

from . import bridge as asyncio_bridge
from .base import ClientError, JsonHttp

ICE_HOST_ADDRESSES = rtc.LOOPBACK  # host candidates on loopback only: no STUN, no TURN, as the server's
# ICE consent freshness (RFC 7675) is how a WebRTC peer learns the other end is gone: no TCP reset tells it.
# aioice checks every 5 s and gives up after 6 misses (30 s), the RFC's ceiling; a member whose server died
# would sit silent that long before reconnecting, where a WebSocket member hears the reset at once. Browsers
# report "disconnected" after a few seconds; the member checks each second and gives up after 3 misses.
CONSENT_INTERVAL_S = 1.0
CONSENT_FAILURES = 3
_ready = False


class WebRTCClient(asyncio_bridge.BridgedClient):
    """Joins with an SDP offer to `POST /rooms/{room}/webrtc?since=ID`; one data channel `chat` carries the
    WebSocket protocol's frames both ways (clients.bridge.BridgedClient). The peer connection (aiortc) lives on
    the process's asyncio thread. This variant's channel is ordered and reliable.
    """

    transport = "webrtc"
    what = "data channel"
    ordered: ClassVar[bool] = True
    max_retransmits: ClassVar[int | None] = None  # None: reliable (SCTP retransmits until delivered)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Touched on the loop's thread only.
        self._pc = None
        self._channel = None

    @classmethod
    def bridge(cls) -> asyncio_bridge.AsyncioBridge:
        """The process's bridge, with aioice told its host addresses and consent checks (once)."""
        global _ready
        if not _ready:
            import aiortc  # noqa: F401  here, not on the loop's thread: 0.2 s, paid once, by webrtc members only

            rtc.use_addresses(ICE_HOST_ADDRESSES)  # aioice leaves 127.0.0.1 out by default
            import aioice.ice

            aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES = CONSENT_INTERVAL_S, CONSENT_FAILURES
            # aioice logs every connectivity check at INFO: eight lines per member joining, in Locust's own log.
            logger = logging.getLogger("aioice")
            logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
            _ready = True
        return asyncio_bridge.shared()

    def _open_connection(self, generation: int) -> None:
        http = JsonHttp(self.host, self.port, self.timeout_s)
        try:
            offer = self._bridge.call(self._offer, generation, timeout_s=self.timeout_s)
            body = json.dumps({"type": "offer", "sdp": offer}).encode()
            status, answer = http.request("POST", f"/rooms/{self.room}/webrtc?since={self.last_id}", body)
            if status != 200:
                raise ClientError(f"offer answered {status}: {answer[:200]!r}")
            answer = http.decode(answer)
            if not isinstance(answer, dict) or answer.get("type") != "answer" or not isinstance(answer.get("sdp"), str):
                raise ClientError(f"not an SDP answer: {str(answer)[:200]}")
            self._bridge.call(self._answer, generation, answer["sdp"], timeout_s=self.timeout_s)
        finally:
            http.close()

    async def _offer(self, generation: int) -> str:
        """Make the peer connection and its channel; return the offer, every candidate in it (non-trickle)."""
        from aiortc import RTCPeerConnection

        await self._close_current()
        pc = RTCPeerConnection(rtc.configuration())  # no ICE servers: aiortc's default asks Google's STUN
        channel = pc.createDataChannel("chat", ordered=self.ordered, maxRetransmits=self.max_retransmits)
        self._pc, self._channel = pc, channel
        to_gevent, arrived, lost = self._bridge.to_gevent, self._arrived, self._connection_lost
        emit_event = channel.emit

        def emit(event: str, *args: Any) -> bool:
            # Messages skip pyee (a tenth of the generator's CPU per delivered message went to its dispatch), and
            # are stamped as aiortc hands them over: DELIVER measures the transport, not the hand-over.
            if event == "message":
                to_gevent(arrived, generation, args[0], time.time())
                return True
            return emit_event(event, *args)

        channel.emit = emit

        @channel.on("close")
        def on_close() -> None:
            to_gevent(lost, generation)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                on_close()

        await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate here
        if self.closed or generation != self._current:  # closed meanwhile: do not leave it behind
            await self._close_current()
            raise ClientError("superseded")
        return pc.localDescription.sdp

    async def _answer(self, generation: int, sdp: str) -> None:
        """Apply the server's answer and wait until the channel is open (the server then sends the backlog)."""
        from aiortc import RTCSessionDescription

        pc, channel = self._pc, self._channel
        if generation != self._current or pc is None:
            raise ClientError("superseded")
        opened = asyncio.get_running_loop().create_future()
        if channel.readyState == "open":
            opened.set_result(None)
        channel.once("open", lambda: opened.done() or opened.set_result(None))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        await opened

    def _transmit(self, frame: str) -> bool:
        channel = self._channel
        if channel is None or channel.readyState != "open":
            return False
        channel.send(frame)
        return True

    async def _close_current(self) -> None:
        pc, self._pc, self._channel = self._pc, None, None
        if pc is not None:
            await rtc.close(pc)


class UnreliableWebRTCClient(WebRTCClient):
    """The same member over an unordered channel that never retransmits (`maxRetransmits: 0`), as a game sends
    positions: a message lost on the way stays lost, and the receivers count it as lost (the price of this
    transport, not a client error); nothing reconnects or resends because of a gap."""

    transport = "webrtc-unreliable"
    ordered = False
    max_retransmits = 0
    expects_loss = True
