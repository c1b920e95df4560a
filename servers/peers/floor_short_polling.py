"""The floor for short polling: the long-polling floor's forty lines asked without `wait=`, so every poll is
answered at once with what is new (often nothing). A minimal short-polling server is exactly that: one route that
slices a room's log after `since=`; it gets its own entry so the benchmarks compare rtlab's short polling with it
per request, and experiments can name it."""

from __future__ import annotations

from .floor_long_polling import FloorLongPolling


class FloorShortPolling(FloorLongPolling):
    """Long polling's floor; a short-polling client never asks it to hold a poll."""
