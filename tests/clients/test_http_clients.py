"""Every TCP transport's client through a real TLS proxy (HAProxy), over each HTTP arm: HTTP/1.1 over TLS, HTTP/2
over TLS, h2c. Contract and completeness as direct; one connection per member over HTTP/2; and the bytes the
members' own connections counted (clients/http.py's Link: TLS records, h2 frames, HPACK) are what a packet capture
of the proxy's port saw, byte for byte, both ways."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from conftest import REQUIRE_ALL, TRANSPORTS, UNIT, require_binary, spawn_server
from helpers.processes import HELPERS

from experiments.haproxy import CERTIFICATE_ENV, HTTP_ARMS, HAProxy, haproxy_config, http_unavailable, proxy_idle_s
from experiments.tcpcount import PortCapture
from servers import registry

TCP_TRANSPORTS = [t for t in TRANSPORTS if registry.get(t).carrier == "tcp"]
MESSAGES = 5


@pytest.fixture(scope="module")
def fronts(tmp_path_factory):
    """One server with every transport, and one HAProxy front per HTTP arm before it."""
    binary = require_binary("haproxy")
    problem = http_unavailable(list(HTTP_ARMS), binary)
    if problem:
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {problem}")
        pytest.skip(problem)
    directory = tmp_path_factory.mktemp("fronts")
    server = spawn_server(["--transport", "all", "--no-access-log"], str(directory / "server.log"))
    started = {}
    try:
        for name, arm in HTTP_ARMS.items():
            started[name] = HAProxy(directory / name, [("server-1", server.port)], "roundrobin", binary=binary,
                                    arm=arm, idle_s=proxy_idle_s("all")).start(10 * UNIT)
        yield started
    finally:
        for proxy in started.values():
            proxy.stop()
        server.stop()


def wait_idle(proxy: HAProxy, timeout_s: float) -> None:
    """Until the front holds no connection from an earlier test. A long poll that an earlier probe left open when it
    stopped (its member gone, HAProxy still waiting for the server's answer to hand on: up to the poll's wait) is
    answered later, on this port: inside this test's capture, bytes no member of this test counts."""
    deadline = time.monotonic() + timeout_s
    while (held := proxy.sessions()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == 0, f"the {proxy.arm.name} front still holds {held} connection(s) of an earlier test"


def capture(port: int) -> PortCapture | None:
    try:
        return PortCapture(port).start()
    except (PermissionError, AttributeError, OSError) as error:
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but a packet capture needs CAP_NET_RAW on Linux ({error})")
        return None


@pytest.mark.parametrize("arm", list(HTTP_ARMS))
@pytest.mark.parametrize("transport", TCP_TRANSPORTS)
def test_through_the_proxy_every_message_once_and_every_byte_counted(fronts, transport, arm):
    proxy = fronts[arm]
    room = f"{transport}-{arm}".replace(".", "_")
    command = [sys.executable, str(HELPERS / "client_probe.py"), transport, proxy.url, "--room", room,
               "--messages", str(MESSAGES), "--timeout", str(5 * UNIT), "--http", HTTP_ARMS[arm].client_http,
               "--hold", *(["--tls-ca", str(proxy.ca_path)] if proxy.ca_path else [])]
    wait_idle(proxy, 10 * UNIT)
    packets = capture(proxy.port)
    probe = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        counted = json.loads(probe.stdout.readline() or "null")
        assert counted is not None, probe.stderr.read()
        seen = None
        for _ in range(4):  # a byte still on its way (a busy machine) arrives on both sides by the next look
            time.sleep(0.2)  # what the members counted has crossed the loopback by now
            seen = packets.snapshot() if packets else None
            if seen is None or (seen.to_server.payload_bytes, seen.from_server.payload_bytes) == \
                    (counted["out"], counted["in"]):
                break
            probe.stdin.write("count\n")
            probe.stdin.flush()
            counted = json.loads(probe.stdout.readline())
        if packets:
            packets.stop()
        out, err = probe.communicate("go on\n", timeout=30 * UNIT)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert probe.returncode == 0, err
    result = json.loads(out.splitlines()[-1])
    assert result["failures"] == []
    for member in ("alice", "bob"):
        got = result[member]
        assert got["ids"] == list(range(1, 2 * MESSAGES + 1))
        assert (got["lost"], got["duplicates"], got["out_of_order"]) == (0, 0, 0)
    if HTTP_ARMS[arm].client_http == "2":
        assert counted["connections"] == 2  # one per member: its history, posts, polls, stream or socket on it
    if seen is not None:
        assert seen.dropped == 0
        assert (seen.to_server.payload_bytes, seen.from_server.payload_bytes) == (counted["out"], counted["in"])
        assert counted["in"] > 0 and counted["out"] > 0


def test_a_front_names_its_certificate_by_a_variable_not_by_this_machines_path(fronts):
    # The config is kept with the run (a reference run is committed); the certificate lives in a temporary directory.
    for name, proxy in fronts.items():
        config = proxy.config_path.read_text()
        if HTTP_ARMS[name].tls:
            assert f'ssl crt "${{{CERTIFICATE_ENV}}}"' in config and str(proxy.cert_path.parent) not in config, config
        assert "/tmp/" not in config, config


def test_each_arm_binds_what_it_offers():
    cfg = {name: haproxy_config(8443, 9999, [("server-1", 8080)], "roundrobin",
                                bind_options=arm.bind_options("/run/proxy.pem"), tunnel_s=70)
           for name, arm in HTTP_ARMS.items()}
    assert "bind 127.0.0.1:8443 ssl crt /run/proxy.pem alpn http/1.1\n" in cfg["1.1"]
    assert "bind 127.0.0.1:8443 ssl crt /run/proxy.pem alpn h2\n" in cfg["2"]
    assert "bind 127.0.0.1:8443 proto h2\n" in cfg["h2c"]
    assert all("timeout tunnel 70s" in text for text in cfg.values())


def test_a_missing_or_lacking_haproxy_is_named(tmp_path):
    assert "needs HAProxy" in http_unavailable(["2"], str(tmp_path / "no-haproxy"))
    fake = tmp_path / "haproxy"
    fake.write_text("#!/bin/sh\necho 'HAProxy version 2.6'\necho '  OPTIONS = USE_PCRE2=1'\n")
    fake.chmod(0o755)
    problem = http_unavailable(["1.1", "2"], str(fake))
    assert "TLS" in problem and "HTTP/2" in problem
    assert "TLS" not in http_unavailable(["h2c"], str(fake))


@pytest.mark.parametrize("arm", ["1.1", "h2c"])
def test_origin_and_host_checks_hold_through_the_proxy(fronts, arm):
    """The server still refuses a foreign page's Origin and an unknown Host when a proxy stands between."""
    import http.client
    import ssl

    proxy = fronts[arm]
    if HTTP_ARMS[arm].tls:
        context = ssl.create_default_context(cafile=str(proxy.ca_path))
        connection = http.client.HTTPSConnection("127.0.0.1", proxy.port, context=context, timeout=10 * UNIT)
    else:  # h2c takes HTTP/2 with prior knowledge only
        return check_h2c(proxy)
    answers = {}
    for name, headers in {"own": {}, "origin": {"Origin": "https://evil.example"},
                          "host": {"Host": "evil.example"}}.items():
        connection.request("GET", "/rooms/checks/history", headers=headers)
        response = connection.getresponse()
        response.read()
        answers[name] = response.status
    connection.close()
    assert answers == {"own": 200, "origin": 403, "host": 403}


def check_h2c(proxy) -> None:
    import h2.config
    import h2.connection
    import h2.events

    answers = {}
    for name, extra in {"own": [], "origin": [(b"origin", b"https://evil.example")]}.items():
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10 * UNIT) as sock:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"),
                                  (b":authority", f"127.0.0.1:{proxy.port}".encode()),
                                  (b":path", b"/rooms/checks/history"), *extra], end_stream=True)
            sock.sendall(conn.data_to_send())
            while name not in answers:
                for event in conn.receive_data(sock.recv(65536)):
                    if isinstance(event, h2.events.ResponseReceived):
                        answers[name] = int(dict(event.headers)[b":status"])
                sock.sendall(conn.data_to_send())
    assert answers == {"own": 200, "origin": 403}
