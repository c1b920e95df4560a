"""The half short and long polling share: poll on one HTTP connection, post on another."""

from __future__ import annotations

import time
from abc import abstractmethod

import gevent

from .base import (
    Backoff,
    ChatClient,
    ClientError,
    JsonHttp,
    OnMessage,
    PostSender,
    Report,
    ignore_report,
    ms_since,
)
from .http import Requester


class PollingClient(PostSender, ChatClient):
    """Keeps one poll outstanding on its own connection while sends go out on another, as a browser's
    two concurrent fetches would; so a held long poll never delays a send.

    A failed poll (connection refused, a 502/503 from a balancer, a timeout) is retried with jittered
    exponential backoff, without `wait` until one is answered, resuming after the last id seen; the
    time from the first failure to that answer is reported as RECONNECT.
    """

    page_limit = 1000  # the server's largest page; a full page means more is waiting

    def __init__(self, base_url: str, on_message: OnMessage, report: Report = ignore_report, *, timeout_s: float = 10.0):
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self._poll_http: Requester | None = None

    @abstractmethod
    def _poll_query(self) -> str:
        """The query string of the next poll, after `since=`."""

    def _poll_timeout_s(self) -> float:
        return self.timeout_s

    def _pause(self, poll_started: float) -> None:
        """Wait before the next poll (perf_counter clock); not at all by default."""

    def _connect(self) -> None:
        self._poll_http = self.http.requester(self._poll_timeout_s())

    def _recovery_query(self) -> str:
        """The query of a poll after a failure: answered at once (no wait), so the client catches up and
        the reconnect is timed to the first answer, not to the next message."""
        return f"&limit={self.page_limit}"

    def _receive(self) -> None:
        backoff = Backoff()
        failed_at: float | None = None  # perf_counter() when the first poll of a failing streak failed
        while not self.closed:
            started = time.perf_counter()
            query = self._poll_query() if failed_at is None else self._recovery_query()
            path = f"/rooms/{self.room}/messages?since={self.last_id}{query}"
            try:
                status, body = self._poll_http.request("GET", path)
                if status != 200:
                    raise ClientError(f"poll answered {status}: {body[:200]!r}")
                page = JsonHttp.decode(body)
                messages = page["messages"]
            except Exception as error:
                self.report("POLL", self.transport, ms_since(started), 0, error)
                if failed_at is None:
                    failed_at = time.perf_counter()
                if not backoff.retry():
                    self.report("RECONNECT", self.transport, ms_since(failed_at), 0,
                                ClientError(f"gave up after {backoff.failures} failed polls"))
                    return
                continue
            received_at = time.time()
            backoff.reset()
            if failed_at is not None:
                # Through a balancer the next poll simply lands on another instance: this is the time from
                # the first failed poll to the first answered one, resuming after the last id seen.
                self.report("RECONNECT", self.transport, ms_since(failed_at), 0)
                failed_at = None
            if page.get("truncated"):
                name = f"{self.transport} (truncated)"  # the id gap also shows up as lost in completeness
            elif messages:
                name = self.transport
            else:
                name = f"{self.transport} (empty)"
            self.report("POLL", name, ms_since(started), len(body))
            for message in messages:
                self.deliver(message, received_at)
            if len(messages) < self.page_limit:
                self._pause(started)

    def _disconnect(self) -> None:
        if self._poll_http is not None:
            self._poll_http.close()
        self.close_sender()


def sleep_until(deadline_perf_s: float) -> None:
    remaining = deadline_perf_s - time.perf_counter()
    if remaining > 0:
        gevent.sleep(remaining)
