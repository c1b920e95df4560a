"""Completeness of one receiver's stream: lost, duplicated and out-of-order message ids; pure, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Arrival(enum.Enum):
    """How one arriving id fits the stream."""

    NEXT = "next"  # the id expected next
    GAP = "gap"  # later than expected: the ids in between are missing (lost unless they turn up)
    LATE = "late"  # a missing id turning up after a later one (out of order; no longer lost)
    DUPLICATE = "duplicate"  # an id already received, or one at or before the join point


@dataclass(frozen=True, slots=True)
class Counts:
    """Totals for one receiver or, added up, for many."""

    received: int = 0  # messages handed to the receiver, duplicates included
    lost: int = 0  # ids after the join point that never arrived (a gap, e.g. a truncated poll)
    duplicates: int = 0
    out_of_order: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.received + other.received,
            self.lost + other.lost,
            self.duplicates + other.duplicates,
            self.out_of_order + other.out_of_order,
        )

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "lost": self.lost, "duplicates": self.duplicates, "out_of_order": self.out_of_order}


class ReceiverTracker:
    """Check that a receiver that joined after id `since` sees since+1, since+2, ... exactly once.

    Ids are per room and contiguous from 1 on the server, so any skipped id is a message this
    receiver did not get. A skipped id that arrives later counts as out of order instead of lost.
    Missing ids are remembered one by one up to `max_tracked_missing`; beyond that a gap is
    counted as lost outright (it can no longer turn into out-of-order), which keeps memory bounded
    when a receiver falls hopelessly behind.
    """

    def __init__(self, since: int, max_tracked_missing: int = 100_000) -> None:
        if since < 0:
            raise ValueError("since must be >= 0")
        self.since = since
        self.next_id = since + 1
        self.max_tracked_missing = max_tracked_missing
        self._missing: set[int] = set()
        self._lost_untracked = 0
        self.received = 0
        self.duplicates = 0
        self.out_of_order = 0

    def observe(self, message_id: int) -> tuple[Arrival, int]:
        """Account for one arriving id; return how it fits and how many ids it newly shows missing."""
        self.received += 1
        if message_id == self.next_id:
            self.next_id += 1
            return Arrival.NEXT, 0
        if message_id > self.next_id:
            gap = message_id - self.next_id
            room = max(0, self.max_tracked_missing - len(self._missing))
            tracked = min(gap, room)
            self._missing.update(range(self.next_id, self.next_id + tracked))
            self._lost_untracked += gap - tracked
            self.next_id = message_id + 1
            return Arrival.GAP, gap
        if message_id in self._missing:
            self._missing.discard(message_id)
            self.out_of_order += 1
            return Arrival.LATE, 0
        self.duplicates += 1
        return Arrival.DUPLICATE, 0

    @property
    def lost(self) -> int:
        return len(self._missing) + self._lost_untracked

    @property
    def last_id(self) -> int:
        """The newest id seen (or `since` before anything arrived)."""
        return self.next_id - 1

    def counts(self) -> Counts:
        return Counts(self.received, self.lost, self.duplicates, self.out_of_order)
