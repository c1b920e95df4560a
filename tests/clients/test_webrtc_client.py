"""The WebRTC data channel clients (clients/webrtc.py): the asyncio bridge under gevent's monkey-patching, both
channel variants against a real server, and a headless Locust run of each. The clients need monkey-patching,
which must not happen in pytest's process, so scripts drive them in subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, UNIT

from clients.results import read_histogram
from experiments.supervisor import Process

VARIANTS = ("webrtc", "webrtc-unreliable")

BRIDGE_SCRIPT = r'''
import locust  # patches with gevent on import, as in every Locust process

import asyncio, json, time, _thread
import gevent, gevent.event, gevent.monkey
from clients import bridge as asyncio_bridge, webrtc

native_id = gevent.monkey.get_original("_thread", "get_native_id")
main = native_id()
bridge = webrtc.WebRTCClient.bridge()
out = {"same_bridge": asyncio_bridge.shared() is bridge and webrtc.WebRTCClient.bridge() is bridge}

async def where(delay):
    await asyncio.sleep(delay)
    return native_id()

ticks = []
ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
started = time.perf_counter()
out["loop_thread_differs"] = bridge.call(where, 0.3, timeout_s=5) != main
out["call_s"] = time.perf_counter() - started
out["ticks_during_call"] = len(ticks)  # the other greenlets ran meanwhile: only the caller waited
ticker.kill()

async def fails():
    raise ValueError("on the loop")
try:
    bridge.call(fails, timeout_s=5)
except ValueError as error:
    out["error"] = str(error)

cancelled = []
async def hangs():
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.append(native_id())
        raise
try:
    bridge.call(hangs, timeout_s=0.2)
except TimeoutError:
    out["timed_out"] = True
gevent.sleep(0.2)
out["cancelled_on_loop"] = bool(cancelled) and cancelled[0] != main

# The loop hands callbacks back to one greenlet on the main thread (not the hub), in order.
got = []
done = gevent.event.Event()
def back(i):
    got.append((i, native_id() == main, gevent.getcurrent() is bridge.dispatcher))
    if i == 999:
        done.set()
bridge.post(lambda: [bridge.to_gevent(back, i) for i in range(1000)])
out["handed_back"] = done.wait(5)
out["in_order"] = [i for i, _, _ in got] == list(range(1000))
out["in_the_dispatcher"] = all(m and h for _, m, h in got)

# Every ICE socket aiortc opens is a real one, not gevent's wrapper.
async def datagram_socket():
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    try:
        return type(transport.get_extra_info("socket")._sock).__module__
    finally:
        transport.close()
out["udp_socket_module"] = bridge.call(datagram_socket, timeout_s=5)
print(json.dumps(out))
'''

CHAT_SCRIPT = r'''
from gevent import monkey

monkey.patch_all()

import json, sys, time
from collections import Counter
import gevent
from clients import webrtc
from clients.completeness import ReceiverTracker

transport, url = sys.argv[1], sys.argv[2]
cls = {"webrtc": webrtc.WebRTCClient, "webrtc-unreliable": webrtc.UnreliableWebRTCClient}[transport]
native_id = gevent.monkey.get_original("_thread", "get_native_id")
main = native_id()
reports, failures, members = Counter(), [], {}

def report(request_type, name, response_time_ms, response_length, exception=None):
    reports[f"{request_type} {name}"] += 1
    if exception is not None:
        failures.append(f"{request_type} {name}: {exception}")

def member(user, since=None):
    state = {"ids": [], "users": set(), "latencies_ms": [], "gevent_context": True}
    def on_message(message, received_at):
        client = state["client"]
        state["gevent_context"] &= native_id() == main and gevent.getcurrent() is client._bridge.dispatcher
        state["ids"].append(message["id"])
        state["users"].add(message["user"])
        state["tracker"].observe(message["id"])
        state["latencies_ms"].append((received_at - message["sent_at"]) * 1000)
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

def on_loop(client, fn):
    async def run():
        return fn(client)
    return client._bridge.call(run, timeout_s=5)

out = {}
alice, bob = member("alice"), member("bob")
out["channel"] = on_loop(alice["client"], lambda c: [c._channel.label, c._channel.ordered, c._channel.maxRetransmits])
for i in range(5):
    for name in ("alice", "bob"):
        members[name]["client"].send(name, f"{name} says {i}", sent_at=time.time())
    gevent.sleep(0.01)
wait_for(lambda: all(len(members[n]["ids"]) >= 10 for n in ("alice", "bob")))

# A late member catches up from `since`: the backlog after it, then what is new.
newest = bob["client"].latest_id("probe")
carol = member("carol", since=newest - 3)
bob["client"].send("bob", "after carol joined", sent_at=time.time())
wait_for(lambda: len(carol["ids"]) >= 4)

# A bad frame draws an error frame; the channel stays open.
on_loop(alice["client"], lambda c: c._channel.send('{"type": "nonsense"}'))
wait_for(lambda: any("refused" in f for f in failures), 5)
bob["client"].send("bob", "still open", sent_at=time.time())
wait_for(lambda: len(alice["ids"]) >= 12)

# The connection breaks: alice reconnects with since= the last id she saw and misses nothing; what she sends
# meanwhile goes out once she is back.
on_loop(alice["client"], lambda c: c._close_connection())
alice["client"].send("alice", "sent while reconnecting", sent_at=time.time())
gevent.sleep(0.05)
for i in range(3):
    bob["client"].send("bob", f"while alice was away {i}", sent_at=time.time())
wait_for(lambda: len(alice["ids"]) >= 16 and len(bob["ids"]) >= 16 and reports[f"RECONNECT {transport}"] >= 1)

# The server's last message before it closes a channel, as its drain sends it (1012): planned, so no RECEIVE
# failure, and alice comes back.
close = '{"type": "close", "code": 1012, "reason": "draining"}'
on_loop(alice["client"], lambda c: c._bridge.to_gevent(c._arrived, c._current, close, time.time()))
wait_for(lambda: reports[f"RECONNECT {transport}"] >= 2)
bob["client"].send("bob", "after the drain", sent_at=time.time())
wait_for(lambda: len(alice["ids"]) >= 17)
gevent.sleep(0.2)  # anything duplicated arrives too

for state in members.values():
    state["client"].close()
for name, state in members.items():
    latencies = sorted(state["latencies_ms"])
    out[name] = {"since": state["since"], "ids": state["ids"], "users": sorted(state["users"]),
                 "gevent_context": state["gevent_context"], "latency_p50_ms": latencies[len(latencies) // 2],
                 **state["tracker"].counts().as_dict()}
out["reports"], out["failures"] = dict(reports), failures
print(json.dumps(out))
'''

# As tests/clients/test_locust_runs.py's: 10 members in 2 rooms.
SMALL_PROFILE = """\
users = 10
spawn_rate = 10
rooms = 2
messages_per_second = 1.0
message_bytes = 50
arrival = "poisson"
duration_s = 8
warmup_s = 1
"""


def run_script(script: str, *args: str, timeout_s: float = 60 * UNIT) -> dict:
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, check=False, capture_output=True,
                            text=True, timeout=timeout_s)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_asyncio_bridge_works_under_monkey_patching():
    seen = run_script(BRIDGE_SCRIPT)
    assert seen["same_bridge"], "one asyncio loop per process"
    assert seen["loop_thread_differs"], "the loop runs on a real OS thread of its own"
    assert 0.25 < seen["call_s"] < 2 * UNIT
    assert seen["ticks_during_call"] >= 10, "a call blocks its greenlet only, not the gevent hub"
    assert seen["error"] == "on the loop"
    assert seen["timed_out"] and seen["cancelled_on_loop"]
    assert seen["handed_back"] and seen["in_order"] and seen["in_the_dispatcher"]
    assert seen["udp_socket_module"] == "socket", "ICE sockets are the kernel's, not gevent's wrappers"


@pytest.mark.parametrize("transport", VARIANTS)
def test_members_chat_catch_up_and_resume_over_the_data_channel(transport, server_process):
    server = server_process(transport)
    seen = run_script(CHAT_SCRIPT, transport, server.url)
    reliable = transport == "webrtc"
    assert seen["channel"] == (["chat", True, None] if reliable else ["chat", False, 0])
    alice, bob, carol = seen["alice"], seen["bob"], seen["carol"]
    # Each member gets its own messages back (the echo) and the others'; on loopback nothing is lost.
    assert alice["since"] == bob["since"] == 0
    assert alice["ids"] == list(range(1, 18)) and bob["ids"] == list(range(1, 18))
    assert alice["users"] == bob["users"] == ["alice", "bob"]
    for member in (alice, bob, carol):
        assert member["gevent_context"], "on_message runs in a greenlet on gevent's thread"
        assert (member["lost"], member["duplicates"], member["out_of_order"]) == (0, 0, 0)
        assert member["latency_p50_ms"] < 500 * UNIT
    assert carol["since"] == 7 and carol["ids"][:4] == [8, 9, 10, 11]
    reports = seen["reports"]
    assert reports[f"SEND {transport}"] == 17 + 1  # each of 17 timed by its echo; and the refused frame
    assert reports[f"CONNECT {transport}"] == 5 and reports[f"RECONNECT {transport}"] == 2
    assert len(seen["failures"]) == 2, seen["failures"]
    assert any(f.startswith(f"SEND {transport}: server refused a send") for f in seen["failures"])
    assert f"RECEIVE {transport}: the data channel closed" in seen["failures"]


@pytest.fixture(scope="module")
def locust_runs(tmp_path_factory) -> dict[str, tuple[int | None, Path]]:
    """A short headless run per variant through `python -m clients --serve`, both at once (~10 s): exit code, folder."""
    base = tmp_path_factory.mktemp("webrtc-locust")
    profile = base / "small.toml"
    profile.write_text(SMALL_PROFILE)
    started = {}
    for transport in VARIANTS:
        out = base / transport
        out.mkdir()
        command = [sys.executable, "-m", "clients", "--transport", transport, "--serve", "--profile", str(profile),
                   "--headless", "--out", str(out)]
        started[transport] = (Process(transport, command, out / "output.log").start(), out)
    deadline = time.monotonic() + 60 * UNIT
    codes = {}
    for transport, (process, out) in started.items():
        code = process.wait(max(1.0, deadline - time.monotonic()))
        codes[transport] = code if code is not None else process.stop()
    return {transport: (codes[transport], out) for transport, (_, out) in started.items()}


@pytest.mark.parametrize("transport", VARIANTS)
def test_a_locust_run_measures_delivery_and_loses_nothing_on_loopback(locust_runs, transport):
    import csv

    code, out = locust_runs[transport]
    output = (out / "output.log").read_text()
    assert code == 0, output
    with open(out / "locust_stats.csv", newline="") as file:
        stats = {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}
    delivered = int(stats[("DELIVER", transport)]["Request Count"])
    assert delivered > 0
    assert int(stats[("SEND", transport)]["Request Count"]) > 0
    connects = sum(int(row["Request Count"]) for (kind, name), row in stats.items()
                   if kind == "CONNECT" and name in (transport, f"{transport} [warm-up]"))
    assert connects == 10  # once per member (during the warm-up, as they join): nothing reconnected
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0, output
    completeness = json.loads((out / "completeness.json").read_text())["transports"][transport]
    assert completeness["receivers"] == 10
    assert (completeness["lost"], completeness["duplicates"], completeness["out_of_order"]) == (0, 0, 0)
    assert completeness["deliveries_measured"] == delivered
    assert read_histogram(out / f"deliver_latency_{transport}.hdr").get_total_count() == delivered
