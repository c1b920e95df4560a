"""HAProxy for the cluster and for the HTTP arms: its configuration (written out for each run, documented in
docs/scaling.md and docs/http2.md), the process, and its runtime API (drain, states).

The HTTP arms (`HTTP_ARMS`) put one server behind a front that speaks what the member asks for: TLS with ALPN
`http/1.1` only, TLS with ALPN `h2` only, or h2c (cleartext HTTP/2 with prior knowledge); the proxy always speaks
HTTP/1.1 to the server, as production does with aiohttp. `http_unavailable()` says what this machine's HAProxy
lacks for them."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from collections.abc import Mapping
from pathlib import Path

from servers import registry

from .redis_server import ClusterError
from .supervisor import Process, free_port

BACKEND = "servers"  # the HAProxy backend name, for the runtime API: `set server servers/server-1 state drain`
# haproxy.cfg names the front's certificate by this variable (HAProxy expands "${NAME}" in double quotes): the file is
# made at start in a temporary directory, and the config, kept with the run (a reference run is committed), holds no
# path of this machine.
CERTIFICATE_ENV = "RTLAB_PROXY_PEM"
# Health checks: a server is out of rotation after FALL failed checks INTER_MS apart (~0.4 s).
CHECK_INTER_MS = 200
CHECK_FALL = 2
CHECK_RISE = 2


def proxy_idle_s(transport: str, knobs: Mapping[str, object] | None = None) -> float:
    """How long the proxy lets a connection stay quiet: twice the longest a healthy connection of the
    transport(s) is silent (a held long poll: its cap; a stream or socket: its heartbeat), plus 5 s, and
    never under 65 s."""
    knobs = knobs or {}
    values = {name: knobs.get(name, knob.default) for name, knob in registry.server_knobs().items()}
    silences = [entry.max_silence_s(values) for entry in (registry.get(t) for t in registry.expand(transport))
                if entry.max_silence_s is not None]
    return max(65.0, 2 * max(silences, default=0.0) + 5)


@dataclass(frozen=True)
class HttpArm:
    """What the member speaks to the proxy in one arm of an HTTP comparison."""

    name: str  # "1.1", "2", "h2c": an experiment's [network] http
    tls: bool
    alpn: str | None  # the one protocol the TLS front offers
    label: str

    def bind_options(self, cert_path: str | None) -> str:
        """The options of the front's `bind` line."""
        if not self.tls:
            return "proto h2"  # cleartext HTTP/2, prior knowledge (no Upgrade: h2c)
        return f"ssl crt {cert_path} alpn {self.alpn}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_http(self) -> str:
        """The HTTP the Locust members speak (clients/http.py)."""
        return "1.1" if self.alpn == "http/1.1" else "2"


HTTP_ARMS = {arm.name: arm for arm in (
    HttpArm("1.1", True, "http/1.1", "HTTP/1.1 over TLS"),
    HttpArm("2", True, "h2", "HTTP/2 over TLS"),
    HttpArm("h2c", False, None, "HTTP/2 cleartext (h2c)"),
)}


def http_unavailable(arms: list[str], binary: str = "haproxy") -> str | None:
    """What this machine's HAProxy lacks for `arms` (a sentence naming it), or None when it has everything."""
    if shutil.which(binary) is None:
        return f"needs HAProxy ({binary!r} is not on PATH; Debian: apt-get install haproxy)"
    try:
        build = subprocess.run([binary, "-vv"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not ask {binary} what it was built with: {error}"
    missing = []
    if any(HTTP_ARMS[a].tls for a in arms) and not re.search(r"USE_OPENSSL=1|\+OPENSSL", build):
        missing.append("TLS (built without OpenSSL)")
    if any(HTTP_ARMS[a].client_http == "2" for a in arms) and not re.search(r"^\s*h2 :.*side=FE", build, re.M):
        missing.append("HTTP/2 on a front end (no h2 multiplexer)")
    if missing:
        return f"needs an HAProxy with {' and '.join(missing)}"
    return None


def haproxy_config(frontend_port: int, admin_port: int, servers: list[tuple[str, int]], balance: str,
                   maxconn: int | None = None, idle_s: float = 65.0, page_port: int | None = None,
                   bind_options: str = "", tunnel_s: float = 3600.0, log_requests: bool = False) -> str:
    """Return haproxy.cfg: a frontend on 127.0.0.1 (its `bind` given `bind_options`: TLS, ALPN, h2c), one backend
    over `servers` [(name, port)] balanced by `balance` ("uri": hash of /rooms/{room}, consistent; "roundrobin"),
    health-checked on /healthz; a connection may stay quiet `idle_s` (proxy_idle_s), an upgraded one (a WebSocket)
    `tunnel_s`, before the proxy closes it; `log_requests` logs each request, its HTTP version too, to stdout. With
    `page_port`, every path outside /rooms/ goes to the page server there instead (the cluster demo: its page and
    the rooms, one origin)."""
    if balance not in ("uri", "roundrobin"):
        raise ValueError(f"balance must be uri or roundrobin, got {balance!r}")
    if maxconn is None:
        # Two descriptors per proxied connection (client side, server side), within the process's limit.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = hard if hard != resource.RLIM_INFINITY else 1_000_000
        maxconn = max(256, min(50_000, (limit - 200) // 2))
    if balance == "uri":
        # "/rooms/room-7/ws?since=3" hashes as "/rooms/room-7": every route of a room, one instance.
        # Consistent hashing: when an instance leaves (drained, down), only its rooms move.
        routing = "    balance uri depth 2\n    hash-type consistent\n"
    else:
        routing = "    balance roundrobin\n"
    server_lines = "".join(
        f"    server {name} 127.0.0.1:{port} check inter {CHECK_INTER_MS}ms fall {CHECK_FALL} rise {CHECK_RISE}\n"
        for name, port in servers
    )
    idle = idle_s
    page = "" if page_port is None else (
        "    # The cluster demo's page server answers everything but the chat (experiments/demo_cluster.py).\n"
        "    use_backend page unless { path_beg /rooms/ }\n")
    page_backend = "" if page_port is None else f"\nbackend page\n    server page 127.0.0.1:{page_port}\n"
    bind = f"127.0.0.1:{frontend_port}" + (f" {bind_options}" if bind_options else "")
    tunnel = "1h" if tunnel_s == 3600 else f"{tunnel_s:g}s"
    # Logged as each request starts (logasap): an event stream or a WebSocket shows up while it is open.
    logging = ("    log stdout format raw local0\n", "    log global\n    option httplog\n    option logasap\n") \
        if log_requests else ("", "")
    return f"""# Generated by experiments/cluster.py; docs/scaling.md explains each line.
global
{logging[0]}    maxconn {maxconn}
    # Runtime API (loopback only): `set server {BACKEND}/server-1 state drain` takes an instance out at once.
    stats socket ipv4@127.0.0.1:{admin_port} level admin

defaults
    mode http
{logging[1]}    maxconn {maxconn}
    timeout connect 2s
    # Above the longest silence of a healthy connection (a held long poll: the servers' cap; an event
    # stream: its heartbeat), so the proxy never cuts one.
    timeout client {idle:g}s
    timeout server {idle:g}s
    timeout http-keep-alive {idle:g}s
    # Once a connection is upgraded (a WebSocket), only this applies; the servers ping it.
    timeout tunnel {tunnel}
    # A refused connection (an instance killed) is retried on another instance.
    option redispatch
    retries 3

frontend rtlab
    bind {bind}
    # The admin routes answer loopback peers, and through this proxy every peer is loopback: refuse them here.
    http-request deny deny_status 403 if {{ path_beg /admin/ }}
{page}    default_backend {BACKEND}

backend {BACKEND}
{routing}    # A draining instance answers 503 here and leaves the rotation after {CHECK_FALL} checks.
    option httpchk GET /healthz
    http-check expect status 200
{server_lines}{page_backend}"""


class HAProxy:
    """`haproxy -db -f haproxy.cfg` in the foreground, with its runtime API on a loopback TCP port."""

    def __init__(self, directory: Path, servers: list[tuple[str, int]], balance: str, *, binary: str = "haproxy",
                 cpus: list[int] | None = None, port: int | None = None, idle_s: float = 65.0,
                 page_port: int | None = None, arm: HttpArm | None = None, log_requests: bool = False) -> None:
        self.idle_s = idle_s
        self.page_port = page_port
        self.arm = arm
        self.log_requests = log_requests
        self.cert_path: Path | None = None
        self.ca_path: Path | None = None
        self._secrets: Path | None = None
        self.directory = Path(directory)
        self.port = port or free_port()
        self.admin_port = free_port()
        self.binary = binary
        self.cpus = cpus
        self.servers = servers
        self.balance = balance
        self.config_path = self.directory / "haproxy.cfg"
        self.process: Process | None = None

    @property
    def url(self) -> str:
        return f"{self.arm.scheme if self.arm else 'http'}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 10.0) -> HAProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        bind_options, tunnel_s = "", 3600.0
        if self.arm is not None:
            if self.arm.tls:
                # Made now, for this run only (ECDSA P-256, days): never in the repository.
                from servers import certs

                # Outside the run's folder (a reference run is committed): removed again by stop().
                self._secrets = Path(tempfile.mkdtemp(prefix="rtlab-proxy-"))
                certificate = certs.generate()
                self.cert_path = certificate.write_combined(self._secrets / "proxy.pem")
                self.ca_path = self._secrets / "proxy.crt"  # what a client verifies the proxy with
                self.ca_path.write_bytes(certificate.cert_pem)
            bind_options = self.arm.bind_options(f'"${{{CERTIFICATE_ENV}}}"' if self.cert_path else None)
            tunnel_s = self.idle_s  # the WebSockets' heartbeat is in proxy_idle_s's longest silence
        env = {**os.environ, CERTIFICATE_ENV: str(self.cert_path)} if self.cert_path else None
        self.config_path.write_text(haproxy_config(self.port, self.admin_port, self.servers, self.balance,
                                                   idle_s=self.idle_s, page_port=self.page_port,
                                                   bind_options=bind_options, tunnel_s=tunnel_s,
                                                   log_requests=self.log_requests))
        try:
            check = subprocess.run([self.binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True,
                                   env=env)
            if check.returncode != 0:
                raise ClusterError(f"haproxy refused {self.config_path}:\n{check.stdout}{check.stderr}")
            self.process = Process("haproxy", [self.binary, "-db", "-f", str(self.config_path)],
                                   self.directory / "haproxy.log", self.cpus, env=env).start()
            self.wait_up([name for name, _ in self.servers], timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def command(self, line: str, timeout_s: float = 2.0) -> str:
        """Send one runtime API command and return its answer."""
        with socket.create_connection(("127.0.0.1", self.admin_port), timeout=timeout_s) as sock:
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stat(self) -> list[dict[str, str]]:
        """`show stat`: one row per frontend, server and backend, by its CSV header's names."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return []
        header = lines[0][2:].split(",")
        return [dict(zip(header, line.split(","))) for line in lines[1:] if line]

    def states(self) -> dict[str, str]:
        """Return each server's status as HAProxy's `show stat` gives it (UP, DOWN, DRAIN, MAINT, ...)."""
        return {row["svname"]: row.get("status", "") for row in self.stat()
                if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", None)}

    def sessions(self) -> int:
        """The client connections the front holds now (`show stat`'s scur of the frontend), a connection whose client
        has gone but whose answer is still on its way from a server included."""
        return sum(int(row.get("scur") or 0) for row in self.stat() if row.get("svname") == "FRONTEND")

    def wait_up(self, names: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        states: dict[str, str] = {}
        while True:
            if not self.process.alive:
                raise ClusterError(f"haproxy exited:\n{self.process.log()}")
            with contextlib.suppress(OSError):
                states = self.states()
                if all(states.get(name, "").startswith("UP") for name in names):
                    return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"haproxy did not see {names} UP within {timeout_s} s: {states}\n{self.process.log()}"
                )
            time.sleep(0.05)

    def set_state(self, server: str, state: str) -> None:
        """`set server servers/NAME state ready|drain|maint`; raise when HAProxy answers anything."""
        answer = self.command(f"set server {BACKEND}/{server} state {state}").strip()
        if answer:
            raise ClusterError(f"haproxy: set server {server} state {state}: {answer}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        if self._secrets is not None:
            shutil.rmtree(self._secrets, ignore_errors=True)
