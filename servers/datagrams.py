"""What the UDP transports share: the meter of one flow of datagrams, and a datagram transport that counts into it.

WebRTC (aioice's sockets, one per peer connection) and HTTP/3 (aioquic's one socket, datagrams routed to
their QUIC connection) both count the exact UDP payload of every datagram they receive and every one they hand
to their socket: the handshake (STUN, DTLS; QUIC's TLS), acknowledgements and retransmissions included. A flow
does not know its transport's label when its first datagrams arrive (a peer connection learns it when its data
channel opens, a QUIC connection when its session's CONNECT is routed): they wait, counted, and go under that
label when it is known, as a TCP connection's bytes wait for their request to be routed (servers.metrics).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .metrics import ClientLedger, Tally, WireCount


class DatagramMeter(WireCount):
    """One flow's UDP bytes: `datagram_received(size)`, `datagram_sent(size)`, counted under its label once
    `settle(tally, client)` names it, and until then pending. `fallback` is where they go if it never does (the
    label of the request that started it, or the server's default)."""

    __slots__ = ("tally", "client", "pending_in", "pending_out", "fallback")

    def __init__(self, fallback: Tally, client: ClientLedger | None = None) -> None:
        self.tally: Tally | None = None
        self.client = client
        self.pending_in = self.pending_out = 0
        self.fallback = fallback

    datagram_received = WireCount.count_in
    datagram_sent = WireCount.count_out

    def settle(self, tally: Tally, client: ClientLedger | None = None) -> None:
        """Count under `tally` from now on, the bytes so far included (and in the flow's client ledger)."""
        super().settle(tally, client if client is not None else self.client)

    @property
    def settled(self) -> bool:
        return self.tally is not None

    def settle_fallback(self) -> None:
        """The flow ended without a label: its bytes go to `fallback`."""
        if self.tally is None:
            self.settle(self.fallback)


class MeteredDatagramTransport:
    """A datagram transport that counts what is handed to its socket into a meter (`datagram_sent`)."""

    __slots__ = ("_transport", "_meter")

    def __init__(self, transport: asyncio.DatagramTransport, meter: Any) -> None:
        self._transport = transport
        self._meter = meter

    def sendto(self, data: bytes, addr: Any = None) -> None:
        self._transport.sendto(data, addr)
        self._meter.datagram_sent(len(data))

    def __getattr__(self, name: str) -> Any:  # close, get_extra_info, abort, ...: the real transport's
        return getattr(self._transport, name)
