"""Completeness: lost, duplicated and out-of-order ids per receiver; a senders' ledger of what should arrive; pure."""

from __future__ import annotations

import bisect
import enum
import math
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


class ResumePoint:
    """Where a member of a reliable transport whose messages may overtake one another (a QUIC stream per message)
    resumes after a reconnect: after the newest id up to which every id arrived, not after the newest id seen, so a
    message still held up by a lost packet when the connection ended is asked for again. What the resume then sends
    a second time (the ids that had arrived above that point) is dropped once (`arrived` says False); any other id
    seen twice is passed on, for the receiver to count as a duplicate. At most `max_ahead` ids above the point are
    remembered; beyond, the oldest gap is given up (the receiver counts it lost), which bounds memory when an id
    never comes."""

    __slots__ = ("since", "ahead", "resent", "max_ahead")

    def __init__(self, since: int, max_ahead: int = 1024) -> None:
        self.since = since  # every id up to this one arrived (or was before the join point)
        self.ahead: set[int] = set()  # ids above it that arrived
        self.resent: set[int] = set()  # of those, the ones the last resume asked for again
        self.max_ahead = max_ahead

    def copy(self) -> ResumePoint:
        """The same point, with what arrived above it, for another client to carry on from."""
        point = ResumePoint(self.since, self.max_ahead)
        point.ahead = set(self.ahead)
        return point

    def resume(self) -> int:
        """Return the id to resume after (since=); what arrived above it will come again, and is dropped once."""
        self.resent = set(self.ahead)
        return self.since

    def arrived(self, message_id: int) -> bool:
        """Record one arriving id; return False for one the last resume asked for again though it had arrived."""
        if message_id in self.resent:
            self.resent.discard(message_id)
            return False
        ahead = self.ahead
        if message_id > self.since + 1:
            ahead.add(message_id)
            if len(ahead) <= self.max_ahead:
                return True
            self.since = min(ahead) - 1  # the oldest gap given up
        elif message_id <= self.since:
            return True  # a duplicate: the receiver counts it
        self.since += 1
        ahead.discard(self.since)
        while self.since + 1 in ahead:
            self.since += 1
            ahead.discard(self.since)
        return True


class LedgerReceiver:
    """One receiver's side of the ledger: the others' messages it got, by whole second of their sent_at,
    counting only those sent at or after it joined."""

    __slots__ = ("room", "user", "transport", "joined_at", "by_second")

    def __init__(self, room: str, user: str, transport: str, joined_at: float) -> None:
        self.room = room
        self.user = user
        self.transport = transport
        self.joined_at = joined_at
        self.by_second: dict[int, int] = {}

    def observe(self, user: object, sent_at: object) -> None:
        if user == self.user or isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
            return
        self.count(sent_at)

    def count(self, sent_at: float) -> None:
        """Count another member's message sent at `sent_at` (a number: the caller checked, as `observe` does)."""
        if sent_at >= self.joined_at:
            second = math.floor(sent_at)
            self.by_second[second] = self.by_second.get(second, 0) + 1


@dataclass(frozen=True, slots=True)
class LedgerTotals:
    expected: int = 0  # the others' accepted sends a receiver should have had (sent after it joined, before the cutoff)
    received: int = 0  # of those, how many it got (a duplicate counts twice: the id tracker counts duplicates)
    missing: int = 0  # per receiver, expected - received when positive, added up

    def __add__(self, other: LedgerTotals) -> LedgerTotals:
        return LedgerTotals(
            self.expected + other.expected, self.received + other.received, self.missing + other.missing
        )

    def as_dict(self) -> dict[str, int]:
        return {"ledger_expected": self.expected, "ledger_received": self.received, "ledger_missing": self.missing}


class DeliveryLedger:
    """Completeness from the senders' side, independent of the server's ids.

    The id tracker trusts the server's numbering: when instances number a room each on their own (the
    naive architecture: round robin over in-memory brokers), every member sees contiguous ids from its
    instance and misses the others' messages unnoticed. The ledger does not ask the server: each send
    the server accepted is recorded with its room, sender and sent_at; each receiver counts the others'
    messages it got. A receiver should have every message of its room sent after it joined by anyone
    else and accepted; `totals(cutoff)` compares, leaving out messages sent after `cutoff` (still in
    flight when the run ended). sent_at and the join time must come from one clock (one machine, or
    clocks in sync): docs/scaling.md.
    """

    def __init__(self) -> None:
        self.sends: dict[str, list[tuple[float, str]]] = {}  # room -> (sent_at, user) of accepted sends
        self.receivers: list[LedgerReceiver] = []

    def record_send(self, room: str, user: str, sent_at: float) -> None:
        self.sends.setdefault(room, []).append((sent_at, user))

    def add_receiver(self, room: str, user: str, transport: str, joined_at: float) -> LedgerReceiver:
        receiver = LedgerReceiver(room, user, transport, joined_at)
        self.receivers.append(receiver)
        return receiver

    def totals(self, cutoff_s: int) -> dict[str, LedgerTotals]:
        """Return the totals per transport, counting messages sent before the whole second `cutoff_s`."""
        rooms = {room: sorted(t for t, _ in sends if t < cutoff_s) for room, sends in self.sends.items()}
        own: dict[tuple[str, str], list[float]] = {}
        for room, sends in self.sends.items():
            for t, user in sends:
                if t < cutoff_s:
                    own.setdefault((room, user), []).append(t)
        for times in own.values():
            times.sort()
        totals: dict[str, LedgerTotals] = {}
        for r in self.receivers:
            room_times = rooms.get(r.room, [])
            own_times = own.get((r.room, r.user), [])
            expected = (len(room_times) - bisect.bisect_left(room_times, r.joined_at)) - (
                len(own_times) - bisect.bisect_left(own_times, r.joined_at)
            )
            received = sum(n for second, n in r.by_second.items() if second < cutoff_s)
            line = LedgerTotals(expected, received, max(0, expected - received))
            totals[r.transport] = totals.get(r.transport, LedgerTotals()) + line
        return totals

    def to_wire(self) -> dict:
        """A JSON-able copy, to send from a Locust worker to its master."""
        return {
            "sends": {room: [[t, user] for t, user in sends] for room, sends in self.sends.items()},
            "receivers": [
                [r.room, r.user, r.transport, r.joined_at, list(r.by_second.items())] for r in self.receivers
            ],
        }

    def merge_wire(self, data: dict) -> None:
        """Add a worker's ledger (to_wire) to this one."""
        for room, sends in data.get("sends", {}).items():
            self.sends.setdefault(room, []).extend((t, user) for t, user in sends)
        for room, user, transport, joined_at, by_second in data.get("receivers", []):
            receiver = self.add_receiver(room, user, transport, joined_at)
            receiver.by_second = {int(second): n for second, n in by_second}
