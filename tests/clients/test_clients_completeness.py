"""Unit tests of the per-receiver completeness tracker: gaps, duplicates, out-of-order arrivals."""

from __future__ import annotations

import pytest

from clients.completeness import Arrival, Counts, ReceiverTracker, ResumePoint


def feed(tracker: ReceiverTracker, ids: list[int]) -> list[Arrival]:
    return [tracker.observe(i)[0] for i in ids]


def test_contiguous_from_the_join_point_is_complete():
    tracker = ReceiverTracker(since=10)
    assert feed(tracker, [11, 12, 13]) == [Arrival.NEXT] * 3
    assert tracker.counts() == Counts(received=3, lost=0, duplicates=0, out_of_order=0)
    assert tracker.last_id == 13


def test_a_gap_counts_every_missing_id_as_lost():
    tracker = ReceiverTracker(since=0)
    feed(tracker, [1, 2])
    assert tracker.observe(6) == (Arrival.GAP, 3)
    assert tracker.observe(7) == (Arrival.NEXT, 0)
    assert tracker.counts() == Counts(received=4, lost=3, duplicates=0, out_of_order=0)


def test_the_first_message_after_the_join_point_may_not_be_skipped():
    tracker = ReceiverTracker(since=5)
    assert tracker.observe(7) == (Arrival.GAP, 1)  # 6 is missing
    assert tracker.lost == 1


def test_a_missing_id_that_turns_up_later_is_out_of_order_not_lost():
    tracker = ReceiverTracker(since=0)
    assert feed(tracker, [1, 3, 2, 4]) == [Arrival.NEXT, Arrival.GAP, Arrival.LATE, Arrival.NEXT]
    assert tracker.counts() == Counts(received=4, lost=0, duplicates=0, out_of_order=1)


def test_an_id_seen_twice_is_a_duplicate():
    tracker = ReceiverTracker(since=0)
    assert feed(tracker, [1, 2, 2, 3, 1]) == [Arrival.NEXT, Arrival.NEXT, Arrival.DUPLICATE, Arrival.NEXT, Arrival.DUPLICATE]
    assert tracker.counts() == Counts(received=5, lost=0, duplicates=2, out_of_order=0)


def test_a_late_id_that_arrives_twice_is_out_of_order_then_duplicate():
    tracker = ReceiverTracker(since=0)
    assert feed(tracker, [2, 1, 1]) == [Arrival.GAP, Arrival.LATE, Arrival.DUPLICATE]
    assert tracker.counts() == Counts(received=3, lost=0, duplicates=1, out_of_order=1)


def test_an_id_at_or_before_the_join_point_is_a_duplicate():
    # The receiver asked for everything after `since`: the server must not send `since` itself again.
    tracker = ReceiverTracker(since=4)
    assert tracker.observe(4) == (Arrival.DUPLICATE, 0)
    assert tracker.observe(1) == (Arrival.DUPLICATE, 0)


def test_huge_gaps_are_counted_without_remembering_every_id():
    tracker = ReceiverTracker(since=0, max_tracked_missing=10)
    tracker.observe(1_000_001)
    assert tracker.lost == 1_000_000
    assert len(tracker._missing) == 10
    assert tracker.observe(5) == (Arrival.LATE, 0)  # one of the remembered ones
    assert tracker.observe(500_000) == (Arrival.DUPLICATE, 0)  # beyond memory: already counted lost
    assert tracker.lost == 999_999


def test_counts_add_up_over_receivers():
    a = Counts(received=3, lost=1, duplicates=0, out_of_order=2)
    b = Counts(received=4, lost=0, duplicates=1, out_of_order=0)
    assert a + b == Counts(received=7, lost=1, duplicates=1, out_of_order=2)
    assert sum([a, b], Counts()) == a + b


def test_a_negative_join_point_is_refused():
    with pytest.raises(ValueError):
        ReceiverTracker(since=-1)



def test_a_resume_goes_back_to_the_first_gap_and_drops_what_it_resends_once():
    point = ResumePoint(since=4)
    assert [point.arrived(i) for i in (5, 7, 8)] == [True] * 3  # 6 held up by a lost packet when the session ended
    assert point.resume() == 5
    # The server sends 6, 7, 8 again: 7 and 8 had arrived (dropped), 6 is new; then the point moves on past 8.
    assert [point.arrived(i) for i in (6, 7, 8, 9)] == [True, False, False, True]
    assert point.since == 9 and point.ahead == set()
    # Outside a resume's resend, an id seen twice is passed on, for the receiver to count as a duplicate.
    assert point.arrived(9) and point.arrived(3)
    assert point.resume() == 9 and point.resent == set()


def test_a_resume_point_gives_the_oldest_gap_up_beyond_what_it_remembers():
    point = ResumePoint(since=0, max_ahead=3)
    for i in (2, 3, 4):
        point.arrived(i)
    assert point.since == 0  # 1 may still come
    point.arrived(6)  # a fourth id ahead: 1 is given up, the point moves past 4 (5 may still come)
    assert point.since == 4 and point.ahead == {6}
