"""Shared test fixtures: a time unit CI can scale, real servers on free ports, required services."""

from __future__ import annotations

import os
import shutil
from dataclasses import fields
from pathlib import Path

import pytest

from experiments.supervisor import ServerProcess, start_server
from servers import registry
from servers.app import RunningServer
from servers.app import start_server as start_app_server
from servers.config import ServerConfig

TESTS = Path(__file__).resolve().parent  # tests/: its helpers/, fixtures/ and plugins/ are shared by every suite
ROOT = TESTS.parent
# Every timeout in the tests is a multiple of UNIT seconds; a slow machine sets RTLAB_TIMEOUT_SCALE.
UNIT = float(os.environ.get("RTLAB_TIMEOUT_SCALE", "1"))
REQUIRE_ALL = os.environ.get("RTLAB_REQUIRE_ALL") == "1"
TRANSPORTS = registry.names()  # rtlab's own transports, from the registry: every suite runs over each
# For tests that post hundreds of messages as one member in a burst: the send rate limit out of the way.
FLOOD_OK = {"send_rate_per_s": 1_000_000.0, "send_burst": 1_000_000}


def require_binary(name: str, path: str | None = None) -> str:
    """Return the path of a service binary; skip (or fail under RTLAB_REQUIRE_ALL=1) when missing."""
    found = path if path and os.access(path, os.X_OK) else shutil.which(name)
    if found:
        return found
    reason = f"{name} is not installed (apt-get install {name}); .ci/run installs it"
    if REQUIRE_ALL:
        pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


def require_packages(transport: str) -> None:
    """Skip (or fail under RTLAB_REQUIRE_ALL=1) when a peer's optional packages are not installed."""
    missing = registry.missing_packages(transport)
    if not missing:
        return
    reason = f"{transport} needs {', '.join(missing)} (the optional extra: pip install -e '.[peers]'; make venv does)"
    if REQUIRE_ALL:
        pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {reason}")
    pytest.skip(reason)


def require_cgroups():
    """The machine's cgroup hierarchy for CPU limits (experiments/cgroup.py), after a probe group was made and removed;
    skip (fail under RTLAB_REQUIRE_ALL=1) when no group with a CPU limit can be made here (not root, read-only)."""
    from experiments import cgroup

    try:
        return cgroup.preflight()
    except cgroup.CgroupUnavailable as error:
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {error}")
        pytest.skip(str(error))


# `make test` runs two workers, each module on one (--dist loadscope), handed out in collection order
# (--no-loadscope-reorder; xdist's own order is by number of tests, which put the long end-to-end modules of a few tests
# last): the modules that take longest go first, longest first, so that the many short ones fill both workers' ends
# instead of one long module running alone while the other worker has nothing left. The seconds: each module alone in
# one process (-p no:xdist) on the 2-CPU machine of README's "Tests and CI", busy with a soak (2026-12-05); a new module
# that takes longer than the last one here goes in at its place.
LONGEST_FIRST = (
    "tests/clients/test_clients_transports.py",  # 155
    "tests/experiments/test_experiment_run.py",  # 140-155
    "tests/experiments/test_cost_experiments.py",  # 141
    "tests/experiments/test_peers_run.py",  # 124-148
    "tests/experiments/test_cluster.py",  # 115
    "tests/experiments/test_experiment_scaling.py",  # 114
    "tests/experiments/test_soak.py",  # 80
    "tests/experiments/test_network.py",  # 74
    "tests/servers/test_demo_browser.py",  # 70
    "tests/experiments/test_demo_cluster.py",  # 57-71
    "tests/experiments/test_http2_run.py",  # 65
    "tests/experiments/test_notebooks.py",  # 57
    "tests/experiments/test_capture_run.py",  # 42
    "tests/clients/test_locust_runs.py",  # 35-43
    "tests/benchmarks/test_fanout_smoke.py",  # ~36 (its --durations in a whole-suite run)
    "tests/benchmarks/test_held_smoke.py",  # ~32
    "tests/test_plugin_transport.py",  # ~32
    "tests/clients/test_webrtc_client.py",  # ~30
    "tests/servers/test_demo_tls_browser.py",  # ~21
)


def pytest_collection_modifyitems(config, items):
    rank = {module: i for i, module in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: the rest keep their order


@pytest.fixture
async def session():
    """An aiohttp client session for the test, closed after it."""
    import aiohttp

    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def app_server():
    """Start servers in this event loop: `await app_server(transports, **overrides)`; an override is a
    ServerConfig field or a transport's server knob (e.g. ws_send_queue=8)."""
    started: list[RunningServer] = []
    config_fields = {f.name for f in fields(ServerConfig)}

    async def start(transports: tuple[str, ...] | str, **overrides) -> RunningServer:
        if isinstance(transports, str):
            transports = registry.expand(transports)
        knobs = {k: overrides.pop(k) for k in list(overrides) if k not in config_fields}
        config = ServerConfig(transports=tuple(transports), port=0, knobs=knobs, **overrides)
        server = await start_app_server(config)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


def spawn_server(args: list[str], log_path: str, timeout: float = 15 * UNIT, env: dict | None = None) -> ServerProcess:
    """Run `python -m servers ARGS` on a free port (experiments.supervisor) and wait until it listens."""
    return start_server(args, Path(log_path), timeout_s=timeout, env=env)


@pytest.fixture
def server_process(tmp_path):
    """Start `python -m servers` subprocesses: `server_process("websocket", *extra_args)`."""
    started: list[ServerProcess] = []

    def start(transport: str, *extra: str) -> ServerProcess:
        server = spawn_server(["--transport", transport, *extra], str(tmp_path / f"server-{len(started)}.log"))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real `redis-server` on a free loopback port (experiments.redis_server.RedisServer), stopped afterwards."""
    binary = require_binary("redis-server")
    from experiments.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis", binary=binary).start(10 * UNIT)
    yield server
    server.stop()
