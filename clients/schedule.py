"""Open-loop send times: each send is due at a time fixed in advance, however late the previous one went out."""

from __future__ import annotations

import math
import random

from .profile import ARRIVALS


class SendSchedule:
    """The due times of one member's sends, Poisson or fixed arrivals at `rate_per_s`.

    Due times depend only on the start, the rate and the random stream, never on when the sender
    asks for them: a sender held up by a slow server finds its next sends already due and sends
    them at once, and latency measured from the due time still counts the delay (no coordinated
    omission). The caller measures from `next()`'s value, not from when it actually sent.
    """

    def __init__(self, rate_per_s: float, arrival: str, start_s: float, rng: random.Random | None = None) -> None:
        if arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {ARRIVALS}, got {arrival!r}")
        if not (math.isfinite(rate_per_s) and rate_per_s >= 0):
            raise ValueError(f"rate_per_s must be a finite number >= 0, got {rate_per_s!r}")
        self.rate_per_s = rate_per_s
        self.arrival = arrival
        self._rng = rng if rng is not None else random.Random()
        self._due_s = start_s
        if rate_per_s > 0 and arrival == "fixed":
            # A random phase per member, so that members started together do not send in lockstep.
            self._due_s += self._rng.uniform(0, 1 / rate_per_s)
        elif rate_per_s > 0:
            self._due_s += self._rng.expovariate(rate_per_s)
        self.count = 0  # due times handed out so far

    def next(self) -> float:
        """Return the next due time (same clock as `start_s`); math.inf when the rate is 0."""
        if self.rate_per_s == 0:
            return math.inf
        due = self._due_s
        self._due_s += 1 / self.rate_per_s if self.arrival == "fixed" else self._rng.expovariate(self.rate_per_s)
        self.count += 1
        return due


def message_text(seed_text: str, sequence: int, length: int) -> str:
    """Return a `length`-character text for the sequence-th message: `seed_text` rotated, so texts
    differ from one another (and do not compress to nothing) without costing a random draw each."""
    if not seed_text:
        raise ValueError("seed_text must not be empty")
    repeated = seed_text * (length // len(seed_text) + 2)
    start = sequence % len(seed_text)
    return repeated[start : start + length]
