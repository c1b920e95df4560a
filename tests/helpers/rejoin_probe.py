"""A member of every transport rejoins its room (ChatMember.rejoin, clients/locustfile.py) while messages are held up on
its old connection, as a message is when the rejoin comes at that instant; prints one JSON line: what each member's
receiver tracker counted (run by tests/clients/test_locust_rejoin.py in a subprocess: importing Locust monkey-patches
with gevent, which the pytest process must not). Usage: rejoin_probe.py URL TRANSPORT..."""

import locust  # noqa: F401  first: Locust monkey-patches with gevent on import

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import gevent  # noqa: E402
import orjson  # noqa: E402

from clients import locustfile  # noqa: E402
from clients.base import JsonHttp  # noqa: E402
from clients.completeness import ReceiverTracker  # noqa: E402
from servers import registry  # noqa: E402

SENT = 5  # messages sent before the rejoin; then one more after it
HELD = 3  # the first id held up on the old connection


def wait_for(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return condition()


def probe(url: str, transport: str) -> dict:
    entry = registry.get(transport)
    cls = getattr(locustfile, entry.member_class)
    # What an ordered connection can hold up is a tail: the held id and every id after it. An unordered one (a QUIC
    # stream per message, an unordered channel) can hold one id while later ones overtake it.
    held = set(range(HELD, SENT + 1)) if entry.ordered else {HELD}
    room = f"rejoin-{transport}"
    tracker = ReceiverTracker(0)
    ids: list[int] = []
    failures: list[str] = []

    def on_message(message, received_at):
        ids.append(message["id"])
        tracker.observe(message["id"])

    def report(request_type, name, response_time_ms, response_length, exception=None):
        if exception is not None:
            failures.append(f"{request_type} {name}: {exception}")

    member = cls.__new__(cls)  # the chat behaviour's rejoin, without a Locust run around it
    member.host, member.transport, member.room, member.rng = url, transport, room, random.Random(1)
    member.on_message, member.report = on_message, report
    member.run = SimpleNamespace(profile=SimpleNamespace(reconnect_every_s=0))
    old = member.client = member.new_client()
    offered: set[int] = set()
    deliver = old.deliver

    def held_up(message, received_at):  # what the connection got, but had not handed over when it closed
        offered.add(message["id"])
        if message["id"] not in held:
            deliver(message, received_at)

    old.deliver = held_up
    old.join(room, 0)
    sender = JsonHttp(old.host, old.port, 10.0)

    def send(i: int) -> None:
        body = orjson.dumps({"user": "sender", "text": f"message {i}", "sent_at": time.time()})
        status, answer = sender.request("POST", f"/rooms/{room}/messages", body)
        assert status == 201, answer

    for i in range(1, SENT + 1):
        send(i)
    sent = set(range(1, SENT + 1))
    wait_for(lambda: offered >= sent, 10.0)
    before = list(ids)
    member.rejoin()
    # Where a gap is the transport's loss, the held message is not asked for again.
    wait_for(lambda: set(ids) >= (sent - held if old.expects_loss else sent), 10.0)
    send(SENT + 1)
    wait_for(lambda: SENT + 1 in ids, 10.0)
    gevent.sleep(0.3)  # anything resent twice would arrive by now
    member.client.close()
    sender.close()
    return {"held": sorted(held), "before": before, "after": ids[len(before):], "expects_loss": old.expects_loss,
            "failures": failures, **tracker.counts().as_dict()}


def main() -> None:
    url, transports = sys.argv[1], sys.argv[2:]
    jobs = {t: gevent.spawn(probe, url, t) for t in transports}
    gevent.joinall(list(jobs.values()), timeout=60)
    print(json.dumps({t: job.value if job.successful() else repr(job.exception) for t, job in jobs.items()}))


if __name__ == "__main__":
    main()
