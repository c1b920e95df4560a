"""Unit tests of the chat core: no event loop, no sockets."""

from __future__ import annotations

import itertools
import json

import pytest

from servers.core import ChatCore, InvalidInput, Limits, TooLarge, Unavailable, parse_post


def make_core(**limits) -> ChatCore:
    ticks = itertools.count(1000)
    return ChatCore(Limits(**limits), clock=lambda: float(next(ticks)))


def test_ids_are_contiguous_per_room_and_rooms_are_independent():
    core = make_core()
    a = [core.post("a", "ann", f"m{i}").id for i in range(5)]
    b = [core.post("b", "bob", "x").id for _ in range(3)]
    assert a == [1, 2, 3, 4, 5]
    assert b == [1, 2, 3]
    assert core.last_id("a") == 5 and core.last_id("b") == 3 and core.last_id("never") == 0


def test_message_carries_sender_clock_untouched_and_server_time():
    core = make_core()
    m = core.post("r", "ann", "hi", 1234.5678)
    assert (m.sent_at, m.ts) == (1234.5678, 1000.0)
    assert json.loads(m.json) == {"id": 1, "room": "r", "user": "ann", "text": "hi", "sent_at": 1234.5678, "ts": 1000.0}
    assert core.post("r", "ann", "no clock").sent_at is None


def test_reading_an_unknown_room_creates_nothing():
    core = make_core()
    assert core.since("ghost", 0, 10).messages == ()
    assert core.history("ghost", None, 10) == ()
    assert core.room_count == 0


def test_since_pages_and_reports_last_id():
    core = make_core()
    for i in range(10):
        core.post("r", "ann", str(i))
    page = core.since("r", 3, 4)
    assert [m.id for m in page.messages] == [4, 5, 6, 7]
    assert page.last_id == 10 and not page.truncated
    assert core.since("r", 10, 5).messages == ()
    assert core.since("r", 99, 5).last_id == 10  # a client ahead of the server (after a restart) sees last_id


def test_history_is_bounded_and_since_says_truncated():
    core = make_core(history=5)
    for i in range(23):  # past the chunked trim several times
        core.post("r", "ann", str(i))
    assert [m.id for m in core.history("r", None, 100)] == [19, 20, 21, 22, 23]
    page = core.since("r", 10, 100)
    assert page.truncated and [m.id for m in page.messages] == [19, 20, 21, 22, 23]
    assert not core.since("r", 18, 100).truncated
    assert core.since("r", 17, 100).truncated


def test_history_before_and_limit():
    core = make_core()
    for i in range(10):
        core.post("r", "ann", str(i))
    assert [m.id for m in core.history("r", None, 3)] == [8, 9, 10]
    assert [m.id for m in core.history("r", 5, 3)] == [2, 3, 4]
    assert [m.id for m in core.history("r", 2, 50)] == [1]
    assert core.history("r", 1, 50) == ()
    assert core.history("r", 0, 50) == ()


@pytest.mark.parametrize(
    "room, user, text, sent_at, error",
    [
        ("", "ann", "x", None, InvalidInput),
        ("a" * 65, "ann", "x", None, InvalidInput),
        ("bad room", "ann", "x", None, InvalidInput),
        ("r/1", "ann", "x", None, InvalidInput),
        ("r", "", "x", None, InvalidInput),
        ("r", "u" * 33, "x", None, InvalidInput),
        ("r", "an n", "x", None, InvalidInput),
        ("r", "ann", "", None, InvalidInput),
        ("r", "ann", "x" * 4097, None, TooLarge),
        ("r", "ann", 5, None, InvalidInput),
        ("r", "ann", "half a pair \ud800", None, InvalidInput),
        ("r", "ann", "x", "now", InvalidInput),
        ("r", "ann", "x", True, InvalidInput),
        ("r", "ann", "x", float("nan"), InvalidInput),
        ("r", "ann", "x", -1.0, InvalidInput),
    ],
)
def test_validation_raises_domain_errors(room, user, text, sent_at, error):
    core = make_core()
    with pytest.raises(error):
        core.post(room, user, text, sent_at)
    assert core.room_count == 0


def test_limits_at_the_edge_are_accepted():
    core = make_core()
    m = core.post("a" * 64, "u" * 32, "é" * 4096)  # characters, not bytes
    assert m.id == 1 and len(m.text) == 4096
    assert core.post("A-z_0", "a.b-c_D", "x", 0).sent_at == 0


def test_room_limit():
    core = make_core(rooms=2)
    core.post("a", "ann", "x")
    core.post("b", "ann", "x")
    with pytest.raises(Unavailable):
        core.post("c", "ann", "x")
    assert core.post("a", "ann", "still fine").id == 2


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 1.5])
def test_page_limits(limit):
    with pytest.raises(InvalidInput):
        make_core().since("r", 0, limit)


@pytest.mark.parametrize(
    "body, message",
    [
        ([], "JSON object"),
        ({"text": "x"}, "missing field: user"),
        ({"user": "ann"}, "missing field: text"),
        ({"user": "ann", "text": "x", "extra": 1}, "unknown field: extra"),
        ({"user": 1, "text": "x"}, "user must match"),
    ],
)
def test_parse_post_names_the_problem(body, message):
    with pytest.raises(InvalidInput, match=message):
        parse_post(body, 4096)
