"""One asyncio event loop per Locust process, on a real OS thread, bridged to the gevent greenlets Locust runs.

The UDP transports' client libraries are asyncio (aiortc, aioquic) while Locust and
every other client are gevent: `shared()` starts this process's one bridge on first use, and every asyncio client
of the process, whatever its transport, runs its connections on that loop. `on_start` hooks let a transport set
up its library once before the loop runs (aioice's host addresses, say).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import itertools
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

from .base import Backoff, ChatClient, ClientError, OnMessage, Report, ignore_report, ms_since

# gevent's monkey-patching replaced these; the asyncio thread needs the real ones (an OS thread, epoll, sockets
# the kernel reads without a gevent hub in between).
_start_native_thread = gevent.monkey.get_original("_thread", "start_new_thread")
_native_lock = gevent.monkey.get_original("_thread", "allocate_lock")
_NativeSelector = gevent.monkey.get_original("selectors", "DefaultSelector")
_NativeSocket = gevent.monkey.get_original("socket", "socket")

log = logging.getLogger("rtlab.bridge")


def udp_socket(local_addr: tuple[str, int]) -> socket.socket:
    """A real (not gevent's) non-blocking UDP socket bound to `local_addr`, for the bridge's loop."""
    sock = _NativeSocket(socket.AF_INET6 if ":" in local_addr[0] else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind(local_addr)
    except BaseException:
        sock.close()
        raise
    return sock


class _NativeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on real epoll whose UDP sockets are real sockets (`udp_socket`), so every packet the
    library reads or writes skips gevent's socket wrapper."""

    async def create_datagram_endpoint(self, protocol_factory, local_addr=None, remote_addr=None, **kwargs):
        if local_addr is not None and remote_addr is None and not kwargs:  # aioice's call: local_addr only
            return await super().create_datagram_endpoint(protocol_factory, sock=udp_socket(local_addr))
        return await super().create_datagram_endpoint(protocol_factory, local_addr, remote_addr, **kwargs)


class _NoExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: thread pools are gevent's under monkey-patching, and a pool "thread" would
    be a greenlet on a hub this thread never runs; fail loudly rather than hang. (aiortc's data channels, aioice
    without STUN and aioquic given an address, not a name, never use one.)"""

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
        self.lost_sends = 0  # tasks that failed on a connection already gone (aiortc's flushes): counted, not logged
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
                log.warning("rtlab bridge: a send on a closed connection (counted, not logged again): %s",
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


def shared() -> AsyncioBridge:
    """Return this process's asyncio bridge, starting it on first use."""
    global _bridge
    if _bridge is None:
        _bridge = AsyncioBridge()
        atexit.register(_bridge.stop)
    return _bridge


PLANNED_CLOSE_CODES = (1001, 1012)  # going away (shutdown), service restart (drain): as the WebSocket's


class BridgedClient(ChatClient):
    """A member whose connection lives on the process's asyncio bridge (`shared()`) and carries the WebSocket's
    messages: `{"type": "send"}` up; `{"type": "message" | "error" | "close"}` down. The UDP transports'
    clients are subclasses; each says how to open a connection, send one frame on it and close it:

    - `_open_connection(generation)`, in the member's greenlet (it may wait on the loop with `self._bridge.call`);
      what the connection then receives goes to `self._bridge.to_gevent(self._arrived, generation, data,
      received_at)`, stamped as the library hands it over (DELIVER measures the transport, not the hand-over),
      and its end to `to_gevent(self._connection_lost, generation)`;
    - `_transmit(frame) -> bool`, on the loop: send now, or False when the connection is not open;
    - `_close_current()`, a coroutine on the loop.

    Frames cross to the bridge's dispatcher greenlet in batches; the member's own greenlet only waits for the
    connection's end and reconnects. The server echoes a member's own message; SEND is the time from its due
    time to the echo. When the connection closes, the client reconnects with jittered backoff and `since=` the
    last id it saw, and reports RECONNECT; sends made meanwhile are kept and sent once open again.
    """

    what: ClassVar[str] = "connection"  # what closes, in a RECEIVE failure ("the data channel closed")

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
        self._bridge = self.bridge()
        self._pending: OrderedDict[tuple[str, float], None] = OrderedDict()  # sends awaiting their echo
        self._unsent: list[tuple[tuple[str, float], str]] = []  # sends made while (re)connecting
        self._generation = itertools.count(1)
        self._current = 0  # the connection whose frames count; older ones' late frames are dropped
        self._is_open = False  # the gevent side's view: the connection is open and sends may go out
        self._backoff = Backoff()
        self._lost = gevent.event.Event()  # the current connection closed: the receiving greenlet reconnects
        self._close_told: tuple[object, object] | None = None  # (code, reason) of the server's last word

    @classmethod
    def bridge(cls) -> AsyncioBridge:
        """The process's bridge, with this transport's library set up (override to do that once)."""
        return shared()

    # ---- what a transport provides

    def _open_connection(self, generation: int) -> None:
        raise NotImplementedError

    def _transmit(self, frame: str) -> bool:
        raise NotImplementedError

    async def _close_current(self) -> None:
        raise NotImplementedError

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
        if not self._is_open:
            self._unsent.append((key, frame))  # as a chat page keeps what its user typed while reconnecting
            return
        self._bridge.post(self._send_now, key, frame)

    def _send_now(self, key: tuple[str, float], frame: str) -> None:
        # On the loop's thread. A connection closing or closed meanwhile never got it: kept for after the reconnect
        # its close brings (never sent again at once: that would spin between the threads until the close lands).
        if not self._transmit(frame):
            self._bridge.to_gevent(self._unsent.append, (key, frame))

    def _send_unsent(self) -> None:
        """Send what was kept while reconnecting, in order; their echoes (SEND) time the whole wait."""
        unsent, self._unsent = self._unsent, []
        for key, frame in unsent:
            if key in self._pending:  # else given up on meanwhile (too many pending)
                self._bridge.post(self._send_now, key, frame)

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
        try:
            self._open_connection(generation)
            if self._current != generation:
                raise ClientError("the connection closed as it opened")
        except Exception as error:
            self._current = 0  # its close must not read as the next connection's
            self._bridge.post(self._close_connection)
            self.report("CONNECT", self.transport, ms_since(started), 0, error)
            raise
        self.report("CONNECT", self.transport, ms_since(started), 0)
        self._is_open = True

    def _close_connection(self) -> None:
        # On the loop's thread: close the current connection.
        self._bridge.loop.create_task(self._close_current())

    # ---- receiving: frames in the bridge's dispatcher greenlet, reconnects in the member's own

    def _arrived(self, generation: int, data: str | bytes, received_at: float) -> None:
        if generation == self._current:  # else a connection given up on: what it still says was asked for again
            self._on_frame(data, received_at)
            if self._backoff.failures:
                self._backoff.reset()

    def _connection_lost(self, generation: int, code: object = None, reason: object = "") -> None:
        """The connection `generation` ended (with the server's close `code` and `reason`, where its protocol
        carries one)."""
        if generation != self._current:
            return
        if code is not None and self._close_told is None:
            self._close_told = (code, reason)
        self._current = 0  # nothing it still says counts; a connect under way sees it and fails
        if self._is_open:
            self._is_open = False  # sends wait for the reconnect
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
                self.report("RECEIVE", self.transport, 0, 0, ClientError(f"the {self.what} closed"))
            elif told[0] not in PLANNED_CLOSE_CODES:
                self.report("RECEIVE", self.transport, 0, 0,
                            ClientError(f"server closed the {self.what}: {told[0]} {told[1]}".strip()))
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
            # The server's last word before it closes (a data channel has no close code of its own).
            self._close_told = (frame.get("code"), frame.get("reason") or "")
            self._connection_lost(self._current)
        elif kind == "error":
            # Only our sends draw errors; the frame does not say which one, so its echo stays pending.
            self.report("SEND", self.transport, 0, len(data), ClientError(f"server refused a send: {frame.get('error')}"))
        else:
            self.report("RECEIVE", self.transport, 0, len(data), ClientError(f"unexpected frame type {kind!r}"))

    def _reconnect(self, backoff: Backoff) -> bool:
        """Reconnect with backoff, resuming after the last id seen; report RECONNECT with the time from the
        close to the new connection being open."""
        self._is_open = False
        self._current = 0  # frames of the old connection are dropped from here on
        self._bridge.post(self._close_connection)
        if self._reconnect_with(backoff, time.perf_counter()):
            self._send_unsent()
            return True
        self._fail_unsent(ClientError("never sent: the client gave up reconnecting"))
        return False

    def _disconnect(self) -> None:
        self._unsent.clear()  # closing: what was never sent is not a failure of the server
        self._is_open = False
        self._current = 0
        try:
            self._bridge.call(self._close_current, timeout_s=self.timeout_s)
        except Exception:  # noqa: BLE001, S110  best effort: a peer that will not close in time is the server's to time out
            pass
