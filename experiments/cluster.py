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

import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .haproxy import HAProxy, proxy_idle_s
from .redis_server import ClusterError, RedisServer, _with_free_port
from .supervisor import Process, StartingServer, launch_server

ROOT = Path(__file__).resolve().parent.parent

MODES: dict[str, tuple[str, str]] = {  # mode -> (HAProxy balance, broker)
    "sticky": ("uri", "memory"),
    "pubsub": ("roundrobin", "redis"),
    "naive": ("roundrobin", "memory"),
}


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
class Instance:
    """One `python -m servers` process, on a port chosen before it starts (so HAProxy's file can name it)."""

    name: str  # server-1, server-2, ...: its HAProxy server name and its sampler label
    port: int
    process: Process
    drained: bool = False
    killed: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid


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
    port: int | None = None  # HAProxy's frontend; default: a free one
    page_port: int | None = None  # a page server HAProxy sends every path outside /rooms/ to (the cluster demo)

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
            # Port 0: each instance binds a free port itself and says which, so none is taken meanwhile.
            starting = [self._launch(f"server-{index + 1}", 0) for index in range(self.instances_count)]
            self.instances = [Instance(s.process.label, 0, s.process) for s in starting]
            for instance, server in zip(self.instances, starting, strict=True):
                instance.port = server.wait(self.startup_timeout_s).port
            self.haproxy = _with_free_port(lambda: HAProxy(
                self.directory, [(i.name, i.port) for i in self.instances], self.balance,
                binary=self.haproxy_binary, cpus=self._cpus("haproxy"), port=self.port, page_port=self.page_port,
                idle_s=proxy_idle_s(self.transport, self.knobs)).start(self.startup_timeout_s))
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, name: str, port: int) -> StartingServer:
        broker = self.redis.url if self.broker == "redis" else "memory"
        return launch_server(
            ["--transport", self.transport, "--host", "127.0.0.1", "--port", str(port), "--broker", broker,
             "--instance", name, *self.server_args],
            self.directory / f"{name}.log", label=name, cpus=self._cpus("server"), python=self.python)

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

    def describe(self, folder: Path) -> dict:
        """The cluster as the run's manifest should record it (its files' paths relative to `folder`, the point's)."""
        return {
            "mode": self.mode,
            "balance": self.balance,
            "broker": self.broker,
            "transport": self.transport,
            "instances": [{"name": i.name, "url": i.url, "pid": i.pid} for i in self.instances],
            "haproxy": {"url": self.haproxy.url, "config": str(self.haproxy.config_path.relative_to(folder))} if self.haproxy else None,
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
        server = self._launch(old.name, old.port).wait(self.startup_timeout_s)  # HAProxy's file names this port
        instance = self.instances[index] = Instance(old.name, old.port, server.process)
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


if __name__ == "__main__":
    from .drain import drain_command

    args = sys.argv[1:]
    if args[:1] == ["drain"]:
        sys.exit(drain_command(args[1:]))
    print("usage: python -m experiments.cluster drain --url URL [--grace S]", file=sys.stderr)
    sys.exit(2)
