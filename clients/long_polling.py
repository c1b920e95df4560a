"""Long polling client: one poll always outstanding, held by the server until a message or `wait_s` passes."""

from __future__ import annotations

from .base import OnMessage, Report, ignore_report
from .polling import PollingClient


class LongPollingClient(PollingClient):
    """Polls `GET /rooms/{room}/messages?since=ID&wait=S` back to back and posts sends on a second connection."""

    transport = "long-polling"

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        wait_s: float = 20.0,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self.wait_s = wait_s

    @classmethod
    def options(cls, profile) -> dict:
        return {"wait_s": profile.knob("long_poll_wait_s")}

    def _poll_query(self) -> str:
        # The server takes plain decimals only (no exponent), to the millisecond.
        wait = f"{self.wait_s:.3f}".rstrip("0").rstrip(".")
        return f"&limit={self.page_limit}&wait={wait}"

    def _poll_timeout_s(self) -> float:
        # The server holds the poll up to wait_s; only silence beyond that (plus the usual timeout) is a failure.
        return self.wait_s + self.timeout_s
