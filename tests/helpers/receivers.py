"""A receiver for transport X: one member of a room that collects what the transport delivers, the way a real
client would, on aiohttp in the test's event loop. Every transport of the registry needs one here."""

from __future__ import annotations

import asyncio
import json
import os

import aiohttp

UNIT = float(os.environ.get("RTLAB_TIMEOUT_SCALE", "1"))


class Receiver:
    """`async with receiver(session, base, transport, room, since) as member:` ... `await member.wait_for(n)`.

    Entering returns once the member is in the room (its first poll answered, its socket or stream open).
    """

    def __init__(self, session: aiohttp.ClientSession, base: str, room: str, since: int = 0) -> None:
        self.session, self.base, self.room, self.since = session, base, room, since
        self.url = f"{base}/rooms/{room}"
        self.received: list[dict] = []
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Receiver:
        self._task = asyncio.create_task(self._run())
        ready = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait({ready, self._task}, timeout=5 * UNIT, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            ready.cancel()
            self._task.result()  # raises what stopped it
            raise AssertionError("the receiver stopped before it was ready")
        if ready not in done:
            ready.cancel()
            raise TimeoutError("the receiver was not ready in time")
        return self

    async def __aexit__(self, *exc) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        await self.close()

    async def close(self) -> None:
        return None

    async def _run(self) -> None:
        raise NotImplementedError

    async def wait_for(self, count: int, timeout: float = 5 * UNIT) -> list[dict]:
        async with asyncio.timeout(timeout):
            while len(self.received) < count:
                if self._task is not None and self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        return self.received

    ordered = True  # False: ids may arrive in any order (servers.registry's `ordered`); ids() sorts them

    def ids(self) -> list[int]:
        ids = [m["id"] for m in self.received]
        return ids if self.ordered else sorted(ids)


class PollReceiver(Receiver):
    wait = ""  # query added to every poll after the first

    async def _run(self) -> None:
        since, wait = self.since, ""  # the first poll answers at once, so the member is known to be in the room
        for _ in range(10_000):  # bounded
            async with self.session.get(f"{self.url}/messages?since={since}{wait}") as resp:
                assert resp.status == 200, await resp.text()
                page = await resp.json()
            self.ready.set()
            wait = self.wait
            self.received.extend(page["messages"])
            if page["messages"]:
                since = page["messages"][-1]["id"]
            if not wait:
                await asyncio.sleep(0.02)


class LongPollReceiver(PollReceiver):
    wait = "&wait=5"


class WebSocketReceiver(Receiver):
    ws: aiohttp.ClientWebSocketResponse | None = None

    async def _run(self) -> None:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?since={self.since}")
        self.ready.set()
        async for frame in self.ws:
            body = json.loads(frame.data)
            assert body.pop("type") == "message", body
            self.received.append(body)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class EventStreamReceiver(Receiver):
    """Reads text/event-stream as EventSource does: `id:` and `data:` lines, an event at each blank line."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    comments = 0

    async def _run(self) -> None:
        async with self.session.get(f"{self.url}/events?since={self.since}") as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream", await resp.text()
            self.ready.set()
            await self.read_events(resp)

    async def read_events(self, resp: aiohttp.ClientResponse) -> None:
        data: list[str] = []
        async for raw in resp.content:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data:
                    self.received.append(json.loads("\n".join(data)))
                data = []
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "":
                self.comments += 1
            elif name == "data":
                data.append(value)
            elif name == "id":
                self.last_event_id = value
            elif name == "retry":
                self.retry_ms = int(value)


class DatagramCount:
    """UDP datagrams one peer's sockets sent and received, and their sizes (their payload, as the kernel carries it)."""

    def __init__(self) -> None:
        self.sent = self.received = 0
        self.sent_bytes = self.received_bytes = 0


def count_datagrams(pc) -> DatagramCount:
    """Count `pc`'s datagrams at its own sockets, apart from servers.rtc's meter: wrap the send and the receive of
    every aioice socket protocol of its ICE transport. Call it after its candidates are gathered, before it
    connects."""
    count = DatagramCount()
    connection = pc.sctp.transport.transport.iceGatherer._connection  # aioice's Connection (private: a test's view)
    for protocol in connection._protocols:
        transport, receive = protocol.transport, protocol.datagram_received

        def sendto(data, addr=None, _send=transport.sendto):
            count.sent += 1
            count.sent_bytes += len(data)
            _send(data, addr)

        def datagram_received(data, addr, _receive=receive):
            count.received += 1
            count.received_bytes += len(data)
            _receive(data, addr)

        transport.sendto = sendto
        protocol.datagram_received = datagram_received
    return count


class WebRTCReceiver(Receiver):
    """An aiortc peer in the test's event loop: offers one data channel, `chat` (unordered and never retransmitted
    when `unreliable`), POSTs the offer, and collects the {"type": "message"} messages the channel brings.

    `datagrams` counts the UDP datagrams its own sockets sent and received (count_datagrams)."""

    unreliable = False
    pc = None
    channel = None

    def __init__(self, *args, query: str = "", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.query = query
        self.datagrams: DatagramCount | None = None
        self.others: list[dict] = []  # what arrived that is not a message: {"type": "error"}, {"type": "close"}
        self.closed = asyncio.Event()

    async def _run(self) -> None:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        from servers import rtc

        self.pc = pc = RTCPeerConnection(rtc.configuration())
        options = {"ordered": False, "maxRetransmits": 0} if self.unreliable else {}
        self.channel = channel = pc.createDataChannel("chat", **options)
        channel.on("open", self.ready.set)
        channel.on("message", self._on_message)
        channel.on("close", self.closed.set)
        with rtc.gathering():
            await pc.setLocalDescription(await pc.createOffer())
        self.datagrams = count_datagrams(pc)
        url = f"{self.url}/webrtc?since={self.since}{self.query}"
        async with self.session.post(url, json={"type": "offer", "sdp": pc.localDescription.sdp}) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await self.closed.wait()

    def _on_message(self, data) -> None:
        body = json.loads(data)
        if body.get("type") == "message":
            body.pop("type")
            self.received.append(body)
        else:
            self.others.append(body)

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        self.channel.send(json.dumps({"type": "send", "user": user, "text": text, "sent_at": sent_at}))

    async def close(self) -> None:
        if self.pc is not None:
            await self.pc.close()


class UnreliableWebRTCReceiver(WebRTCReceiver):
    unreliable = True


class WebTransportReceiver(Receiver):
    """An aioquic session in the test's event loop (clients.webtransport's SessionConnection): reads where the
    endpoint is from `GET /rooms/{room}/webtransport`, opens `/rooms/{room}/webtransport?since=`, and collects the
    {"type": "message"} messages its streams (or datagrams) bring. `datagrams` counts the UDP datagrams its own
    socket sent and received."""

    path = "webtransport"
    conn = None
    ordered = False  # a stream per message: one may overtake another

    def __init__(self, *args, query: str = "", origin: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.query = query
        self.origin = origin
        self.datagrams = DatagramCount()
        self.others: list[dict] = []  # what arrived that is not a message: {"type": "error"}, ...
        self.ended: tuple | None = None  # (code, reason) of the session's end
        self.closed = asyncio.Event()

    async def _run(self) -> None:
        from clients.webtransport import open_session

        async with self.session.get(f"{self.url}/{self.path}") as resp:
            assert resp.status == 200, await resp.text()
            info = await resp.json()
        sock = counting_udp_socket(self.datagrams)
        self.conn = await open_session(
            "127.0.0.1", info["port"], f"/rooms/{self.room}/{self.path}?since={self.since}{self.query}",
            on_frame=self._on_frame, on_end=self._on_end, sha256=bytes.fromhex(info["certificate"]["sha256_hex"]),
            origin=self.origin, sock=sock)
        self.ready.set()
        await self.closed.wait()

    def _on_frame(self, data: bytes, received_at: float) -> None:
        body = json.loads(data)
        if body.get("type") == "message":
            body.pop("type")
            self.received.append(body)
        else:
            self.others.append(body)

    def _on_end(self, code, reason) -> None:
        self.ended = (code, reason)
        self.closed.set()

    def send(self, user: str, text: str, sent_at: float | None = None, datagram: bool = False) -> None:
        data = json.dumps({"type": "send", "user": user, "text": text, "sent_at": sent_at}).encode()
        (self.conn.send_datagram if datagram else self.conn.send_line)(data)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn.close_session()
            await asyncio.sleep(0.05)
            self.conn._transport.close()


class DatagramWebTransportReceiver(WebTransportReceiver):
    path = "webtransport-datagram"

    def send(self, user: str, text: str, sent_at: float | None = None, datagram: bool = True) -> None:
        super().send(user, text, sent_at, datagram)


def counting_udp_socket(count: DatagramCount):
    """A UDP socket on loopback that counts what it sends and receives at the socket, apart from the server's
    meter: what the kernel carries for this peer."""
    import socket

    class CountingSocket(socket.socket):
        def sendto(self, data, *args):
            count.sent += 1
            count.sent_bytes += len(data)
            return super().sendto(data, *args)

        def send(self, data, *args):  # a connected socket's
            count.sent += 1
            count.sent_bytes += len(data)
            return super().send(data, *args)

        def recvfrom(self, size, *args):
            data, addr = super().recvfrom(size, *args)
            count.received += 1
            count.received_bytes += len(data)
            return data, addr

        def recv(self, size, *args):
            data = super().recv(size, *args)
            count.received += 1
            count.received_bytes += len(data)
            return data

        def recvfrom_into(self, *args):  # not used by asyncio's datagram transport; counted all the same
            raise NotImplementedError

    sock = CountingSocket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind(("127.0.0.1", 0))
    return sock


RECEIVERS: dict[str, type[Receiver]] = {
    "short-polling": PollReceiver,
    "long-polling": LongPollReceiver,
    "websocket": WebSocketReceiver,
    "sse": EventStreamReceiver,
    "webrtc": WebRTCReceiver,
    "webrtc-unreliable": UnreliableWebRTCReceiver,
    "webtransport": WebTransportReceiver,
    "webtransport-datagram": DatagramWebTransportReceiver,
}


def receiver(session: aiohttp.ClientSession, base: str, transport: str, room: str, since: int = 0) -> Receiver:
    """A receiver for `transport`; a registered transport without one here fails the suites that need it."""
    try:
        kind = RECEIVERS[transport]
    except KeyError:
        raise AssertionError(f"tests/helpers/receivers.py has no receiver for {transport!r}: add one") from None
    return kind(session, base, room, since)


async def post(session: aiohttp.ClientSession, base: str, room: str, user: str = "ann", text: str = "hello",
               sent_at: float | None = None, status: int = 201) -> dict:
    """POST one message the common way; assert the status; return the JSON answer."""
    body = {"user": user, "text": text}
    if sent_at is not None:
        body["sent_at"] = sent_at
    async with session.post(f"{base}/rooms/{room}/messages", json=body) as resp:
        assert resp.status == status, await resp.text()
        return await resp.json()
