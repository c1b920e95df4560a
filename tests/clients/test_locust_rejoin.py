"""A member's rejoin (ChatMember.rejoin: a new client, as a page reload makes; the soak's reconnect_every_s) resumes from
what its old client received, for every transport (tests/helpers/rejoin_probe.py against one server of them all, in a
subprocess: Locust monkey-patches with gevent on import)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, UNIT, spawn_server

from servers import registry

HELPER = ROOT / "tests" / "helpers" / "rejoin_probe.py"


def test_a_rejoin_resumes_from_what_the_member_received_on_every_transport(tmp_path):
    transports = registry.names()
    server = spawn_server(["--transport", "all", "--no-access-log"], str(tmp_path / "server.log"))
    try:
        result = subprocess.run([sys.executable, str(HELPER), server.url, *transports], capture_output=True,
                                text=True, timeout=90 * UNIT, cwd=ROOT)
    finally:
        server.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    for transport in transports:
        member = seen[transport]
        assert isinstance(member, dict), f"{transport}: {member}"
        where = f"{transport}: {member}"
        held, after = member["held"], member["after"]
        assert member["duplicates"] == 0 and not member["failures"], where
        if member["expects_loss"]:
            # A gap is this transport's loss: the rejoin, like its own reconnect, resumes after the newest id, so a
            # message held up at that instant is lost (counted), not asked for again.
            assert held == [3] and 3 not in after and member["lost"] >= 1 and after[-1:] == [6], where
        else:
            # Reliable: the held messages come on the new connection, and nothing that had arrived comes twice.
            assert (member["lost"], member["received"]) == (0, 6), where
            assert sorted(after) == [*held, 6], where
