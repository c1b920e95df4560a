"""Unit tests of the open-loop send scheduler."""

from __future__ import annotations

import itertools
import math
import random
import statistics
import time

import pytest

from clients.schedule import SendSchedule, message_text


def take(schedule: SendSchedule, n: int) -> list[float]:
    return [schedule.next() for _ in range(n)]


def test_fixed_arrivals_are_evenly_spaced_after_a_random_phase():
    times = take(SendSchedule(4.0, "fixed", 100.0, random.Random(1)), 50)
    assert 100.0 <= times[0] < 100.25
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(0.25) for gap in gaps)


def test_fixed_phases_differ_between_members():
    firsts = {SendSchedule(1.0, "fixed", 0.0, random.Random(seed)).next() for seed in range(20)}
    assert len(firsts) == 20


def test_poisson_gaps_are_exponential_with_the_right_mean():
    rate = 5.0
    times = take(SendSchedule(rate, "poisson", 0.0, random.Random(7)), 20_000)
    gaps = [times[0]] + [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= 0 for gap in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.03)
    # For an exponential distribution the standard deviation equals the mean.
    assert statistics.pstdev(gaps) == pytest.approx(1 / rate, rel=0.05)


def test_the_same_seed_gives_the_same_schedule():
    a = take(SendSchedule(3.0, "poisson", 0.0, random.Random(42)), 100)
    b = take(SendSchedule(3.0, "poisson", 0.0, random.Random(42)), 100)
    assert a == b


@pytest.mark.parametrize("arrival", ["poisson", "fixed"])
def test_due_times_do_not_depend_on_when_the_sender_asks(arrival, monkeypatch):
    # Open loop: a sender that fell behind (asks late) gets the same due times, so its lateness is measured.
    prompt = take(SendSchedule(10.0, arrival, 0.0, random.Random(3)), 30)
    late = SendSchedule(10.0, arrival, 0.0, random.Random(3))
    clock = iter(range(1000, 2000))
    monkeypatch.setattr(time, "time", lambda: float(next(clock)))
    monkeypatch.setattr(time, "monotonic", lambda: float(next(clock)))
    assert take(late, 30) == prompt
    assert late.count == 30


def test_rate_zero_never_sends():
    schedule = SendSchedule(0.0, "poisson", 0.0, random.Random(0))
    assert schedule.next() == math.inf
    assert schedule.count == 0


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="arrival"):
        SendSchedule(1.0, "bursty", 0.0)
    with pytest.raises(ValueError, match="rate"):
        SendSchedule(-1.0, "fixed", 0.0)


@pytest.mark.parametrize("length", [1, 7, 100, 4096])
def test_message_text_has_the_asked_length_and_varies(length):
    texts = {message_text("abcdefghij", seq, length) for seq in range(10)}
    assert all(len(t) == length for t in texts)
    assert all(t.isascii() for t in texts)
    assert len(texts) == 10
