"""The Redis broker against a real redis-server: the same answers as the chat core, fan-out between
instances, each id once and in order, and a Redis restart survived with nothing missed."""

from __future__ import annotations

import asyncio

import pytest
from conftest import UNIT

from servers.broker import MemoryBroker
from servers.core import ChatCore, ChatError, InvalidInput, Limits, TooLarge, Unavailable
from servers.redis_broker import RedisBroker


@pytest.fixture
async def brokers(redis_server):
    """Start RedisBrokers on the fixture's Redis: `await brokers(**options)`; all closed afterwards."""
    started: list[RedisBroker] = []

    async def make(limits: Limits = Limits(), **options) -> RedisBroker:
        broker = RedisBroker(redis_server.url, limits, **options)
        await broker.start(timeout_s=5 * UNIT)
        started.append(broker)
        return broker

    yield make
    for broker in started:
        await broker.close()


async def until(predicate, timeout_s: float = 5 * UNIT, what: str = "condition") -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


def outcome(result):
    """A comparable form of what an operation returned or raised, JSON encodings included."""
    if isinstance(result, BaseException):
        return (type(result).__name__, str(result))
    if hasattr(result, "truncated"):  # a Page (a named tuple, so before the tuples of messages)
        return ([outcome(m) for m in result.messages], result.last_id, result.truncated)
    if isinstance(result, tuple):
        return [outcome(m) for m in result]
    return (result, result.json)


async def test_answers_match_the_chat_core_operation_for_operation(brokers):
    limits = Limits(history=5, rooms=3, page=20)
    now = [1000.0]  # both clocks read the same time, set before each operation
    memory = MemoryBroker(ChatCore(limits, clock=lambda: now[0]))
    redis = await brokers(limits, clock=lambda: now[0])
    operations = []
    for i in range(13):  # past the history bound, so trimming and `truncated` are exercised
        operations.append(("post", "a", "ann", f"m{i} é ☃ \"quoted\" \\ </script>", 1700000000.5 + i))
    operations += [
        ("post", "b", "bob", "x", None),
        ("post", "b", "bob", "y", 0),
        ("post", "b", "bob", "z", 12),
        ("post", "c", "cy", "c1", 1.0),
        ("post", "d", "dee", "one room too many", None),
        ("post", "a", "ann", "still fine in a known room", None),
        ("post", "bad room", "ann", "x", None),
        ("post", "a", "a n", "x", None),
        ("post", "a", "ann", "", None),
        ("post", "a", "ann", "x" * 4097, None),
        ("post", "a", "ann", "x", float("nan")),
        ("post", "a", "ann", "x", True),
    ]
    for after in (0, 1, 8, 9, 10, 13, 14, 99):
        for limit in (1, 3, 20):
            operations.append(("since", "a", after, limit))
    operations += [("since", "b", 0, 2), ("since", "ghost", 0, 5), ("since", "a", -1, 5), ("since", "a", 0, 0),
                   ("since", "a", 0, 21), ("since", "a", True, 5)]
    for before in (None, 0, 1, 10, 12, 15, 100):
        for limit in (1, 2, 20):
            operations.append(("history", "a", before, limit))
    operations += [("history", "ghost", None, 5), ("history", "a", -3, 5), ("history", "a", None, 0)]

    differences = []
    for step, (kind, *args) in enumerate(operations):
        now[0] = 1700000000.0 + step * 0.125
        results = []
        for broker in (memory, redis):
            try:
                results.append(outcome(await getattr(broker, kind)(*args)))
            except ChatError as error:
                results.append(outcome(error))
        if results[0] != results[1]:
            differences.append(f"{kind}{tuple(args)}:\n  core:  {results[0]}\n  redis: {results[1]}")
    assert not differences, "\n".join(differences)


async def test_errors_are_the_domain_errors_transports_map(brokers):
    redis = await brokers()
    with pytest.raises(InvalidInput):
        await redis.post("r", "ann", "lone \ud800 surrogate", None)
    with pytest.raises(TooLarge):
        await redis.post("r", "ann", "x" * 5000, None)


async def test_a_post_on_one_instance_reaches_listeners_on_the_others_in_order_once(brokers):
    a, b, c = await brokers(), await brokers(), await brokers()
    got_b, got_c = [], []
    b.subscribe("lobby", got_b.append)
    c.subscribe("lobby", got_c.append)
    await until(lambda: b.state()["connected"] and c.state()["connected"])
    await asyncio.sleep(0.1 * UNIT)  # the SUBSCRIBEs take effect (a message before them is caught up anyway)
    # Concurrent posts from two instances: ids are allocated atomically, publications arrive in id order.
    sent = await asyncio.gather(*(broker.post("lobby", "ann", f"m{i}", None) for i in range(60) for broker in (a, b)))
    assert sorted(m.id for m in sent) == list(range(1, 121))
    await until(lambda: len(got_b) == 120 and len(got_c) == 120)
    await asyncio.sleep(0.1 * UNIT)  # nothing more (no duplicate) arrives
    for got in (got_b, got_c):
        assert [m.id for m in got] == list(range(1, 121))
    by_id = {m.id: m for m in sent}
    assert all(m.json == by_id[m.id].json and m == by_id[m.id] for m in got_b)  # the same bytes on every instance


async def test_a_reader_that_subscribes_before_the_subscription_takes_effect_misses_nothing(brokers):
    poster, reader = await brokers(), await brokers()
    await poster.post("late", "ann", "before", None)
    got = []
    # Hold the SUBSCRIBE back, as a slow link would, while the reader reads and others post.
    wanted, reader._wanted = reader._wanted, asyncio.Queue()
    reader.subscribe("late", got.append)
    page = await reader.since("late", 0, 10)  # what a transport does right after subscribing
    assert [m.id for m in page.messages] == [1]
    for i in range(3):
        await poster.post("late", "ann", f"while subscribing {i}", None)
    reader._wanted = wanted
    wanted.put_nowait("late")
    await until(lambda: len(got) >= 3)
    await poster.post("late", "ann", "after", None)
    await until(lambda: len(got) >= 4)
    await asyncio.sleep(0.1 * UNIT)
    assert [m.id for m in got] == [2, 3, 4, 5]


async def test_a_subscription_lingers_then_is_dropped(brokers):
    broker = await brokers(linger_s=0.3 * UNIT)
    unsubscribe = broker.subscribe("brief", lambda m: None)
    await until(lambda: broker.state()["rooms_subscribed"] == 1)
    unsubscribe()
    await asyncio.sleep(0.1 * UNIT)
    assert broker.state()["rooms_subscribed"] == 1  # still lingering: a long poll rejoining finds it live
    await until(lambda: broker.state()["rooms_subscribed"] == 0, 3 * UNIT)


async def test_a_redis_restart_is_survived_and_listeners_catch_up_in_order(brokers, redis_server):
    poster, listener = await brokers(), await brokers(reconnect_max_s=0.2)
    got = []
    listener.subscribe("r", got.append)
    await asyncio.sleep(0.1 * UNIT)
    for i in range(5):
        await poster.post("r", "ann", f"before {i}", None)
    await until(lambda: len(got) == 5)

    restart = asyncio.get_running_loop().run_in_executor(None, redis_server.restart, 0.3 * UNIT)
    await until(lambda: not listener.state()["connected"], 5 * UNIT)
    with pytest.raises(Unavailable):
        await poster.post("r", "ann", "during the outage", None)
    await restart
    # Post as soon as Redis is back, before the listener has resubscribed: these reach it by catch-up.
    for i in range(5):
        await poster.post("r", "ann", f"after {i}", None)
    await until(lambda: len(got) == 10, 10 * UNIT)
    for i in range(5):
        await poster.post("r", "ann", f"live {i}", None)
    await until(lambda: len(got) == 15)
    await asyncio.sleep(0.1 * UNIT)
    assert [m.id for m in got] == list(range(1, 16))  # history survived the restart; nothing missed or doubled
    state = listener.state()
    assert state["connected"] and state["reconnects"] == 1 and state["last_outage_s"] > 0


async def test_start_fails_clearly_when_redis_is_unreachable(redis_server):
    url = redis_server.url
    redis_server.stop()
    broker = RedisBroker(url)
    with pytest.raises(Unavailable, match="cannot reach Redis"):
        await broker.start(timeout_s=0.3)
