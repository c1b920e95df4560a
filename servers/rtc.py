"""WebRTC on the lab's terms, for the server, the client and the tests: ICE on the given addresses only
(loopback by default; no STUN, no TURN), and every UDP datagram of a metered peer connection counted.

aioice gathers a host candidate on every address of the machine except 127.0.0.1 (`aioice.ice.
get_host_addresses`), so out of the box a lab peer would offer its LAN and Wi-Fi addresses and could not
use loopback at all. `install()` replaces that function with one that returns exactly the addresses in
force: those of the innermost `gathering(addresses)` block, else the process default (`use_addresses`,
["127.0.0.1"] unless told). It also makes every aioice socket protocol a `MeteredStunProtocol`, which counts
each datagram it receives and each one it hands to its socket (STUN, DTLS and SCTP alike: the whole UDP
payload) into the `DatagramMeter` that was in force when the peer connection gathered its candidates.

Both choices travel with the gathering coroutine as context variables (a `with gathering(...)` around
`await pc.setLocalDescription(...)`), not in module state, so two servers, or a server and its test
client, in one process each get their own addresses and their own counts. Use `configuration()` for every
RTCPeerConnection, so no STUN server is ever asked (aiortc asks Google's by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from .core import InvalidInput

if TYPE_CHECKING:  # the registry reads this module: it must not import aiohttp (servers.datagrams does)
    from .datagrams import DatagramMeter

LOOPBACK = ("127.0.0.1",)


_default_addresses: tuple[str, ...] = LOOPBACK
_addresses: ContextVar[tuple[str, ...] | None] = ContextVar("rtlab_ice_addresses", default=None)
_meter: ContextVar[DatagramMeter | None] = ContextVar("rtlab_datagram_meter", default=None)
_installed = False


def check_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """Return `addresses` as a tuple of IP address literals (not wildcards); raise ValueError otherwise."""
    checked = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(f"ICE address {address!r} is not an IP address") from None
        if ip.is_unspecified or ip.is_multicast:
            raise ValueError(f"ICE address {address!r} must be one address of this host, not {ip}")
        checked.append(str(ip))
    if not checked:
        raise ValueError("at least one ICE address is needed")
    return tuple(checked)


def use_addresses(addresses: Iterable[str] = LOOPBACK) -> tuple[str, ...]:
    """Make `addresses` the process default for host candidates (a client's, say); install(); return them."""
    global _default_addresses
    _default_addresses = check_addresses(addresses)
    install()
    return _default_addresses


def addresses_in_force() -> tuple[str, ...]:
    return _addresses.get() or _default_addresses


@contextlib.contextmanager
def gathering(addresses: Iterable[str] | None = None, meter: DatagramMeter | None = None) -> Iterator[None]:
    """Within: peer connections gather host candidates on `addresses` only (default: the process default), and
    count their datagrams into `meter` for as long as they live. Wrap `await pc.setLocalDescription(...)`."""
    install()
    address_token = _addresses.set(check_addresses(addresses) if addresses is not None else None)
    meter_token = _meter.set(meter)
    try:
        yield
    finally:
        _meter.reset(meter_token)
        _addresses.reset(address_token)


def configuration():
    """The RTCConfiguration of every lab peer connection: no ICE servers (no STUN, no TURN; aiortc's default
    would ask stun.l.google.com)."""
    from aiortc import RTCConfiguration

    return RTCConfiguration(iceServers=[])


async def close(pc) -> None:
    """Close `pc` and let go of what aiortc leaves in reference cycles, so that it and everything it opened (ICE, DTLS,
    SCTP, the data channels, the sockets, the OpenSSL context and certificate) are freed when the last reference goes,
    not at the next full garbage collection: ~170 objects and ~140 kB a peer connection, measured (docs/metrics.md,
    "Half an hour under load"). aiortc removes the listeners of the connection and of its ICE transport once closed,
    but not the one it put on its DTLS transport (`statechange`, a method of the connection: transport and connection
    then hold each other); aioice's side is cut by MeteredStunProtocol.connection_lost. Idempotent."""
    await pc.close()
    sctp = pc.sctp
    if sctp is not None:
        sctp.transport.remove_all_listeners()  # closed: it emits nothing more


def install() -> None:
    """Make aioice gather only the addresses in force and count metered datagrams (idempotent)."""
    global _installed
    if _installed:
        return
    import aioice.ice

    aioice.ice.get_host_addresses = _host_addresses
    aioice.ice.StunProtocol = _metered_protocol_class(aioice.ice.StunProtocol)
    # aioice logs every connectivity check at INFO: eight lines a peer, half a megabyte a run at 800 members.
    logger = logging.getLogger("aioice")
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    _installed = True


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """aioice's get_host_addresses, for the lab: exactly the addresses in force (of the families asked for)."""
    return [a for a in addresses_in_force()
            if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)]


def _metered_protocol_class(base: type) -> type:
    from .datagrams import MeteredDatagramTransport

    class MeteredStunProtocol(base):
        """aioice's socket protocol, counting each datagram into the meter in force when it was made."""

        def __init__(self, receiver: Any) -> None:
            super().__init__(receiver)
            self.rtlab_meter = _meter.get()

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            meter = self.rtlab_meter
            super().connection_made(MeteredDatagramTransport(transport, meter) if meter is not None else transport)

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            # Its socket is closed, and it told its ICE connection so: let go of the connection, which holds this
            # protocol in its candidate pairs (a cycle that kept every closed peer connection until a full collection).
            self.receiver = None

        def datagram_received(self, data: bytes | str, addr: tuple[Any, ...]) -> None:
            meter = self.rtlab_meter
            if meter is not None:
                meter.datagram_received(len(data))
            super().datagram_received(data, addr)

    MeteredStunProtocol.__qualname__ = MeteredStunProtocol.__name__ = "MeteredStunProtocol"
    return MeteredStunProtocol


def candidate_addresses(sdp: str) -> list[str]:
    """The connection addresses of the `a=candidate:` lines of `sdp` (RFC 8839 §5.1: the fifth field)."""
    found = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line[len("a=candidate:"):].split()
            if len(fields) >= 5:
                found.append(fields[4])
    return found


def without_unresolvable_candidates(sdp: str) -> str:
    """`sdp` without candidates whose address is not an IP literal (an mDNS `.local` name, as browsers offer):
    resolving one would make aioice join the mDNS multicast group on every interface. The peer's checks still
    reach our own candidates, and ICE learns its address from them (a peer-reflexive candidate); for that ICE
    must not be told that the candidates are complete, or with none left it fails at once: when a candidate is
    dropped, so is `a=end-of-candidates` (the connect timeout bounds the wait instead)."""
    kept, dropped = [], False
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            fields = line[len("a=candidate:"):].split()
            if len(fields) < 5 or not _is_ip(fields[4]):
                dropped = True
                continue
        kept.append(line)
    if dropped:
        kept = [line for line in kept if not line.startswith("a=end-of-candidates")]
    return "".join(kept)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_offer(body: object) -> str:
    """The SDP of an offer `{"type": "offer", "sdp": ...}` with one data channel section and nothing else; raise
    InvalidInput naming what is wrong."""
    from aiortc import sdp as aiortc_sdp

    if not isinstance(body, dict):
        raise InvalidInput('request body must be a JSON object {"type": "offer", "sdp": "..."}')
    unknown = sorted(set(body) - {"type", "sdp"})
    if unknown:
        raise InvalidInput(f"unknown field {unknown[0]!r}: the body is {{\"type\": \"offer\", \"sdp\": ...}}")
    if body.get("type") != "offer":
        raise InvalidInput(f'type must be "offer" (this route answers offers), not {body.get("type")!r}')
    sdp = body.get("sdp")
    if not isinstance(sdp, str) or not sdp.strip():
        raise InvalidInput("sdp must be the offer's session description, a non-empty string")
    if not sdp.startswith("v=0"):
        raise InvalidInput("sdp is not a session description (it must start with v=0)")
    try:
        description = aiortc_sdp.SessionDescription.parse(sdp)
    except Exception as error:  # noqa: BLE001 (aiortc's parser raises whatever the line it trips on gives)
        raise InvalidInput(f"sdp does not parse: {type(error).__name__} {error}".rstrip()) from None
    media = description.media
    if len(media) != 1 or media[0].kind != "application":
        raise InvalidInput("the offer must have exactly one media section, the data channel's (m=application): "
                           f"it has {[m.kind for m in media] or 'none'}")
    section = media[0]
    if section.profile not in ("UDP/DTLS/SCTP", "DTLS/SCTP"):
        raise InvalidInput(f"the data channel section must be UDP/DTLS/SCTP, not {section.profile}")
    if section.ice is None or not section.ice.usernameFragment or not section.ice.password:
        raise InvalidInput("the offer has no ICE credentials (a=ice-ufrag, a=ice-pwd)")
    if section.dtls is None or not section.dtls.fingerprints:
        raise InvalidInput("the offer has no DTLS fingerprint (a=fingerprint)")
    return sdp
