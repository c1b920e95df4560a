"""Scale-out with real processes: server instances behind a real HAProxy, over a real Redis when the mode needs
it. Cross-instance fan-out, sticky and naive routing, draining, a killed instance, a Redis restart, and Locust's
distributed mode.

The Locust scenarios run at the same time (each on its own cluster, each fault injected from a thread), so
the module costs about one run.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from conftest import ROOT, TRANSPORTS, UNIT, require_binary
from helpers.receivers import EventStreamReceiver

from clients.results import MEASURING_MARKER
from experiments.cluster import Cluster, http_json
from experiments.haproxy import haproxy_config
from experiments.supervisor import Process, ServerProcess, free_port, start_server
from servers import registry

LOCUSTFILE = ROOT / "clients" / "locustfile.py"

# 8 members in 2 rooms, each sending once a second: small enough to run several at once on a CI machine.
PROFILE = """\
users = 24
spawn_rate = 60
rooms = 2
messages_per_second = 1.0
message_bytes = 40
arrival = "poisson"
poll_interval_s = 0.2
long_poll_wait_s = 5.0
duration_s = 11
warmup_s = 1
"""
# After the measured window opened (every member joined, or the join deadline passed): members talking, and what the
# fault causes (reconnects) falls in the window, as the figures under test count it; the run goes on long enough after
# it (duration_s) for a member of a killed instance to notice, come back and catch up, on a busy machine too.
FAULT_AFTER_S = 1.0


@pytest.fixture
def cluster(tmp_path):
    """Start clusters: `cluster(transport, instances, mode, **options)`; stopped afterwards."""
    started: list[Cluster] = []

    def start(transport: str, instances: int, mode: str, **options) -> Cluster:
        c = new_cluster(tmp_path / f"cluster-{len(started)}", transport, instances, mode, **options)
        started.append(c)
        return c.start()

    yield start
    for c in started:
        c.stop()


def new_cluster(directory: Path, transport: str, instances: int, mode: str, **options) -> Cluster:
    c = Cluster(transport, instances, mode, directory, startup_timeout_s=20 * UNIT, **options)
    c.haproxy_binary = require_binary("haproxy")
    if c.broker == "redis":
        c.redis_binary = require_binary("redis-server")
    return c


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def post(session: aiohttp.ClientSession, url: str, room: str, user: str, text: str) -> dict:
    async with session.post(f"{url}/rooms/{room}/messages", json={"user": user, "text": text}) as resp:
        assert resp.status == 201, await resp.text()
        return await resp.json()


# ---- fan-out and routing, checked message by message -------------------------------------------------------------


async def test_a_post_on_one_instance_reaches_a_websocket_member_on_another_and_a_long_poll_on_a_third(cluster):
    c = cluster("all", 3, "pubsub")
    a, b, third = (i.url for i in c.instances)
    async with aiohttp.ClientSession() as session:
        assert [(await get_json(session, f"{u}/healthz"))["instance"] for u in (a, b, third)] == [
            "server-1", "server-2", "server-3"]
        ws = await session.ws_connect(f"{b}/rooms/hall/ws?since=0")
        poll = asyncio.create_task(get_json(session, f"{third}/rooms/hall/messages?since=0&wait=10"))
        await asyncio.sleep(0.3 * UNIT)  # the poll is held, both subscriptions live
        sent = await post(session, a, "hall", "ann", "across instances")
        frame = await ws.receive_json(timeout=5 * UNIT)
        assert frame == {"type": "message", **sent}
        page = await asyncio.wait_for(poll, 5 * UNIT)
        assert page["messages"] == [sent] and page["last_id"] == 1
        # Ids are allocated in Redis: the next post, on another instance, is 2; every instance has the history.
        assert (await post(session, third, "hall", "bob", "next"))["id"] == 2
        assert [m["id"] for m in (await get_json(session, f"{b}/rooms/hall/history"))["messages"]] == [1, 2]
        assert (await ws.receive_json(timeout=5 * UNIT))["id"] == 2
        await ws.close()


async def test_an_event_stream_resumes_through_the_balancer_after_a_drain_with_last_event_id(cluster):
    c = cluster("sse", 2, "pubsub")
    async with aiohttp.ClientSession() as session:
        # Round robin: two streams opened one after the other land on the two instances.
        members = [EventStreamReceiver(session, c.url, "flow") for _ in range(2)]
        streams = [await session.get(f"{c.url}/rooms/flow/events?since=0") for _ in members]
        readers = [asyncio.create_task(m.read_events(s)) for m, s in zip(members, streams)]
        for n in range(2):
            await post(session, c.url, "flow", "ann", f"before {n}")
        for member in members:
            await member.wait_for(2)
        c.drain(0)
        done, _ = await asyncio.wait(readers, timeout=5 * UNIT, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1  # the stream on server-1 ended; the other goes on
        ended = members[readers.index(done.pop())]
        await post(session, c.url, "flow", "bob", "while it was away")
        # As EventSource does: the same URL again, through the balancer, with the last id it saw.
        resumed = EventStreamReceiver(session, c.url, "flow")
        async with session.get(f"{c.url}/rooms/flow/events?since=0",
                               headers={"Last-Event-ID": ended.last_event_id}) as again:
            assert again.status == 200
            task = asyncio.create_task(resumed.read_events(again))
            await resumed.wait_for(1)
            task.cancel()
        assert ended.ids() == [1, 2] and resumed.ids() == [3]  # nothing lost, nothing twice
        for stream, reader in zip(streams, readers):
            reader.cancel()
            stream.close()


# A WebTransport member's session goes straight to an instance's UDP port (the balancer only routes the HTTP GET
# that names it); this script joins members through the balancer, says which instance each session is on, waits
# for the test to drain one, then checks every member goes on.
DRAINED_MEMBERS_SCRIPT = r"""
from gevent import monkey

monkey.patch_all()

import json, sys, time
from collections import Counter
import gevent
from clients.webtransport import WebTransportClient

url, ports = sys.argv[1], json.loads(sys.argv[2])
reports, failures, members = Counter(), [], []

def report(request_type, name, response_time_ms, response_length, exception=None):
    reports[request_type] += 1
    if exception is not None:
        failures.append(f"{request_type}: {exception}")

def instance_of(client):  # None: no session (not reconnected)
    conn = client._conn
    return None if conn is None else ports.index(conn._transport.get_extra_info("peername")[1])

def wait_for(condition, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        gevent.sleep(0.02)
    return condition()

on = {}
while len(on) < 2 and len(members) < 6:  # round robin: the first two usually land on both instances
    ids = []
    client = WebTransportClient(url, lambda message, received_at, ids=ids: ids.append(message["id"]), report)
    client.join("drained", 0)
    members.append((client, ids))
    on.setdefault(instance_of(client), len(members) - 1)
print(json.dumps({"on": on}), flush=True)
sys.stdin.readline()  # the test drained one instance
for n, (client, _) in enumerate(members):
    client.send(f"m{n}", f"after the drain {n}", sent_at=time.time())
wait_for(lambda: all(len(ids) >= len(members) for _, ids in members))
out = {"ids": [sorted(ids) for _, ids in members], "instances": [instance_of(c) for c, _ in members],
       "reports": dict(reports), "failures": failures}
for client, _ in members:
    client.close()
print(json.dumps(out))
"""


def test_a_drained_webtransport_member_asks_the_balancer_again_and_resumes_on_another_instance(cluster):
    c = cluster("webtransport", 2, "pubsub")
    ports = [http_json("GET", f"{i.url}/rooms/drained/webtransport", 5 * UNIT)[1]["port"] for i in c.instances]
    script = subprocess.Popen([sys.executable, "-c", DRAINED_MEMBERS_SCRIPT, c.url, json.dumps(ports)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        on = json.loads(script.stdout.readline() or "{}").get("on")
        assert on is not None, script.stderr.read() if script.poll() is not None else "no answer"
        assert set(on) == {"0", "1"}, on  # a session on each instance
        drained = c.drain(0)
        assert drained["webtransport_sessions_closed"] >= 1, drained
        out, err = script.communicate("drained\n", timeout=30 * UNIT)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait()
    assert script.returncode == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    # Every member is on the instance still in the rotation, has every message since it joined, once, and the
    # drain was no failure: the member closed with 1012 asked the balancer where to go, not the drained instance.
    assert set(seen["instances"]) == {1}, seen
    members = len(seen["ids"])
    assert all(ids == list(range(1, members + 1)) for ids in seen["ids"]), seen
    assert seen["failures"] == [] and seen["reports"]["RECONNECT"] == drained["webtransport_sessions_closed"], seen


async def test_sticky_routing_keeps_each_room_on_one_instance(cluster):
    c = cluster("all", 3, "sticky")
    rooms = [f"room-{i}" for i in range(8)]
    async with aiohttp.ClientSession() as session:
        members = {room: [await session.ws_connect(f"{c.url}/rooms/{room}/ws?since=0") for _ in range(2)]
                   for room in rooms}
        for room in rooms:
            for n in range(3):
                await post(session, c.url, room, "ann", f"{room} {n}")  # through HAProxy, hashed like the sockets
        for room, sockets in members.items():
            for ws in sockets:
                assert [(await ws.receive_json(timeout=5 * UNIT))["id"] for _ in range(3)] == [1, 2, 3]
                await ws.close()
        # Memory broker: each room exists on exactly one instance, and the rooms are spread over instances.
        homes = {}
        for room in rooms:
            holding = [i.name for i in c.instances
                       if (await get_json(session, f"{i.url}/rooms/{room}/history"))["messages"]]
            assert len(holding) == 1, (room, holding)
            homes[room] = holding[0]
        assert len(set(homes.values())) > 1


async def test_naive_round_robin_splits_a_room_over_instances_that_do_not_talk(cluster):
    c = cluster("websocket", 3, "naive")
    async with aiohttp.ClientSession() as session:
        sockets = [await session.ws_connect(f"{c.url}/rooms/lobby/ws?since=0") for _ in range(3)]  # one per instance
        for n, ws in enumerate(sockets):
            await ws.send_json({"type": "send", "user": f"member-{n}", "text": "hello, anyone?"})
        for n, ws in enumerate(sockets):
            frame = await ws.receive_json(timeout=5 * UNIT)
            assert (frame["user"], frame["id"]) == (f"member-{n}", 1)  # its own instance's id 1: no gap to see
            with pytest.raises(asyncio.TimeoutError):
                await ws.receive_json(timeout=0.5 * UNIT)  # the other two members' messages never come
            await ws.close()


def test_the_generated_haproxy_config_hashes_rooms_or_round_robins():
    sticky = haproxy_config(8000, 8001, [("server-1", 9001), ("server-2", 9002)], "uri", maxconn=1000)
    assert "balance uri depth 2\n    hash-type consistent" in sticky
    assert "server server-2 127.0.0.1:9002 check" in sticky and "option httpchk GET /healthz" in sticky
    assert "bind 127.0.0.1:8000" in sticky and "stats socket ipv4@127.0.0.1:8001 level admin" in sticky
    assert "timeout tunnel 1h" in sticky and "timeout server 65s" in sticky
    assert "deny deny_status 403 if { path_beg /admin/ }" in sticky
    assert "balance roundrobin" in haproxy_config(8000, 8001, [("server-1", 9001)], "roundrobin", maxconn=1000)
    with pytest.raises(ValueError):
        haproxy_config(8000, 8001, [], "leastconn")


def test_the_haproxy_config_in_the_docs_is_what_the_code_writes():
    import re

    (documented,) = re.findall(r"```haproxy\n(.*?)```", (ROOT / "docs" / "scaling.md").read_text(), re.S)
    assert documented == haproxy_config(8080, 9999, [("server-1", 8081), ("server-2", 8082)], "uri", maxconn=10000)


def test_the_balancer_refuses_the_admin_routes_and_passes_the_origin_check_through(cluster):
    import urllib.error
    import urllib.request

    c = cluster("websocket", 1, "sticky")
    assert http_json("POST", f"{c.url}/admin/drain", 5 * UNIT)[0] == 403
    assert c.states() == {"server-1": "UP"}

    def status(origin: str) -> int:
        request = urllib.request.Request(f"{c.url}/rooms/r/history", headers={"Origin": origin})
        try:
            with urllib.request.urlopen(request, timeout=5 * UNIT) as resp:
                return resp.status
        except urllib.error.HTTPError as error:
            return error.code

    # HAProxy passes the browser's Host on: a page served through the balancer is the instances' own origin.
    assert status(c.url) == 200
    assert status("http://evil.example") == 403


# ---- Locust scenarios: the same load, a fault in the middle ----------------------------------------------------------


@dataclass
class Scenario:
    name: str
    out: Path
    proc: Process | None = None
    extra: list[Process] = field(default_factory=list)  # Locust workers
    cluster: Cluster | None = None
    server: ServerProcess | None = None
    fault: Callable[[Cluster], dict] | None = None
    event: dict | None = None
    fault_error: BaseException | None = None
    returncode: int | None = None
    output: str = ""
    health: dict = field(default_factory=dict)  # each live instance's /healthz after the run
    url: str = ""  # the plain server's, when there is no cluster

    def completeness(self) -> dict:
        return json.loads((self.out / "completeness.json").read_text())

    def transport(self, name: str) -> dict:
        return self.completeness()["transports"][name]

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        with open(self.out / "locust_stats.csv", newline="") as file:
            return {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}

    def count(self, kind: str, name: str, column: str = "Request Count") -> int:
        row = self.stats().get((kind, name))
        return int(row[column]) if row else 0


def locust_command(host: str, profile: Path, out: Path, classes: list[str], *extra: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--only-summary", "--host", host,
            "--rtlab-profile", str(profile), "--rtlab-out", str(out), "--csv", str(out / "locust"), *extra, *classes]


def spawn(command: list[str], log: Path) -> Process:
    return Process(log.stem, command, log).start()


def inject_fault(scenario: Scenario) -> None:
    """Wait until Locust has opened the measured window, then FAULT_AFTER_S more, then run the scenario's fault. (A
    fixed time after the test's start is not enough: on a busy machine the members join late and the window opens at
    its join deadline, after a fault that then falls in the warm-up, where its reconnects are not counted.)"""
    marker = scenario.out / MEASURING_MARKER
    deadline = time.monotonic() + 30 * UNIT
    try:
        while not marker.exists():
            if time.monotonic() > deadline or not scenario.proc.alive:
                raise RuntimeError(f"{scenario.name}: Locust did not open the measured window")
            time.sleep(0.05)
        time.sleep(FAULT_AFTER_S)
        scenario.event = scenario.fault(scenario.cluster)
    except BaseException as error:  # reported by the tests that need the fault
        scenario.fault_error = error


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict[str, Scenario]:
    """Start every scenario at once, inject the faults mid-run, wait for every Locust to finish."""
    haproxy = require_binary("haproxy")
    redis = require_binary("redis-server")
    base = tmp_path_factory.mktemp("scaling")
    profile = base / "profile.toml"
    profile.write_text(PROFILE)
    both = [registry.get(t).member_class for t in TRANSPORTS]  # every transport, beside one another
    plan = {
        # name: (cluster transport, instances, mode, Locust user classes, fault)
        "drain": ("all", 2, "pubsub", both, lambda c: c.drain(0)),
        "kill": ("all", 3, "pubsub", both, lambda c: c.kill(0)),
        "redis-restart": ("all", 2, "pubsub", both, lambda c: c.restart_redis(down_s=0.5 * UNIT)),
        "sticky": ("all", 3, "sticky", both, None),
        "naive": ("websocket", 3, "naive", ["WebSocketMember"], None),
    }
    runs: dict[str, Scenario] = {}
    threads = []
    try:
        for name, (transport, instances, mode, classes, fault) in plan.items():
            scenario = runs[name] = Scenario(name, base / name, fault=fault)
            scenario.out.mkdir()
            scenario.cluster = Cluster(transport, instances, mode, scenario.out / "cluster", redis_binary=redis,
                                       haproxy_binary=haproxy, startup_timeout_s=30 * UNIT).start()
            scenario.proc = spawn(locust_command(scenario.cluster.url, profile, scenario.out, classes),
                                  scenario.out / "output.log")
            if fault is not None:
                threads.append(threading.Thread(target=inject_fault, args=(scenario,), daemon=True))
                threads[-1].start()

        # Locust's distributed mode on one machine, against one plain server: --processes, then master + workers.
        processes = runs["processes"] = Scenario("processes", base / "processes")
        processes.out.mkdir()
        processes.server = start_server(["--transport", "websocket"], processes.out / "server.log", timeout_s=20 * UNIT)
        url = processes.server.url
        processes.proc = spawn(locust_command(url, profile, processes.out, ["WebSocketMember"], "--processes", "2"),
                               processes.out / "output.log")
        workers = runs["master-worker"] = Scenario("master-worker", base / "master-worker")
        workers.out.mkdir()
        workers.server = start_server(["--transport", "long-polling"], workers.out / "server.log", timeout_s=20 * UNIT)
        workers.url = workers.server.url
        url = workers.url
        port = free_port()
        # --rtlab-local-rooms: rooms of each worker's own, as generators on separate machines need so that
        # latencies read one clock (the master passes its custom options on to the workers).
        workers.proc = spawn(locust_command(url, profile, workers.out, ["LongPollingMember"], "--master",
                                            "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
                                            "--expect-workers", "2", "--rtlab-local-rooms"), workers.out / "output.log")
        for n in range(2):
            # A worker loads the profile when it starts, from its own --rtlab-profile (or RTLAB_PROFILE).
            workers.extra.append(spawn(
                [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker", "--master-host", "127.0.0.1",
                 "--master-port", str(port), "--rtlab-profile", str(profile), "LongPollingMember"],
                workers.out / f"worker-{n}.log"))

        deadline = time.monotonic() + 90 * UNIT
        for scenario in runs.values():
            scenario.returncode = scenario.proc.wait(max(1.0, deadline - time.monotonic()))
            if scenario.returncode is None:
                scenario.returncode = scenario.proc.stop()
            scenario.output = (scenario.out / "output.log").read_text()
        for thread in threads:
            thread.join(10 * UNIT)
        for scenario in runs.values():  # what the instances say about Redis, before they stop
            if scenario.cluster is not None:
                scenario.health = {i.name: _health(i.url) for i in scenario.cluster.instances if i.process.alive}
        yield runs
    finally:
        for scenario in runs.values():
            for process in [scenario.proc, scenario.server, *scenario.extra]:
                if process is not None:
                    process.stop()
            if scenario.cluster is not None:
                scenario.cluster.stop()


def _health(url: str) -> dict:
    return http_json("GET", f"{url}/healthz", 5 * UNIT)[1]  # a drained instance answers 503, with the same body


def assert_nothing_lost(scenario: Scenario, transport: str) -> dict:
    c = scenario.transport(transport)
    assert c["receivers"] > 0 and c["received"] > 0, scenario.output
    assert (c["lost"], c["duplicates"]) == (0, 0), (transport, c, scenario.output)
    # A transport that does not keep order (a QUIC stream per message, an unordered channel) may deliver a later id
    # first: not a loss, and its contract; one that keeps order may not.
    assert c["out_of_order"] == 0 or not registry.get(transport).ordered, (transport, c, scenario.output)
    assert c["ledger_expected"] > 0 and c["ledger_missing"] == 0, (transport, c)
    assert scenario.count("LOST", transport) == 0 and scenario.count("DUPLICATE", transport) == 0
    return c


def test_a_drain_loses_nothing_and_members_reconnect_through_the_balancer(scenarios):
    drain = scenarios["drain"]
    assert drain.fault_error is None, drain.fault_error
    # Round robin puts some of every transport's members on the drained instance (each reconnect is checked
    # below; tests of their own drain one event stream and one socket there deterministically).
    closed = [drain.event.get(what, 0) for what in ("websockets_closed", "polls_released", "streams_closed")]
    assert sum(closed) >= 2, drain.event
    for transport in TRANSPORTS:
        assert_nothing_lost(drain, transport)
    ws, sse = drain.transport("websocket"), drain.transport("sse")
    # Every member closed with 1012, every stream ended, came back, timed; and a drain is not a failure.
    assert ws["reconnects"] >= drain.event["websockets_closed"] and ws["reconnect_failures"] == 0
    assert sse["reconnects"] >= drain.event["streams_closed"] and sse["reconnect_failures"] == 0
    if drain.event["websockets_closed"]:  # round robin may have put no WebSocket member on the drained instance
        assert 0 < ws["reconnect_ms"]["max"] < 5000 * UNIT
    assert drain.count("RECONNECT", "websocket") == ws["reconnects"]
    assert drain.count("", "Aggregated", "Failure Count") == 0, drain.output
    assert drain.returncode == 0
    assert drain.cluster.states()["server-1"].startswith(("DRAIN", "MAINT", "DOWN")), drain.cluster.states()


def test_a_killed_instance_loses_no_message_with_history_in_redis(scenarios):
    kill = scenarios["kill"]
    assert kill.fault_error is None, kill.fault_error
    for transport in TRANSPORTS:
        assert_nothing_lost(kill, transport)
    reconnects = sum(kill.transport(t)["reconnects"] for t in TRANSPORTS)
    assert reconnects >= 1  # the members of the killed instance came back through HAProxy
    assert kill.transport("websocket")["reconnect_failures"] == 0
    assert not kill.cluster.instances[0].process.alive


def test_a_redis_restart_is_survived_gap_free(scenarios):
    restart = scenarios["redis-restart"]
    assert restart.fault_error is None, restart.fault_error
    assert restart.event["outage_s"] >= 0.5 * UNIT
    for transport in TRANSPORTS:  # pushed members caught up from history, in order
        assert_nothing_lost(restart, transport)
    for name, health in restart.health.items():
        assert health["redis"]["connected"] and health["redis"]["reconnects"] == 1, (name, health)


def test_sticky_routing_loses_nothing(scenarios):
    sticky = scenarios["sticky"]
    for transport in TRANSPORTS:
        assert_nothing_lost(sticky, transport)
    assert sticky.returncode == 0, sticky.output


def test_naive_routing_loses_what_crosses_instances_and_the_ledger_says_so(scenarios):
    naive = scenarios["naive"]
    c = naive.transport("websocket")
    # Each instance numbers the room on its own: ids look contiguous, the senders' ledger does not.
    assert c["ledger_missing"] > c["ledger_expected"] / 3, c
    assert naive.count("LOST", "websocket (never arrived)", "Failure Count") == c["ledger_missing"]
    assert "INCOMPLETE" in naive.output and naive.returncode == 1


@pytest.mark.parametrize("name, transport", [("processes", "websocket"), ("master-worker", "long-polling")])
def test_locust_distributed_mode_merges_the_workers_results(scenarios, name, transport):
    run = scenarios[name]
    assert run.returncode == 0, run.output
    doc = run.completeness()
    assert doc["processes"] == 2
    c = assert_nothing_lost(run, transport)
    assert c["receivers"] == 24
    deliver = run.count("DELIVER", transport)
    assert deliver > 0 and c["deliveries_measured"] == deliver  # the master's CSV and the merged histogram agree
    names = json.loads((run.out / "generator.json").read_text())["cpu_samples_by_process"]
    assert len(names) == 2
    if name == "master-worker":  # --rtlab-local-rooms: each room's members all on one worker
        for worker in (0, 1):
            status, history = http_json("GET", f"{run.url}/rooms/w{worker}-room-0/history?limit=1000", 5 * UNIT)
            users = {m["user"] for m in history["messages"]}
            assert users and all(u.startswith(f"member-w{worker}-") for u in users), users


def test_instances_leave_and_rejoin_the_rotation_and_the_drain_cli_works(cluster):
    c = cluster("websocket", 2, "pubsub")
    c.kill(1)
    deadline = time.monotonic() + 5 * UNIT
    while not c.states()["server-2"].startswith("DOWN"):  # the health check noticed
        assert time.monotonic() < deadline, c.states()
        time.sleep(0.05)
    assert set(c.pids()) == {"server-1", "redis", "haproxy"}
    c.restart_instance(1)
    assert c.states()["server-2"].startswith("UP") and "server-2" in c.pids()
    assert [e["event"] for e in c.events] == ["kill", "restart_instance"]
    # `python -m experiments drain`, with HAProxy's runtime API: out of rotation at once, then drained.
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.cluster", "drain", "--url", c.instances[0].url,
         "--haproxy-admin", f"127.0.0.1:{c.haproxy.admin_port}", "--server", "server-1"],
        capture_output=True, text=True, timeout=30 * UNIT, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "drained"
    assert c.states()["server-1"].startswith(("DRAIN", "DOWN")), c.states()
    assert http_json("GET", f"{c.url}/healthz", 5 * UNIT)[1]["instance"] == "server-2"
