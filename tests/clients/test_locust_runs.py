"""Headless Locust runs against real servers: DELIVER measured, nothing lost, the HDR file agrees with Locust.

The runs are subprocesses (Locust monkey-patches with gevent, which must not happen in pytest's process),
and they run at the same time, so the whole module costs about one run: ~10 s.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, TRANSPORTS, UNIT
from helpers.processes import dropping_server

from clients.results import read_histogram
from experiments.supervisor import Process
from servers import registry

# Small enough for a CI machine, big enough that rooms have several members: 10 members in 2 rooms.
SMALL_PROFILE = """\
users = 10
spawn_rate = 10
rooms = 2
messages_per_second = 1.0
message_bytes = 50
arrival = "poisson"
poll_interval_s = 0.2
long_poll_wait_s = 5.0
duration_s = 8
warmup_s = 1
"""

# One member in one room: every id in the room is its own, so one dropped id is one lost message.
ONE_MEMBER_PROFILE = """\
users = 1
spawn_rate = 1
rooms = 1
messages_per_second = 5.0
message_bytes = 20
arrival = "fixed"
poll_interval_s = 0.1
long_poll_wait_s = 5.0
duration_s = 3
warmup_s = 0
"""

# Members that spawn slower than the join deadline: one every 2 s, and the window may wait 1 s at most.
LATE_PROFILE = """\
users = 3
spawn_rate = 0.5
rooms = 1
messages_per_second = 1.0
message_bytes = 20
arrival = "fixed"
long_poll_wait_s = 5.0
duration_s = 6
warmup_s = 0.5
join_deadline_s = 1.0
"""


@dataclass
class Run:
    out: Path
    returncode: int
    output: str

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        with open(self.out / "locust_stats.csv", newline="") as file:
            return {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}

    def completeness(self, transport: str) -> dict:
        return json.loads((self.out / "completeness.json").read_text())["transports"][transport]


def start(command: list[str], out: Path, env: dict[str, str] | None = None) -> tuple[Process, Path]:
    out.mkdir(parents=True)
    log = out / "output.log"
    return Process(out.name, command, log, env=env).start(), log


def finish(process: Process, log: Path, out: Path, timeout_s: float) -> Run:
    code = process.wait(timeout_s)
    if code is None:
        code = process.stop()
    return Run(out, code, log.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Run, all at once: a headless run per transport through `python -m clients --serve`, one against a
    server that drops id 3, and one plain `locust -f` run configured only by RTLAB_PROFILE / RTLAB_OUT."""
    base = tmp_path_factory.mktemp("locust")
    small = base / "small.toml"
    small.write_text(SMALL_PROFILE)
    one = base / "one.toml"
    one.write_text(ONE_MEMBER_PROFILE)
    started = {}
    for transport in TRANSPORTS:
        out = base / transport
        started[transport] = start(
            [sys.executable, "-m", "clients", "--transport", transport, "--serve", "--profile", str(small),
             "--headless", "--out", str(out)],
            out,
        )
    dropping = dropping_server("websocket", base / "dropping-server.log", 15 * UNIT, drop_id=3)
    started["dropping"] = start(
        [sys.executable, "-m", "clients", "--transport", "websocket", "--host", dropping.url, "--profile", str(one),
         "--headless", "--out", str(base / "dropping")],
        base / "dropping",
    )
    plain_server = dropping_server("long-polling", base / "plain-server.log", 15 * UNIT, drop_id=0)  # drops nothing
    late = base / "late.toml"
    late.write_text(LATE_PROFILE)
    started["late"] = start(
        [sys.executable, "-m", "clients", "--transport", "long-polling", "--host", plain_server.url, "--profile",
         str(late), "--headless", "--out", str(base / "late")],
        base / "late",
    )
    env = os.environ | {"RTLAB_PROFILE": str(one), "RTLAB_OUT": str(base / "plain")}
    started["plain"] = start(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "clients" / "locustfile.py"), "--headless",
         "--only-summary", "--host", plain_server.url, "LongPollingMember"],
        base / "plain",
        env,
    )
    deadline = time.monotonic() + 60 * UNIT
    try:
        return {
            name: finish(proc, log, log.parent, max(1.0, deadline - time.monotonic()))
            for name, (proc, log) in started.items()
        }
    finally:
        dropping.stop()
        plain_server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_run_delivers_and_loses_nothing(runs, transport):
    run = runs[transport]
    assert run.returncode == 0, run.output
    stats = run.stats()
    deliver = stats[("DELIVER", transport)]
    assert int(deliver["Request Count"]) > 0
    assert int(stats[("", "Aggregated")]["Failure Count"]) == 0
    assert int(stats[("SEND", transport)]["Request Count"]) > 0
    completeness = run.completeness(transport)
    assert completeness["receivers"] == 10
    assert completeness["lost"] == 0
    assert completeness["duplicates"] == 0
    assert completeness["out_of_order"] == 0 or not registry.get(transport).ordered  # a later id first: its contract
    assert completeness["received"] > 0
    assert f"rtlab {transport}: completeness over 10 receivers" in run.output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_hdr_histogram_counts_what_locust_counts(runs, transport):
    run = runs[transport]
    histogram = read_histogram(run.out / f"deliver_latency_{transport}.hdr")
    stats = run.stats()
    assert histogram.get_total_count() == int(stats[("DELIVER", transport)]["Request Count"])
    # Warm-up deliveries are reported under their own name and kept out of the histogram.
    warmup = stats.get(("DELIVER", f"{transport} [warm-up]"))
    assert run.completeness(transport)["deliveries_warmup"] == (int(warmup["Request Count"]) if warmup else 0)
    # Microsecond resolution: sub-millisecond differences survive, which Locust's own stats round away.
    assert histogram.get_max_value() < 60_000_000  # a minute, in µs: nothing absurd
    assert (run.out / f"deliver_latency_{transport}.hgrm").read_text().startswith("       Value")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_window_opens_once_every_member_joined(runs, transport):
    run = runs[transport]
    started = json.loads((run.out / "started.json").read_text())
    opened = json.loads((run.out / "measuring.json").read_text())
    if opened["opened_by"] == "every member joined":
        assert (opened["members"], opened["joined"], opened["members_joined_late"]) == (10, 10, 0)
        assert opened["t_unix_s"] >= started["t_unix_s"] + 1  # warmup_s
    else:  # a machine so loaded that WebRTC's handshakes took seconds: then at the deadline, and said so
        assert opened["opened_by"] == "join deadline" and transport.startswith("webrtc"), opened
        assert opened["joined"] + opened["members_joined_late"] == 10 and opened["members_joined_late"] > 0
        assert opened["t_unix_s"] - started["t_unix_s"] == pytest.approx(4.5, abs=0.5)  # halfway from 1 s to 8 s
    assert opened["t_mono_s"] - started["t_mono_s"] == pytest.approx(opened["t_unix_s"] - started["t_unix_s"], abs=0.1)
    window = json.loads((run.out / "completeness.json").read_text())["window"]
    assert window["measure_from_unix_s"] == opened["t_unix_s"] and 0 < window["measured_s"] < 8
    # Connection set-up, every member's: to joined, and (10 members, 1 msg/s) to a first message.
    setup = run.completeness(transport)
    assert setup["join_ms"]["count"] == setup["first_message_ms"]["count"] == 10
    assert 0 < setup["join_ms"]["p50"] <= setup["join_ms"]["p99"] <= setup["first_message_ms"]["max"]
    generator = json.loads((run.out / "generator.json").read_text())
    assert 0 < generator["send_lag_measured"] <= generator["sends"]
    assert generator["sends_behind_schedule"] == (generator["send_lag_p99_ms"] > generator["send_lag_limit_ms"])


def test_members_still_connecting_at_the_join_deadline_are_counted_and_flagged(runs):
    run = runs["late"]
    assert run.returncode == 0, run.output
    started = json.loads((run.out / "started.json").read_text())
    opened = json.loads((run.out / "measuring.json").read_text())
    assert opened["opened_by"] == "join deadline"
    assert opened["members"] == 3 and 1 <= opened["joined"] < 3
    assert opened["members_joined_late"] == 3 - opened["joined"]
    assert opened["t_unix_s"] - started["t_unix_s"] == pytest.approx(1.0, abs=0.5)  # the deadline, not warmup_s
    assert "still connecting: flagged" in run.output
    assert run.completeness("long-polling")["join_ms"]["count"] == 3  # the late ones joined afterwards


def test_polls_are_counted_and_empty_polls_separately(runs):
    short = runs["short-polling"].stats()
    assert int(short[("POLL", "short-polling")]["Request Count"]) > 0
    assert int(short[("POLL", "short-polling (empty)")]["Request Count"]) > 0
    long = runs["long-polling"].stats()
    assert int(long[("POLL", "long-polling")]["Request Count"]) > 0


def test_the_generator_records_its_cpu(runs):
    for transport in TRANSPORTS:
        generator = json.loads((runs[transport].out / "generator.json").read_text())
        assert generator["seconds_judged"] >= 3, (transport, generator)
        assert generator["sends"] > 0
        assert isinstance(generator["saturated"], bool)
        assert ("SATURATED" in runs[transport].output) == generator["saturated"]


def test_a_server_that_drops_one_message_is_reported_as_one_lost(runs):
    run = runs["dropping"]
    assert run.completeness("websocket")["lost"] == 1
    assert run.completeness("websocket")["duplicates"] == 0
    stats = run.stats()
    assert int(stats[("LOST", "websocket")]["Failure Count"]) == 1
    assert run.returncode == 1  # Locust's exit code on any failure
    assert "lost 1, duplicates 0" in run.output and "INCOMPLETE" in run.output


def test_plain_locust_takes_its_options_from_the_profile_in_the_environment(runs):
    run = runs["plain"]
    assert run.returncode == 0, run.output
    completeness = json.loads((run.out / "completeness.json").read_text())
    assert completeness["profile"]["users"] == 1
    assert completeness["transports"]["long-polling"]["receivers"] == 1
    assert completeness["transports"]["long-polling"]["lost"] == 0
    assert "Run time limit set to 3 seconds" in run.output
