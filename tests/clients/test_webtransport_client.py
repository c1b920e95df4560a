"""The WebTransport clients (clients/webtransport.py) on the shared asyncio bridge, against a real server: members
chat over streams or datagrams, catch up after `since`, resume after a planned close, and notice a killed server
within seconds. The clients need gevent's monkey-patching, so a script drives them in a subprocess."""

from __future__ import annotations

import pytest
from conftest import UNIT
from test_webrtc_client import run_script

VARIANTS = ("webtransport", "webtransport-datagram")

CHAT_SCRIPT = r'''
from gevent import monkey

monkey.patch_all()

import json, sys, time
from collections import Counter
import gevent
from clients import bridge, webtransport
from clients.completeness import ReceiverTracker

transport, url, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
cls = {"webtransport": webtransport.WebTransportClient,
       "webtransport-datagram": webtransport.DatagramWebTransportClient}[transport]
reports, failures, members = Counter(), [], {}

def report(request_type, name, response_time_ms, response_length, exception=None):
    reports[f"{request_type} {name}"] += 1
    if exception is not None:
        failures.append(f"{request_type} {name}: {exception}")

def member(user, since=None):
    state = {"ids": [], "users": set()}
    def on_message(message, received_at):
        state["ids"].append(message["id"])
        state["users"].add(message["user"])
        state["tracker"].observe(message["id"])
    client = cls(url, on_message, report)
    state["client"] = client
    state["since"] = client.latest_id("probe") if since is None else since
    state["tracker"] = ReceiverTracker(state["since"])
    client.join("probe", state["since"])
    members[user] = state
    return state

def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return condition()

out = {"one_bridge": cls.bridge() is bridge.shared()}
alice, bob = member("alice"), member("bob")
for i in range(5):
    for name in ("alice", "bob"):
        members[name]["client"].send(name, f"{name} says {i}", sent_at=time.time())
    gevent.sleep(0.01)
wait_for(lambda: all(len(members[n]["ids"]) >= 10 for n in ("alice", "bob")))

newest = bob["client"].latest_id("probe")
carol = member("carol", since=newest - 3)  # a late member: the backlog after since, then what is new
bob["client"].send("bob", "after carol joined", sent_at=time.time())
wait_for(lambda: len(carol["ids"]) >= 4)

# The server closes alice's session as a drain does (1012): planned, no RECEIVE failure; she comes back with
# since= her last id, and what she sends meanwhile goes out once she is back.
a = alice["client"]
a._bridge.post(lambda: a._bridge.to_gevent(a._connection_lost, a._current, 1012, "draining"))
alice["client"].send("alice", "sent while reconnecting", sent_at=time.time())
for i in range(3):
    bob["client"].send("bob", f"while alice was away {i}", sent_at=time.time())
wait_for(lambda: len(alice["ids"]) >= 15 and len(bob["ids"]) >= 15 and reports[f"RECONNECT {transport}"] >= 1)
gevent.sleep(0.2)
for name, state in members.items():
    out[name] = {"since": state["since"], "ids": sorted(state["ids"]), "users": sorted(state["users"]),
                 **state["tracker"].counts().as_dict()}

# The server is killed: no reset tells a QUIC client; its keepalive does, within seconds.
import os, signal
killed_at = time.monotonic()
os.kill(pid, signal.SIGKILL)
out["noticed"] = wait_for(lambda: any(f.startswith(f"RECEIVE {transport}") for f in failures), 10)
out["noticed_s"] = time.monotonic() - killed_at
for state in members.values():
    state["client"].close()
out["reports"], out["failures"] = dict(reports), failures
print(json.dumps(out))
'''


@pytest.mark.parametrize("transport", VARIANTS)
def test_members_chat_resume_and_notice_a_killed_server(transport, server_process):
    server = server_process(transport)
    seen = run_script(CHAT_SCRIPT, transport, server.url, str(server.process.pid))
    assert seen["one_bridge"], "WebTransport's members run on the process's one asyncio bridge"
    alice, bob, carol = seen["alice"], seen["bob"], seen["carol"]
    assert alice["since"] == bob["since"] == 0
    assert alice["ids"] == list(range(1, 16)) and bob["ids"] == list(range(1, 16))
    assert alice["users"] == bob["users"] == ["alice", "bob"]
    assert carol["since"] == 7 and carol["ids"][:4] == [8, 9, 10, 11]
    for member in (alice, bob, carol):
        assert (member["lost"], member["duplicates"]) == (0, 0)
    reports = seen["reports"]
    assert reports[f"SEND {transport}"] == 15  # each timed by its echo
    assert reports[f"CONNECT {transport}"] == 4 and reports[f"RECONNECT {transport}"] == 1
    assert not [f for f in seen["failures"] if "1012" in f or f.startswith("SEND")], seen["failures"]
    assert seen["noticed"] and seen["noticed_s"] < 5 * UNIT, seen
