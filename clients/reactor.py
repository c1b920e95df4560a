"""One receive loop per load-generator process for every connection the server pushes down (sockets, streams).

Why not a greenlet per connection blocked in `recv`, as gevent invites: on the load generator's hot path,
each pushed message then costs a libev watcher callback, a greenlet switch, a gevent Timeout armed and
disarmed, and one or more `recv` calls, for every member, for every message: measured with py-spy, more
than half of the generator's CPU per delivered WebSocket message went there, and the generator, not the
server, set the capacity (docs/metrics.md, "The generator's own cost"). Here one greenlet waits on an epoll
set of every pushed-to connection; when the server fans a message out to a room, one wake-up reads every
member's socket that became readable (64 KiB at a time), and each connection's parser gets the bytes.

A client registers its socket with `watch(sock, on_data)` and keeps its own greenlet for what is rare:
it waits in `Watch.wait` for the connection's end or for silence, then reconnects. `on_data` runs in the
reactor's greenlet: it must not block (parse, count, hand over; a small write such as a pong is fine).
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable

import gevent
import gevent.monkey
from gevent.event import Event
from gevent.hub import get_hub

# gevent's monkey-patching takes epoll out of `select` (it would block the hub); the reactor never blocks in it:
# it polls with a zero timeout, after the hub said the epoll descriptor is readable.
_epoll = gevent.monkey.get_original("select", "epoll")

RECV_BYTES = 65536
MAX_EVENTS = 1024  # ready connections taken per epoll_wait


class Silent(TimeoutError):
    """Nothing arrived on the connection for longer than its idle timeout."""


class Watch:
    """One watched connection: its end (EOF, an error, or `end()` from its parser) and its last activity."""

    __slots__ = ("fd", "on_data", "last_data", "failure", "_ended", "_reactor")

    def __init__(self, reactor: Reactor, fd: int, on_data: Callable[[bytes], None]) -> None:
        self._reactor = reactor
        self.fd = fd
        self.on_data = on_data
        self.last_data = time.monotonic()
        self.failure: BaseException | None = None
        self._ended = Event()

    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    def end(self, failure: BaseException | None = None) -> None:
        """Stop watching (the peer closed, a protocol error); wake whoever waits in `wait`."""
        if self._ended.is_set():
            return
        self.failure = failure
        self._reactor._forget(self)
        self._ended.set()

    def wait(self, idle_timeout_s: float) -> BaseException | None:
        """Block this greenlet until the connection ends (return why: None for a clean end of stream) or stays
        silent for `idle_timeout_s` (return Silent); the connection is no longer watched after either."""
        while True:
            remaining = self.last_data + idle_timeout_s - time.monotonic()
            if remaining <= 0:
                self.end(Silent(f"nothing received for {idle_timeout_s:g} s"))
                return self.failure
            if self._ended.wait(remaining):
                return self.failure

    def stop(self) -> None:
        """Stop watching before the socket is closed (its descriptor number may be reused at once)."""
        self.end(None)


class Reactor:
    """The epoll set and the greenlet that serves it; one per process (`reactor()`), started on first use."""

    def __init__(self) -> None:
        self._epoll = _epoll()
        self._watches: dict[int, Watch] = {}
        self._greenlet: gevent.Greenlet | None = None

    def watch(self, sock, on_data: Callable[[bytes], None]) -> Watch:
        """Feed every byte that arrives on `sock` (a connected socket) to `on_data`, from now on."""
        fd = sock.fileno()
        if fd in self._watches:
            raise RuntimeError(f"descriptor {fd} is watched already")
        watch = Watch(self, fd, on_data)
        self._watches[fd] = watch
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        return watch

    def _forget(self, watch: Watch) -> None:
        if self._watches.get(watch.fd) is watch:
            del self._watches[watch.fd]
            try:
                self._epoll.unregister(watch.fd)
            except (OSError, ValueError):
                pass  # closed already: epoll dropped it itself

    @property
    def watched(self) -> int:
        return len(self._watches)

    def _run(self) -> None:
        hub = get_hub()
        ready = hub.loop.io(self._epoll.fileno(), 1)
        poll = self._epoll.poll
        watches = self._watches
        read = os.read
        monotonic = time.monotonic
        try:
            while True:
                hub.wait(ready)
                now = monotonic()  # one reading per wake-up: Watch.wait needs the last activity to a second or so
                for fd, _events in poll(0, MAX_EVENTS):
                    watch = watches.get(fd)
                    if watch is None:
                        continue
                    try:
                        data = read(fd, RECV_BYTES)
                    except BlockingIOError:
                        continue
                    except OSError as error:  # a reset
                        watch.end(error)
                        continue
                    if not data:
                        watch.end(None)  # the peer closed its side
                        continue
                    watch.last_data = now
                    try:
                        watch.on_data(data)
                    except Exception as error:  # a parser's protocol error ends that connection only
                        watch.end(error)
        finally:
            ready.close()


_reactor: Reactor | None = None


def reactor() -> Reactor:
    """This process's reactor (gevent runs one hub per process; Locust workers are processes)."""
    global _reactor
    if _reactor is None:
        _reactor = Reactor()
    return _reactor
