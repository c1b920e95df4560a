"""Each transport's client against a real server, outside Locust. The clients need gevent's monkey-patching,
which must not happen in this process (other tests run asyncio servers here), so a helper script drives them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import TRANSPORTS, UNIT, require_packages, spawn_server
from helpers.processes import HELPERS, dropping_server

from experiments.supervisor import Group
from servers import registry

MESSAGES = 5  # per member; two members
WITH_PEERS = TRANSPORTS + registry.names(registry.PEER)  # a peer's client is held to the same account


def probe(transport: str, url: str, *extra: str) -> dict:
    """Run tests/helpers/client_probe.py: two members join one room, each sends MESSAGES, both listen."""
    result = subprocess.run(
        [sys.executable, str(HELPERS / "client_probe.py"), transport, url, "--messages", str(MESSAGES),
         "--timeout", str(5 * UNIT), *extra],
        check=False, capture_output=True, text=True, timeout=60 * UNIT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def first_probe(tmp_path_factory):
    """`first_probe(transport)`: a server of its own for the transport and what a first probe saw there (a fresh room),
    made once for the tests that read it: the joining-late test probes the same server again, into the room the first
    probe filled, instead of starting a server and filling a room of its own."""
    started, seen = {}, {}

    def get(transport: str):
        if transport not in seen:
            server = started[transport] = spawn_server(
                ["--transport", transport], str(tmp_path_factory.mktemp("server") / "server.log"))
            seen[transport] = probe(transport, server.url)
        return started[transport], seen[transport]

    yield get
    Group([server.process for server in started.values()]).stop_all()  # all at once: each takes ~0.3 s to exit


@pytest.mark.parametrize("transport", WITH_PEERS)
def test_every_member_receives_every_message_once_in_order(transport, first_probe):
    require_packages(transport)
    _, seen = first_probe(transport)
    assert seen["failures"] == []
    for member in ("alice", "bob"):
        got = seen[member]
        assert got["since"] == 0
        assert got["ids"] == list(range(1, 2 * MESSAGES + 1))
        assert got["users"] == ["alice", "bob"]  # each member also receives its own messages
        assert (got["lost"], got["duplicates"], got["out_of_order"]) == (0, 0, 0)
    reports = seen["reports"]
    assert reports[f"SEND {transport}"] == 2 * MESSAGES  # WebSocket: counted when the echo arrives
    assert reports[f"HISTORY {transport}"] == 2
    # A socket or stream is opened once per member; a poll again and again.
    assert reports.get(f"CONNECT {transport}") == 2 or reports.get(f"POLL {transport}", 0) > 0, reports


@pytest.mark.parametrize("transport", WITH_PEERS)
def test_a_member_joining_late_starts_after_the_newest_id(transport, first_probe):
    require_packages(transport)
    server, _ = first_probe(transport)  # room "probe" now holds 2 * MESSAGES messages
    seen = probe(transport, server.url)
    for member in ("alice", "bob"):
        assert seen[member]["since"] == 2 * MESSAGES
        assert seen[member]["ids"] == list(range(2 * MESSAGES + 1, 4 * MESSAGES + 1))
        assert seen[member]["lost"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_message_the_server_drops_is_counted_lost(transport, tmp_path):
    server = dropping_server(transport, tmp_path / "server.log", 15 * UNIT, drop_id=3)
    try:
        seen = probe(transport, server.url, "--timeout", str(2 * UNIT))
    finally:
        server.stop()
    for member in ("alice", "bob"):
        assert 3 not in seen[member]["ids"]
        assert seen[member]["lost"] == 1
        assert seen[member]["duplicates"] == 0


def test_websocket_frames_go_out_whole_past_a_full_buffer_and_a_held_lock():
    """write_text's one non-blocking write: a frame the socket cannot take at once is finished by sendall, and one
    written while another greenlet holds the lock mid-frame (a pong) waits for it: nothing is cut or mixed."""
    result = subprocess.run([sys.executable, str(HELPERS / "write_text_probe.py")],
                            check=False, capture_output=True, text=True, timeout=60 * UNIT)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["locked_while_writing"]
    assert seen["frames"] == [[0x81, 4 * 1024 * 1024], [0x8A, 4], [0x81, 7], [0x81, 4 * 1024 * 1024], [0x81, 7]]
    assert seen["texts_intact"]
