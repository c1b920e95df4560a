"""Drive two clients of one transport outside Locust and print what they saw, as JSON (run as a subprocess:
it monkey-patches with gevent, which the pytest process must not)."""

from gevent import monkey

monkey.patch_all()

import argparse
import json
import sys
import time
from collections import Counter

import gevent

from clients import client_class, http
from clients.completeness import ReceiverTracker


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("transport")
    p.add_argument("url")
    p.add_argument("--room", default="probe")
    p.add_argument("--messages", type=int, default=5, help="messages each member sends")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for every message")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--wait", type=float, default=5.0)
    p.add_argument("--http", default="1.1", help="the HTTP the members speak (clients/http.py)")
    p.add_argument("--tls-ca", default=None, help="the certificate that verifies an https:// server")
    p.add_argument("--hold", action="store_true",
                   help="once done, print the members' counted bytes, again on each 'count' line on stdin, and close "
                        "on any other line")
    a = p.parse_args(argv)
    http.configure(a.http, a.tls_ca)

    cls = client_class(a.transport)
    options = {"short-polling": {"poll_interval_s": a.poll_interval}, "long-polling": {"wait_s": a.wait}}.get(a.transport, {})
    reports: Counter[str] = Counter()
    failures: list[str] = []

    def report(request_type, name, response_time_ms, response_length, exception=None):
        reports[f"{request_type} {name}"] += 1
        if exception is not None:
            failures.append(f"{request_type} {name}: {exception!r}")

    members = {}
    for user in ("alice", "bob"):
        state = {"messages": [], "tracker": None}

        def on_message(message, received_at, state=state):
            state["messages"].append(message)
            state["tracker"].observe(message["id"])

        client = cls(a.url, on_message, report, **options)
        client.transport = a.transport  # as the Locust user does: one client class may drive several entries
        since = client.latest_id(a.room)
        state["tracker"] = ReceiverTracker(since)
        state["since"] = since
        client.join(a.room, since)
        members[user] = (client, state)

    for i in range(a.messages):
        for user, (client, _) in members.items():
            client.send(user, f"{user} says {i}", sent_at=time.time())
        gevent.sleep(0.02)

    deadline = time.monotonic() + a.timeout
    expected = 2 * a.messages
    while time.monotonic() < deadline:
        # A lost message never arrives: stop once the newest id is in, whatever came before it.
        if all(s["tracker"].last_id >= s["since"] + expected and s["tracker"].received >= expected - 1 for _, s in members.values()):
            break
        gevent.sleep(0.05)
    gevent.sleep(0.2)  # let anything duplicated arrive too
    if a.hold:
        # Stop asking (polls), let what is on its way land, count it, say so, and keep every connection open until
        # told to go on: a packet capture then sees exactly the bytes the members' connections counted.
        for client, _ in members.values():
            client._receiver.kill()
        gevent.sleep(0.3)
        while True:  # each "count" line: what the connections counted by now; anything else: go on
            counted = http.settle()
            print(json.dumps({"in": counted.bytes_in, "out": counted.bytes_out, "connections": counted.connections}),
                  flush=True)
            if sys.stdin.readline().strip() != "count":
                break
            gevent.sleep(0.3)
    for client, _ in members.values():
        client.close()

    print(json.dumps({
        user: {
            "since": s["since"],
            "ids": [m["id"] for m in s["messages"]],
            "users": sorted({m["user"] for m in s["messages"]}),
            **s["tracker"].counts().as_dict(),
        }
        for user, (_, s) in members.items()
    } | {"reports": dict(reports), "failures": failures,
         # What the members' own connections counted (TLS and HTTP/2 only: clients/http.py's Link).
         "link_bytes": {"in": http.TOTALS.bytes_in, "out": http.TOTALS.bytes_out,
                        "connections": http.TOTALS.connections}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
