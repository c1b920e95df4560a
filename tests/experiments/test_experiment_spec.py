"""Experiment files: every shipped file loads; every kind of bad file is refused naming file and key."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import ROOT

from experiments.spec import CPU_KEYS, TOP_KEYS, SpecError, load_experiment, server_keys

GOOD = """
name = "tiny"
description = "a test"
transports = ["short-polling", "websocket"]
repeats = 2

[profile]
users = 4
spawn_rate = 4
rooms = 2
messages_per_second = 1.0
message_bytes = 20
arrival = "fixed"
poll_interval_s = 0.5
long_poll_wait_s = 5
duration_s = 10
warmup_s = 2

[sweep]
users = [4, 8]
"""


def write(tmp_path, text: str) -> pathlib.Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_experiments_load(path):
    experiment = load_experiment(path)
    assert experiment.points()
    assert experiment.name == path.stem


def test_points_cover_sweep_repeats_and_transports(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD))
    points = experiment.points()
    assert len(points) == 2 * 2 * 2
    assert {(p.swept["users"], p.repeat, p.transport) for p in points} == {
        (u, r, t) for u in (4, 8) for r in (1, 2) for t in ("short-polling", "websocket")
    }
    assert all(p.profile.users == p.swept["users"] for p in points)
    assert len({p.slug for p in points}) == len(points)


def test_room_size_makes_the_rooms_follow_the_members_and_auto_processes_wait_for_the_runner(tmp_path):
    text = GOOD.replace("users = [4, 8]", "users = [20, 45]").replace("users = 4\n", "users = 4\nroom_size = 10\n")
    text = text.replace("repeats = 2", 'repeats = 1\nprocesses = "auto"\nstop_at_limit = true')
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.processes == 0 and experiment.stop_at_limit  # 0: the runner gives one per generator CPU
    rooms = {p.swept["users"]: p.profile.rooms for p in experiment.points()}
    assert rooms == {20: 2, 45: 5}
    assert {p.swept["users"]: p.profile.offered_deliveries_per_s() for p in experiment.points()} == {
        20: 2 * 10 * 9 * 1.0, 45: 5 * 9 * 8 * 1.0}
    two_loads = text.replace("users = [20, 45]", "users = [20, 45]\nmessage_bytes = [20, 40]")
    with pytest.raises(SpecError, match="stop_at_limit"):  # which load would it stop?
        load_experiment(write(tmp_path, two_loads))


def test_quick_shortens_durations(tmp_path):
    quick = load_experiment(write(tmp_path, GOOD.replace("duration_s = 10", "duration_s = 600"))).quick()
    assert quick.profile.duration_s <= 8 and quick.profile.warmup_s < quick.profile.duration_s


@pytest.mark.parametrize(
    "change, key",
    [
        (("repeats = 2", "repeats = 2\ncolour = 'red'"), "colour"),
        (('name = "tiny"', 'name = "no spaces allowed"'), "name"),
        (('name = "tiny"\n', ""), "name"),
        (('transports = ["short-polling", "websocket"]', 'transports = ["smoke-signals"]'), "transports"),
        (('transports = ["short-polling", "websocket"]', "transports = []"), "transports"),
        (('transports = ["short-polling", "websocket"]', 'transports = ["websocket", "websocket"]'), "transports"),
        (("repeats = 2", "repeats = 0"), "repeats"),
        (("repeats = 2", 'repeats = "two"'), "repeats"),
        (("users = 4\n", "users = -4\n"), "users"),
        (("users = 4\n", 'users = "many"\n'), "users"),
        (("users = 4\n", "users = 4\nfriends = 3\n"), "friends"),
        (('arrival = "fixed"', 'arrival = "bursty"'), "arrival"),
        (("warmup_s = 2", "warmup_s = 20"), "warmup_s"),
        (("spawn_rate = 4", ""), "spawn_rate"),
        (("users = [4, 8]", "users = []"), "sweep.users"),
        (("users = [4, 8]", "users = 4"), "sweep.users"),
        (("users = [4, 8]", "users = [4, 1]"), "sweep.users"),  # 1 user cannot fill 2 rooms
        (("users = [4, 8]", "volume = [1, 2]"), "sweep.volume"),
        (("[sweep]", "[server]\nws_compress = 'yes'\n[sweep]"), "server.ws_compress"),
        (("[sweep]", "[server]\nthreads = 4\n[sweep]"), "server.threads"),
        (("[sweep]", "[server]\nport = 9000\n[sweep]"), "server.port"),  # the runner's, not the file's
        (("[sweep]", "[server]\nrequest_head_timeout_s = 60\n[sweep]"), "server.request_head_timeout_s"),
        (("[sweep]", "[server]\nallow_origins = 'http://x'\n[sweep]"), "server.allow_origins"),
        (("[profile]", "[profile]\n[profile]"), "not valid TOML"),
        (("repeats = 2", 'repeats = 2\nprocesses = "many"'), "processes"),
        (("repeats = 2", 'repeats = 2\nstop_at_limit = "yes"'), "stop_at_limit"),
        (("users = 4\n", "users = 4\nroom_size = -1\n"), "room_size"),
        (("[sweep]", "[server]\ncpu_limit = -0.5\n[sweep]"), "server.cpu_limit"),
        (("[sweep]", "[server]\ncpu_limit = 0.04\n[sweep]"), "server.cpu_limit"),  # under 1 ms of a 20 ms period
        (("[sweep]", "[server]\ncpu_limit = '500m'\n[sweep]"), "server.cpu_limit"),
        (("[sweep]", "[server]\ncpu_limit = 0.5\ncpu_period_ms = 2000\n[sweep]"), "server.cpu_period_ms"),
        (("users = [4, 8]", "users = [4, 8]\ncpu_limit = [0.5, true]"), "sweep.cpu_limit"),
        (("repeats = 2", "repeats = 2\nlight_load = 4"), "light_load"),  # no CPU limit to compare with
        (("repeats = 2", "repeats = 2\nlight_load = 6\n[server]\ncpu_limit = 0.5"), "light_load"),  # not a swept load
        (("[sweep]", "[cluster]\ninstances = [1]\nmodes = ['sticky']\n[server]\ncpu_limit = 0.5\n[sweep]"),
         "server.cpu_limit"),
    ],
)
def test_bad_files_name_the_key(tmp_path, change, key):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(SpecError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and key in str(error.value)


def test_set_changes_keys_of_the_file_for_one_run_and_says_which(tmp_path):
    experiment = load_experiment(write(tmp_path, GOOD), [
        "profile.duration_s=600", "profile.arrival=poisson", "server.history=200", "sweep.users=[4]",
        'transports = ["websocket"]'])
    assert (experiment.profile.duration_s, experiment.profile.arrival) == (600, "poisson")
    assert experiment.server == {"history": 200}  # a table the file lacks is made
    assert experiment.transports == ("websocket",) and len(experiment.points()) == 2  # 1 user count x 2 repeats
    assert experiment.as_dict()["overrides"] == experiment.quick().as_dict()["overrides"] == {
        "profile.duration_s": 600, "profile.arrival": "poisson", "server.history": 200, "sweep.users": [4],
        "transports": ["websocket"]}
    assert load_experiment(write(tmp_path, GOOD)).as_dict()["overrides"] == {}


@pytest.mark.parametrize("assignment, named", [
    ("profile.duration_s", "KEY=VALUE"),
    ("colour=red", "colour"),
    ("name.first=x", "name is a value"),
    ("profile.duration_s=-5", "duration_s"),  # checked as the file is
    ("profile.volume=3", "volume"),
    ("server.ws_compress=maybe", "server.ws_compress"),
    ("profile..users=3", "KEY=VALUE"),
])
def test_a_bad_set_is_refused_naming_the_key(tmp_path, assignment, named):
    with pytest.raises(SpecError, match=re.escape(named)):
        load_experiment(write(tmp_path, GOOD), [assignment])


def test_every_key_of_an_experiment_file_is_documented_with_its_default():
    doc = (ROOT / "docs" / "experiments.md").read_text()
    rows = dict(re.findall(r"(?m)^\| `([a-z_]+)` \| (.+?) \|", doc))
    assert set(TOP_KEYS) <= set(rows), set(TOP_KEYS) - set(rows)
    for name, knob in server_keys().items():
        default = list(knob.default) if isinstance(knob.default, tuple) else knob.default
        assert rows.get(name) == f"`{json.dumps(default)}`", name
    assert all(f"`{key}`" in doc for key in CPU_KEYS)


def test_cli_exits_2_before_starting_anything(tmp_path):
    path = write(tmp_path, GOOD.replace("repeats = 2", "repeats = 0"))
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(path), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2
    assert "repeats" in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_exits_2_for_a_missing_file(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments", "run", str(tmp_path / "nope.toml")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert proc.returncode == 2 and "no such experiment file" in proc.stderr


def test_cpu_limits_swept_beside_the_load_run_each_transports_limits_together_and_the_light_load_without(tmp_path):
    text = GOOD.replace("users = [4, 8]", "users = [4, 8]\ncpu_limit = [0.25, 0.5]").replace(
        "repeats = 2", "repeats = 1\nstop_at_limit = true\nlight_load = 4\n[server]\ncpu_period_ms = 50\nws_compress = false")
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.cpu_limits == (0.25, 0.5) and experiment.cpu_period_us == 50_000
    assert experiment.server_options == {"ws_compress": False}  # the runner's keys are no server flags
    assert experiment.point_keys == ["users", "cpu_limit"] and experiment.light_load == 4
    # A transport's limits run one after the other at each load; at the light load, first without a limit (0).
    assert [(p.swept["users"], p.transport, p.cpu_limit) for p in experiment.points()] == [
        (4, "short-polling", 0.0), (4, "short-polling", 0.25), (4, "short-polling", 0.5),
        (4, "websocket", 0.0), (4, "websocket", 0.25), (4, "websocket", 0.5),
        (8, "short-polling", 0.25), (8, "short-polling", 0.5), (8, "websocket", 0.25), (8, "websocket", 0.5)]
    assert experiment.points()[1].slug == "users=4,cpu_limit=0.25/short-polling-r1"
    assert experiment.as_dict()["light_load"] == 4 and experiment.as_dict()["server"]["cpu_period_ms"] == 50
    # One limit in [server]: a point key all the same, so the light load's run without it is told apart.
    fixed = load_experiment(write(tmp_path, GOOD.replace("repeats = 2", "repeats = 1\nlight_load = 8\n[server]\n"
                                                                         "cpu_limit = 0.5")))
    assert fixed.point_keys == ["users", "cpu_limit"]
    assert [(p.swept, p.cpu_limit) for p in fixed.points() if p.transport == "websocket"] == [
        ({"users": 4, "cpu_limit": 0.5}, 0.5), ({"users": 8, "cpu_limit": 0.0}, 0.0), ({"users": 8, "cpu_limit": 0.5}, 0.5)]
    plain = load_experiment(write(tmp_path, GOOD))
    assert plain.cpu_limits == () and all(p.cpu_limit is None for p in plain.points())


def test_a_servers_declared_settings_are_experiment_keys_and_become_its_flags(tmp_path):
    from experiments.runner import server_flags

    text = GOOD.replace("[sweep]", "[server]\nsend_rate_per_s = 50\nmax_connections_per_client = 8000\n"
                                   "allow_origins = [\"http://lab.example:9000\"]\nws_compress = true\n[sweep]")
    experiment = load_experiment(write(tmp_path, text))
    assert experiment.server == {"send_rate_per_s": 50, "max_connections_per_client": 8000,
                                 "allow_origins": ("http://lab.example:9000",), "ws_compress": True}
    flags = [flag for key, value in experiment.server.items() for flag in server_flags(key, value)]
    assert flags == ["--send-rate", "50", "--max-connections-per-client", "8000",
                     "--allow-origin", "http://lab.example:9000", "--ws-compress"]
    from servers.__main__ import parse_args

    config = parse_args(["--transport", "all", *flags])
    assert (config.send_rate_per_s, config.max_connections_per_client, config.allow_origins) == (
        50.0, 8000, ("http://lab.example:9000",)) and config.knob("ws_compress") is True
