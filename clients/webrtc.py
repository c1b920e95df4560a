"""WebRTC data channel client: aiortc on one asyncio thread per process, bridged to the gevent members Locust runs."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
import json
import logging
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import gevent.event
import gevent.monkey
import orjson

from servers import rtc

from .base import (
    Backoff,
    ChatClient,
    ClientError,
    JsonHttp,
    OnMessage,
    Report,
    ignore_report,
    ms_since,
)

# gevent's monkey-patching replaced these; the asyncio thread needs the real ones (an OS thread, epoll, sockets
# the kernel reads without a gevent hub in between).
_start_native_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_native_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_NativeSelector = gevent.monkey.get_original("selectors", "DefaultSelector")
_NativeSocket = gevent.monkey.get_original("socket", "socket")

log = logging.getLogger("rtlab.webrtc")

ICE_HOST_ADDRESSES = rtc.LOOPBACK  # host candidates on loopback only: no STUN, no TURN, as the server's
# ICE consent freshness (RFC 7675) is how a WebRTC peer learns the other end is gone: no TCP reset tells it.
# aioice checks every 5 s and gives up after 6 misses (30 s), the RFC's ceiling; a member whose server died
# would sit silent that long before reconnecting, where a WebSocket member hears the reset at once. Browsers
# report "disconnected" after a few seconds; the member checks each second and gives up after 3 misses.
CONSENT_INTERVAL_S = 1.0
CONSENT_FAILURES = 3


class _NativeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on real epoll whose UDP sockets (ICE's, one per candidate) are real sockets, so every
    packet aiortc reads or writes skips gevent's socket wrapper."""

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, **kwargs):
        if local_addr is not None and remote_addr is None and not kwargs:  # aioice's call: local_addr only
            family = socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET
            sock = _NativeSocket(family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind(local_addr)
            except BaseException:
                sock.close()
                raise
            return await super().create_datagram_endpoint(protocol_factory, sock=sock)
        return await super().create_datagram_endpoint(protocol_factory, local_addr, remote_addr, **kwargs)


class _NoExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: thread pools are gevent's under monkey-patching, and a pool "thread" would
    be a greenlet on a hub this thread never runs; fail loudly rather than hang. (aiortc's data channels and
    aioice without STUN never use one.)"""

    def submit(self, *args, **kwargs):
        raise RuntimeError("no executor on rtlab's asyncio thread (a gevent-patched pool would hang)")


class AsyncioBridge:
    """One asyncio event loop on a real OS thread, and the two ways across: `post`/`call` from greenlets into
    the loop, `to_gevent` from the loop back to gevent, where one greenlet (`dispatcher`) runs what it hands
    over, in order.

    Both directions batch: a burst of posts costs one wake-up of the other side, not one each, and a message
    fanned out to every member of a room reaches all of them in one pass of the dispatcher, without a
    greenlet switch per member (the same reason as clients/reactor.py's one receive loop). What `to_gevent`
    hands over must not block: it delays every member's messages behind it.
    """

    def __init__(self) -> None:
        self._hub = gevent.get_hub()
        self.loop = _NativeLoop(_NativeSelector())
        self.loop.set_default_executor(_NoExecutor())
        self.loop.set_exception_handler(self._on_loop_exception)
        self.lost_sends = 0  # aiortc's flush tasks that failed on a connection already gone (counted, not logged)
        self._into_loop: deque[tuple[Callable, tuple]] = deque()
        self._into_loop_scheduled = False
        self._into_gevent: deque[tuple[Callable, tuple]] = deque()
        self._into_gevent_scheduled = False
        self._into_gevent_ready = gevent.event.Event()
        self.dispatcher = gevent.spawn(self._dispatch)
        self._stopped = _native_lock()
        self._stopped.acquire()
        self._running = _native_lock()
        self._running.acquire()
        _start_native_thread(self._run, ())
        if not self._running.acquire(timeout=10.0):
            raise RuntimeError("rtlab's asyncio thread did not start")

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        # aiortc leaves the task that flushes a data channel unawaited; when ICE has given the connection up (the
        # member reconnects by itself) each one dies with "not connected", a traceback apiece in Locust's log.
        if isinstance(context.get("exception"), ConnectionError):
            self.lost_sends += 1
            if self.lost_sends == 1:
                log.warning("rtlab bridge: a send on a closed WebRTC connection (counted, not logged again): %s",
                            context.get("exception"))
            return
        loop.default_exception_handler(context)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._running.release)
        try:
            self.loop.run_forever()
        finally:
            self._stopped.release()

    # ---- greenlets -> the loop

    def post(self, fn: Callable, *args: Any) -> None:
        """Run `fn(*args)` on the loop soon; never blocks (safe from the hub, too)."""
        self._into_loop.append((fn, args))
        if not self._into_loop_scheduled:
            self._into_loop_scheduled = True
            self.loop.call_soon_threadsafe(self._drain_into_loop)

    def _drain_into_loop(self) -> None:
        # Cleared before draining: a post that lands meanwhile is drained now or schedules another pass.
        self._into_loop_scheduled = False
        queue = self._into_loop
        while queue:
            fn, args = queue.popleft()
            try:
                fn(*args)
            except Exception as error:  # one caller's bug must not strand the others' calls behind it
                self.loop.call_exception_handler({"message": f"rtlab bridge: {fn!r} failed", "exception": error})

    def call(self, coroutine_fn: Callable, *args: Any, timeout_s: float) -> Any:
        """Run `coroutine_fn(*args)` on the loop and block this greenlet (only) until it returns or raises;
        cancel it and raise TimeoutError after `timeout_s`."""
        if gevent.getcurrent() is self.dispatcher:
            raise RuntimeError("the dispatcher cannot wait for the loop: it is what hands the result back")
        result = gevent.event.AsyncResult()
        task_box: list[asyncio.Task] = []

        def start() -> None:
            task = self.loop.create_task(coroutine_fn(*args))
            task_box.append(task)
            task.add_done_callback(lambda done: self.to_gevent(_settle, done, result))

        self.post(start)
        try:
            return result.get(timeout=timeout_s)
        except gevent.Timeout:
            self.post(lambda: task_box and task_box[0].cancel())
            raise TimeoutError(f"{getattr(coroutine_fn, '__name__', coroutine_fn)} took over {timeout_s} s") from None

    # ---- the loop -> gevent

    def to_gevent(self, fn: Callable, *args: Any) -> None:
        """From the loop's thread: run `fn(*args)` in the dispatcher greenlet soon. `fn` must not block."""
        self._into_gevent.append((fn, args))
        if not self._into_gevent_scheduled:
            self._into_gevent_scheduled = True
            # Woken at the end of this turn of the loop, not now: what one turn yields (a message fanned out to
            # the members of a room arrives on all their connections at once) crosses in one wake-up.
            self.loop.call_soon(self._wake_dispatcher)

    def _wake_dispatcher(self) -> None:
        self._hub.loop.run_callback_threadsafe(self._into_gevent_ready.set)

    def _dispatch(self) -> None:
        queue, ready = self._into_gevent, self._into_gevent_ready
        while True:
            ready.wait()
            ready.clear()
            # Cleared before draining, as on the loop's side: nothing handed over waits unseen.
            self._into_gevent_scheduled = False
            while queue:
                fn, args = queue.popleft()
                try:
                    fn(*args)
                except Exception:  # one member's bug must not stop every member's messages
                    log.exception("rtlab bridge: %r failed in the dispatcher", fn)

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop the loop and wait (bounded) for its thread to finish."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self._stopped.acquire(timeout=timeout_s):
            self.loop.close()


def _settle(task: asyncio.Task, result: gevent.event.AsyncResult) -> None:
    if task.cancelled():  # CancelledError is no Exception: the greenlet gets one it can catch
        result.set_exception(ClientError("cancelled on the asyncio thread"))
    elif task.exception() is not None:
        result.set_exception(task.exception())
    else:
        result.set(task.result())


_bridge: AsyncioBridge | None = None


def bridge() -> AsyncioBridge:
    """Return this process's asyncio bridge, starting it (and telling aioice its host addresses) on first use."""
    global _bridge
    if _bridge is None:
        import aiortc  # noqa: F401  here, not on the loop's thread: 0.2 s, paid once, by webrtc members only

        rtc.use_addresses(ICE_HOST_ADDRESSES)  # aioice leaves 127.0.0.1 out by default
        import aioice.ice

        aioice.ice.CONSENT_INTERVAL, aioice.ice.CONSENT_FAILURES = CONSENT_INTERVAL_S, CONSENT_FAILURES
        # aioice logs every connectivity check at INFO: eight lines per member joining, in Locust's own log.
        logging.getLogger("aioice").setLevel(max(logging.WARNING, logging.getLogger("aioice").getEffectiveLevel()))
        _bridge = AsyncioBridge()
        atexit.register(_bridge.stop)
    return _bridge


PLANNED_CLOSE_CODES = (1001, 1012)  # going away (shutdown), service restart (drain): as the WebSocket's


class WebRTCClient(ChatClient):
    """Joins with an SDP offer to `POST /rooms/{room}/webrtc?since=ID`; one data channel `chat` carries the
    WebSocket protocol's frames both ways.

    The peer connection (aiortc) lives on this process's asyncio thread (`bridge()`); frames cross to the
    bridge's dispatcher greenlet in batches, stamped with the time aiortc handed them over, so DELIVER
    measures the transport and not the hand-over; the member's own greenlet only waits for the connection's
    end and reconnects. The server echoes a member's own message; SEND is the
    time from its due time to the echo. When the channel or its connection closes, the client reconnects
    with jittered backoff and `since=` the last id it saw, and reports RECONNECT; sends made meanwhile are
    kept and sent once open again. This variant's channel is ordered and reliable.
    """

    transport = "webrtc"
    ordered: ClassVar[bool] = True
    max_retransmits: ClassVar[int | None] = None  # None: reliable (SCTP retransmits until delivered)

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        timeout_s: float = 10.0,
        max_pending_sends: int = 10_000,
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self.max_pending_sends = max_pending_sends
        self._bridge = bridge()
        self._pending: OrderedDict[tuple[str, float], None] = OrderedDict()  # sends awaiting their echo
        self._unsent: list[tuple[tuple[str, float], str]] = []  # sends made while (re)connecting
        self._generation = itertools.count(1)
        self._current = 0  # the connection whose frames count; older ones' late frames are dropped
        self._open = False  # the gevent side's view: the channel is open and sends may go out
        self._backoff = Backoff()
        self._lost = gevent.event.Event()  # the current connection closed: the receiving greenlet reconnects
        self._close_told: tuple[object, object] | None = None  # (code, reason) of the server's last {"type": "close"}
        # Touched on the loop's thread only.
        self._pc = None
        self._channel = None

    # ---- sending (greenlets)

    def send(self, user: str, text: str, sent_at: float | None = None) -> None:
        if self.room is None:
            raise RuntimeError("join a room before sending")
        if sent_at is None:
            sent_at = time.time()
        key = (user, sent_at)
        frame = orjson.dumps({"type": "send", "user": user, "text": text, "sent_at": sent_at}).decode()
        self._pending[key] = None
        if len(self._pending) > self.max_pending_sends:
            (_, old_sent_at), _ = self._pending.popitem(last=False)
            self.report("SEND", self.transport, (time.time() - old_sent_at) * 1000, 0, ClientError("no echo"))
        if not self._open:
            self._unsent.append((key, frame))  # as a chat page keeps what its user typed while reconnecting
            return
        self._bridge.post(self._send_on_channel, key, frame)

    def _send_on_channel(self, key: tuple[str, float], frame: str) -> None:
        # On the loop's thread. A channel closing or closed meanwhile never got it: kept for after the reconnect
        # its close brings (never sent again at once: that would spin between the threads until the close lands).
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(frame)
        else:
            self._bridge.to_gevent(self._unsent.append, (key, frame))

    def _send_unsent(self) -> None:
        """Send what was kept while reconnecting, in order; their echoes (SEND) time the whole wait."""
        unsent, self._unsent = self._unsent, []
        for key, frame in unsent:
            if key in self._pending:  # else given up on meanwhile (too many pending)
                self._bridge.post(self._send_on_channel, key, frame)

    def _fail_unsent(self, error: BaseException) -> None:
        unsent, self._unsent = self._unsent, []
        for key, _ in unsent:
            self._pending.pop(key, None)
            self.report("SEND", self.transport, (time.time() - key[1]) * 1000, 0, error)

    # ---- connecting (greenlets, waiting on the loop)

    def _connect(self) -> None:
        generation = next(self._generation)
        self._current = generation
        started = time.perf_counter()
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
            if self._current != generation:
                raise ClientError("the connection closed as it opened")
        except Exception as error:
            self._current = 0  # its close must not read as the next connection's
            self._bridge.post(self._close_connection)
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        finally:
            http.close()
        self.report("CONNECT", self.transport, ms_since(started), 0)
        self._open = True

    async def _offer(self, generation: int) -> str:
        """Make the peer connection and its channel; return the offer, every candidate in it (non-trickle)."""
        from aiortc import RTCPeerConnection

        await self._close_pc()
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
            await self._close_pc()
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

    def _close_connection(self) -> None:
        # On the loop's thread: close the current connection (an offer closes any left over, too).
        self._bridge.loop.create_task(self._close_pc())

    async def _close_pc(self) -> None:
        pc, self._pc, self._channel = self._pc, None, None
        if pc is not None:
            await pc.close()

    # ---- receiving: frames in the bridge's dispatcher greenlet, reconnects in the member's own

    def _arrived(self, generation: int, data: str | bytes, received_at: float) -> None:
        if generation == self._current:  # else a connection given up on: what it still says was asked for again
            self._on_frame(data, received_at)
            if self._backoff.failures:
                self._backoff.reset()

    def _connection_lost(self, generation: int) -> None:
        if generation != self._current:
            return
        self._current = 0  # nothing it still says counts; a connect under way sees it and fails
        if self._open:
            self._open = False  # sends wait for the reconnect
            self._lost.set()

    def _receive(self) -> None:
        """Wait for the connection's end (its frames arrive in `_arrived` meanwhile), then reconnect."""
        while not self.closed:
            self._lost.wait()
            self._lost.clear()
            if self.closed:
                return
            told, self._close_told = self._close_told, None
            # 1012 (a drain) and 1001 (a shutdown) are the server asking us to go elsewhere, not failures.
            if told is None:
                self.report("RECEIVE", self.transport, 0, 0, ClientError("the data channel closed"))
            elif told[0] not in PLANNED_CLOSE_CODES:
                self.report("RECEIVE", self.transport, 0, 0,
                            ClientError(f"server closed the data channel: {told[0]} {told[1]}".strip()))
            if not self._reconnect(self._backoff):
                return

    def _on_frame(self, data: str | bytes, received_at: float) -> None:
        try:
            frame = orjson.loads(data)
            kind = frame.get("type")
        except (orjson.JSONDecodeError, AttributeError):
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"frame is not a JSON object: {data[:200]!r}"))
            return
        if kind == "message":
            self._accept_echo(self._pending, frame, received_at, len(data))
            self.deliver(frame, received_at)
        elif kind == "close":
            # The server's last word before it closes the channel (a data channel has no close code of its own).
            self._close_told = (frame.get("code"), frame.get("reason") or "")
            self._connection_lost(self._current)
        elif kind == "error":
            # Only our sends draw errors; the frame does not say which one, so its echo stays pending.
            self.report("SEND", self.transport, 0, len(data), ClientError(f"server refused a send: {frame.get('error')}"))
        else:
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"unexpected frame type {kind!r}"))

    def _reconnect(self, backoff: Backoff) -> bool:
        """Reconnect with backoff, resuming after the last id seen; report RECONNECT with the time from the
        close to the new channel being open."""
        self._open = False
        self._current = 0  # frames of the old connection are dropped from here on
        self._bridge.post(self._close_connection)
        if self._reconnect_with(backoff, time.perf_counter()):
            self._send_unsent()
            return True
        self._fail_unsent(ClientError("never sent: the client gave up reconnecting"))
        return False

    def _disconnect(self) -> None:
        self._unsent.clear()  # closing: what was never sent is not a failure of the server
        self._open = False
        self._current = 0
        try:
            self._bridge.call(self._close_pc, timeout_s=self.timeout_s)
        except Exception:  # noqa: BLE001, S110  best effort: a peer that will not close in time is the server's to time out
            pass


class UnreliableWebRTCClient(WebRTCClient):
    """The same member over an unordered channel that never retransmits (`maxRetransmits: 0`), as a game sends
    positions: a message lost on the way stays lost, and the receivers count it as lost (the price of this
    transport, not a client error); nothing reconnects or resends because of a gap."""

    transport = "webrtc-unreliable"
    ordered = False
    max_retransmits = 0
    expects_loss = True
