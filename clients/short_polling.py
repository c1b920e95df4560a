"""Short polling client: ask for what is new every `poll_interval_s`, whether or not anything is."""

from __future__ import annotations

from .base import OnMessage, Report, ignore_report
from .polling import PollingClient, sleep_until


class ShortPollingClient(PollingClient):
    """Polls `GET /rooms/{room}/messages?since=ID` at a fixed interval (start to start) and posts sends."""

    transport = "short-polling"

    def __init__(
        self,
        base_url: str,
        on_message: OnMessage,
        report: Report = ignore_report,
        *,
        poll_interval_s: float = 1.0,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__(base_url, on_message, report, timeout_s=timeout_s)
        self.poll_interval_s = poll_interval_s

    @classmethod
    def options(cls, profile) -> dict:
        return {"poll_interval_s": profile.knob("poll_interval_s")}

    def _poll_query(self) -> str:
        return f"&limit={self.page_limit}"

    def _pause(self, poll_started: float) -> None:
        # Start to start, like setInterval: a slow answer eats into the pause instead of adding to it.
        sleep_until(poll_started + self.poll_interval_s)
