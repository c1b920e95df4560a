"""Scale out on one machine: N server instances behind a real HAProxy, over Redis when the mode needs it.

    with Cluster("websocket", instances=3, mode="pubsub", directory=run_dir) as cluster:
        ... point Locust at cluster.url ...
        cluster.drain(0)           # out of HAProxy, WebSockets closed with 1012, held polls answered
        cluster.kill(1)            # SIGKILL, as a crash
        cluster.restart_redis()    # SHUTDOWN SAVE, start again on the same port and data

Every process runs in its own session and is stopped in `finally` (SIGTERM, then SIGKILL). The generated
haproxy.cfg, the processes' logs and Redis's dump are written into `directory`, which goes with the results.

Modes (docs/scaling.md):
- sticky: HAProxy hashes the room part of the path (`balance uri depth 2`, consistent hashing), so every
  member of a room reaches the same instance; memory broker: the seed notes' sticky architecture.
- pubsub: round robin over instances sharing Redis (ids, history, pub/sub fan-out): the Pub/Sub
  architecture. For the polling transports this is "stateless instances sharing a store".
- naive: round robin over instances with the memory broker: the architecture the seed calls
  "not possible"; members of one room land on different instances and miss each other's messages.
`broker=` overrides the mode's broker, e.g. sticky routing over Redis (history survives a drain).

`python -m experiments.cluster drain --url http://127.0.0.1:PORT` drains one instance by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from servers import registry

ROOT = Path(__file__).resolve().parent.parent
BACKEND = "servers"  # the HAProxy backend name, for the runtime API: `set server servers/server-1 state drain`

MODES: dict[str, tuple[str, str]] = {  # mode -> (HAProxy balance, broker)
    "sticky": ("uri", "memory"),
    "pubsub": ("roundrobin", "redis"),
    "naive": ("roundrobin", "memory"),
}
# Health checks: a server is out of rotation after FALL failed checks INTER_MS apart (~0.4 s).
CHECK_INTER_MS = 200
CHECK_FALL = 2
CHECK_RISE = 2
STOP_TIMEOUT_S = 10.0


class ClusterError(RuntimeError):
    """A cluster process did not start or a command to it failed; the message says which and why."""


def free_port() -> int:
    """Return a TCP port free on 127.0.0.1 right now (bind to 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_json(method: str, url: str, timeout_s: float = 5.0) -> tuple[int, dict]:
    """Send one request; return (status, decoded JSON body), whatever the status."""
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            return error.code, json.loads(body or b"{}")
        except ValueError:
            return error.code, {"error": body.decode("utf-8", "replace")}


@dataclass
class Managed:
    """One child process in its own session (so Ctrl-C in a terminal reaches only the caller), logged to a file."""

    label: str
    command: list[str]
    log_path: Path
    cpus: list[int] | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> Managed:
        cpus = self.cpus

        def pin() -> None:
            if cpus:
                os.sched_setaffinity(0, cpus)

        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=pin, start_new_session=True, cwd=ROOT,
            )
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the process group, wait, then SIGKILL what is left; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL the process at once, as a crash would end it."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# ---- Redis -------------------------------------------------------------------------------------------------------


def _with_free_port(start, attempts: int = 3):
    """Call `start()` (which picks free ports) again when it fails: a port found free may be taken before
    the process binds it."""
    for attempt in range(attempts):
        try:
            return start()
        except ClusterError:
            if attempt == attempts - 1:
                raise


class RedisServer:
    """`redis-server` on 127.0.0.1:`port`, no persistence while it runs, its dump kept in `directory`.

    `restart()` is a planned restart: SHUTDOWN SAVE writes the dump, and the new process loads it, so
    ids and history survive (a crash without AOF would lose them: docs/scaling.md).
    """

    def __init__(self, directory: Path, *, port: int | None = None, binary: str = "redis-server",
                 cpus: list[int] | None = None, label: str = "redis") -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.binary = binary
        self.cpus = cpus
        self.label = label
        self.process: Managed | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.directory), "--dbfilename", f"{self.label}.rdb", "--daemonize", "no",
            "--protected-mode", "yes", "--loglevel", "warning",
        ]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = Managed(self.label, self.command(), self.directory / f"{self.label}.log", self.cpus).start()
        try:
            self.wait_ready(timeout_s)
        except ClusterError:
            self.process.stop()
            raise
        return self

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.ping():
                return
            if not self.process.alive:
                raise ClusterError(f"redis-server exited at start:\n{self.process.log()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"redis-server did not answer PING within {timeout_s} s:\n{self.process.log()}")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            return self.command_line("PING") == "+PONG"
        except OSError:
            return False

    def command_line(self, *words: str, timeout_s: float = 2.0) -> str:
        """Send one inline command and return the first line of the answer (no client library needed)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout_s) as sock:
            sock.sendall((" ".join(words) + "\r\n").encode())
            answer = b""
            while not answer.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.decode(errors="replace").strip()

    def restart(self, down_s: float = 0.0, timeout_s: float = 10.0) -> float:
        """Save, stop, stay down `down_s`, start again on the same port with the same data; return the
        seconds Redis was unreachable."""
        started = time.monotonic()
        with contextlib.suppress(OSError):
            self.command_line("SHUTDOWN", "SAVE")
        try:
            self.process.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
        if down_s > 0:
            time.sleep(down_s)
        self.restarts += 1
        self.start(timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# ---- HAProxy -----------------------------------------------------------------------------------------------------


def proxy_idle_s(transport: str, knobs: Mapping[str, object] | None = None) -> float:
    """How long the proxy lets a connection stay quiet: twice the longest a healthy connection of the
    transport(s) is silent (a held long poll: its cap; a stream or socket: its heartbeat), plus 5 s, and
    never under 65 s."""
    knobs = knobs or {}
    values = {name: knobs.get(name, knob.default) for name, knob in registry.server_knobs().items()}
    silences = [entry.max_silence_s(values) for entry in (registry.get(t) for t in registry.expand(transport))
                if entry.max_silence_s is not None]
    return max(65.0, 2 * max(silences, default=0.0) + 5)


def haproxy_config(frontend_port: int, admin_port: int, servers: list[tuple[str, int]], balance: str,
                   maxconn: int | None = None, idle_s: float = 65.0) -> str:
    """Return haproxy.cfg: a frontend on 127.0.0.1, one backend over `servers` [(name, port)] balanced by
    `balance` ("uri": hash of /rooms/{room}, consistent; "roundrobin"), health-checked on /healthz; a
    connection may stay quiet `idle_s` (proxy_idle_s) before the proxy closes it."""
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
    return f"""# Generated by experiments/cluster.py; docs/scaling.md explains each line.
global
    maxconn {maxconn}
    # Runtime API (loopback only): `set server {BACKEND}/server-1 state drain` takes an instance out at once.
    stats socket ipv4@127.0.0.1:{admin_port} level admin

defaults
    mode http
    maxconn {maxconn}
    timeout connect 2s
    # Above the longest silence of a healthy connection (a held long poll: the servers' cap; an event
    # stream: its heartbeat), so the proxy never cuts one.
    timeout client {idle:g}s
    timeout server {idle:g}s
    timeout http-keep-alive {idle:g}s
    # Once a connection is upgraded (a WebSocket), only this applies; the servers ping it.
    timeout tunnel 1h
    # A refused connection (an instance killed) is retried on another instance.
    option redispatch
    retries 3

frontend rtlab
    bind 127.0.0.1:{frontend_port}
    # The admin routes answer loopback peers, and through this proxy every peer is loopback: refuse them here.
    http-request deny deny_status 403 if {{ path_beg /admin/ }}
    default_backend {BACKEND}

backend {BACKEND}
{routing}    # A draining instance answers 503 here and leaves the rotation after {CHECK_FALL} checks.
    option httpchk GET /healthz
    http-check expect status 200
{server_lines}"""


class HAProxy:
    """`haproxy -db -f haproxy.cfg` in the foreground, with its runtime API on a loopback TCP port."""

    def __init__(self, directory: Path, servers: list[tuple[str, int]], balance: str, *, binary: str = "haproxy",
                 cpus: list[int] | None = None, port: int | None = None, idle_s: float = 65.0) -> None:
        self.idle_s = idle_s
        self.directory = Path(directory)
        self.port = port or free_port()
        self.admin_port = free_port()
        self.binary = binary
        self.cpus = cpus
        self.servers = servers
        self.balance = balance
        self.config_path = self.directory / "haproxy.cfg"
        self.process: Managed | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout_s: float = 10.0) -> HAProxy:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(haproxy_config(self.port, self.admin_port, self.servers, self.balance,
                                                   idle_s=self.idle_s))
        check = subprocess.run([self.binary, "-c", "-f", str(self.config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise ClusterError(f"haproxy refused {self.config_path}:\n{check.stdout}{check.stderr}")
        self.process = Managed("haproxy", [self.binary, "-db", "-f", str(self.config_path)],
                               self.directory / "haproxy.log", self.cpus).start()
        try:
            self.wait_up([name for name, _ in self.servers], timeout_s)
        except ClusterError:
            self.process.stop()
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

    def states(self) -> dict[str, str]:
        """Return each server's status as HAProxy's `show stat` gives it (UP, DOWN, DRAIN, MAINT, ...)."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", None):
                states[row["svname"]] = row.get("status", "")
        return states

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


# ---- server instances --------------------------------------------------------------------------------------------


@dataclass
class Instance:
    """One `python -m servers` process, on a port chosen before it starts (so HAProxy's file can name it)."""

    name: str  # server-1, server-2, ...: its HAProxy server name and its sampler label
    port: int
    process: Managed
    drained: bool = False
    killed: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid


def wait_for_line(process: Managed, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    while True:
        match = re.search(pattern, process.log())
        if match:
            return match
        if not process.alive:
            raise ClusterError(f"{process.label} exited at start:\n{process.log()}")
        if time.monotonic() > deadline:
            raise ClusterError(f"{process.label} did not start within {timeout_s} s:\n{process.log()}")
        time.sleep(0.05)


def drain_instance(url: str, grace_s: float = 0.0, timeout_s: float = 90.0) -> dict:
    """POST {url}/admin/drain?grace=S and return the instance's answer (websockets_closed, polls_released, ...).

    Order: the instance answers /healthz with 503 at once, waits `grace_s`, then closes its WebSockets
    with 1012 and answers its held polls. Without HAProxy's runtime API, pass a grace longer than the
    health check needs to notice (fall x inter: 0.4 s with experiments.cluster's haproxy.cfg), so that
    members reconnecting are not routed back to this instance.
    """
    grace = f"?grace={grace_s:g}" if grace_s else ""
    status, body = http_json("POST", f"{url.rstrip('/')}/admin/drain{grace}", timeout_s)
    if status != 200:
        raise ClusterError(f"drain {url}: {status} {body.get('error', body)}")
    return body


@dataclass
class Cluster:
    """`instances` servers for `transport` behind HAProxy, in `mode` (sticky, pubsub, naive); a context manager.

    Attributes once started: `url` (HAProxy's frontend: point clients here), `instances` (name, url, pid),
    `redis` (a RedisServer or None), `haproxy`. Processes are pinned to `cpus` when given (or per role
    with `role_cpus={"server": [...], "redis": [...], "haproxy": [...]}`).
    """

    transport: str
    instances_count: int
    mode: str
    directory: Path
    broker: str | None = None  # "memory" or "redis"; default: the mode's
    server_args: list[str] = field(default_factory=list)  # extra `python -m servers` flags, e.g. ["--history", "100"]
    knobs: dict[str, object] = field(default_factory=dict)  # the transports' server knobs those flags set
    cpus: list[int] | None = None
    role_cpus: dict[str, list[int]] = field(default_factory=dict)
    python: str = sys.executable
    redis_binary: str = "redis-server"
    haproxy_binary: str = "haproxy"
    startup_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.instances_count < 1:
            raise ValueError("instances must be at least 1")
        self.balance, default_broker = MODES[self.mode]
        self.broker = self.broker or default_broker
        if self.broker not in ("memory", "redis"):
            raise ValueError(f"broker must be memory or redis, got {self.broker!r}")
        self.directory = Path(self.directory)
        self.instances: list[Instance] = []
        self.redis: RedisServer | None = None
        self.haproxy: HAProxy | None = None
        self.events: list[dict] = []  # drains, kills, restarts, with their times: for the run's manifest

    # ---- lifecycle ----

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _cpus(self, role: str) -> list[int] | None:
        return self.role_cpus.get(role, self.cpus)

    def start(self) -> Cluster:
        """Start Redis (when the broker is), the instances, then HAProxy; on any failure stop what started."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.broker == "redis":
                self.redis = _with_free_port(lambda: RedisServer(
                    self.directory, binary=self.redis_binary, cpus=self._cpus("redis")).start(self.startup_timeout_s))
            # Port 0: each instance binds a free port itself and prints it, so none is taken meanwhile.
            self.instances = [self._spawn(f"server-{index + 1}", 0) for index in range(self.instances_count)]
            for instance in self.instances:
                self._wait_listening(instance)
            self.haproxy = _with_free_port(lambda: HAProxy(
                self.directory, [(i.name, i.port) for i in self.instances], self.balance,
                binary=self.haproxy_binary, cpus=self._cpus("haproxy"),
                idle_s=proxy_idle_s(self.transport, self.knobs)).start(self.startup_timeout_s))
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_listening(self, instance: Instance) -> None:
        match = wait_for_line(instance.process, r" on http://127\.0\.0\.1:(\d+)", self.startup_timeout_s)
        instance.port = int(match.group(1))

    def _spawn(self, name: str, port: int) -> Instance:
        broker = self.redis.url if self.broker == "redis" else "memory"
        command = [
            self.python, "-m", "servers", "--transport", self.transport, "--host", "127.0.0.1", "--port", str(port),
            "--broker", broker, "--instance", name, *self.server_args,
        ]
        process = Managed(name, command, self.directory / f"{name}.log", self._cpus("server")).start()
        return Instance(name, port, process)

    def stop(self) -> None:
        """Stop HAProxy, the instances, then Redis; safe to call more than once."""
        for stopper in ([self.haproxy] if self.haproxy else []) + list(reversed(self.instances)) + (
            [self.redis] if self.redis else []
        ):
            with contextlib.suppress(Exception):
                (stopper.process if isinstance(stopper, Instance) else stopper).stop()

    # ---- what the runner reads ----

    @property
    def url(self) -> str:
        if self.haproxy is None:
            raise ClusterError("the cluster is not started")
        return self.haproxy.url

    def pids(self) -> dict[str, int]:
        """Labels and pids of the live processes, for the resource sampler: server-1.., redis, haproxy."""
        pids = {i.name: i.pid for i in self.instances if i.process.alive}
        if self.redis is not None and self.redis.process is not None and self.redis.process.alive:
            pids["redis"] = self.redis.pid
        if self.haproxy is not None and self.haproxy.process.alive:
            pids["haproxy"] = self.haproxy.pid
        return pids

    def describe(self) -> dict:
        """The cluster as the run's manifest should record it."""
        return {
            "mode": self.mode,
            "balance": self.balance,
            "broker": self.broker,
            "transport": self.transport,
            "instances": [{"name": i.name, "url": i.url, "pid": i.pid} for i in self.instances],
            "haproxy": {"url": self.haproxy.url, "config": str(self.haproxy.config_path)} if self.haproxy else None,
            "redis": {"url": self.redis.url} if self.redis else None,
            "events": self.events,
        }

    def states(self) -> dict[str, str]:
        """HAProxy's view of each instance: UP, DOWN, DRAIN, MAINT, ..."""
        return self.haproxy.states()

    # ---- draining and faults ----

    def drain(self, index: int) -> dict:
        """Drain instance `index` (0-based): HAProxy first stops routing to it (runtime API, at once), then the
        instance closes its WebSockets with 1012 and answers its held polls; members reconnect through
        HAProxy to the others and resume with since=. Return the instance's answer, timed."""
        instance = self.instances[index]
        started = time.time()
        self.haproxy.set_state(instance.name, "drain")
        answer = drain_instance(instance.url)
        instance.drained = True
        event = {"event": "drain", "instance": instance.name, "t_unix_s": started, "t_mono_s": time.monotonic(),
                 **answer}
        self.events.append(event)
        return event

    def kill(self, index: int) -> dict:
        """SIGKILL instance `index` (0-based), as a crash: its members' connections break with no close frame."""
        instance = self.instances[index]
        event = {"event": "kill", "instance": instance.name, "pid": instance.pid, "t_unix_s": time.time(),
                 "t_mono_s": time.monotonic()}
        instance.process.kill()
        instance.killed = True
        self.events.append(event)
        return event

    def restart_instance(self, index: int) -> dict:
        """Start instance `index` again on its port (after a kill); HAProxy's checks bring it back."""
        old = self.instances[index]
        if old.process.alive:
            raise ClusterError(f"{old.name} is running")
        instance = self.instances[index] = self._spawn(old.name, old.port)  # HAProxy's file names this port
        self._wait_listening(instance)
        self.haproxy.set_state(instance.name, "ready")
        self.haproxy.wait_up([instance.name], self.startup_timeout_s)
        event = {"event": "restart_instance", "instance": instance.name, "pid": instance.pid, "t_unix_s": time.time(),
                 "t_mono_s": time.monotonic()}
        self.events.append(event)
        return event

    def restart_redis(self, down_s: float = 0.0) -> dict:
        """Restart Redis (saved and reloaded: history survives), down at least `down_s`; the instances
        reconnect and catch up by themselves. Return the event with how long Redis was unreachable."""
        if self.redis is None:
            raise ClusterError(f"mode {self.mode} with broker {self.broker} runs no Redis")
        started = time.time()
        started_mono = time.monotonic()
        outage_s = self.redis.restart(down_s, self.startup_timeout_s)
        event = {"event": "restart_redis", "t_unix_s": started, "t_mono_s": started_mono,
                 "outage_s": round(outage_s, 3), "pid": self.redis.pid}
        self.events.append(event)
        return event


# ---- `python -m experiments drain` -------------------------------------------------------------------------------


def add_drain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", required=True, help="the instance itself (not the balancer), e.g. http://127.0.0.1:8081")
    parser.add_argument("--grace", type=float, default=0.0,
                        help="seconds between leaving the health check (503) and closing the members; "
                             "longer than the balancer needs to notice (0.4 s with the generated haproxy.cfg)")
    parser.add_argument("--haproxy-admin", metavar="HOST:PORT",
                        help="HAProxy's runtime API: set the server to drain there first (then no grace is needed)")
    parser.add_argument("--server", help="the instance's server name in HAProxy (with --haproxy-admin), e.g. server-1")
    return parser


def drain_command(argv: list[str] | None = None) -> int:
    """`python -m experiments drain --url URL [--grace S] [--haproxy-admin HOST:PORT --server NAME]`."""
    p = add_drain_arguments(argparse.ArgumentParser(
        prog="python -m experiments drain",
        description="Drain one rtlab instance: out of the balancer, WebSockets closed with 1012, held polls answered.",
    ))
    a = p.parse_args(argv)
    return run_drain(a)


def run_drain(a: argparse.Namespace) -> int:
    """Run a drain from parsed arguments (add_drain_arguments); print the instance's answer as JSON."""
    try:
        if a.haproxy_admin:
            if not a.server:
                print("python -m experiments drain: --haproxy-admin needs --server", file=sys.stderr)
                return 2
            host, _, port = a.haproxy_admin.rpartition(":")
            proxy = HAProxy.__new__(HAProxy)  # only its runtime API is used
            proxy.admin_port = int(port)
            if host not in ("127.0.0.1", "localhost", ""):
                print("python -m experiments drain: the runtime API is reached on 127.0.0.1 only", file=sys.stderr)
                return 2
            proxy.set_state(a.server, "drain")
        print(json.dumps(drain_instance(a.url, a.grace)))
    except (ClusterError, OSError) as error:
        print(f"python -m experiments drain: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["drain"]:
        sys.exit(drain_command(args[1:]))
    print("usage: python -m experiments.cluster drain --url URL [--grace S]", file=sys.stderr)
    sys.exit(2)
