"""Experiment files: load and validate `experiments/<name>.toml`, expand its sweep into points."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from clients.profile import Profile, ProfileError, profile_from_dict
from clients.profile import keys as profile_keys
from servers import registry
from servers.config import server_settings
from servers.settings import Knob, read_toml

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOP_KEYS = ("name", "description", "transports", "repeats", "processes", "stop_at_limit", "light_load", "profile", "sweep",
            "server", "cluster", "fault", "network", "capture")
CLUSTER_MODES = ("sticky", "pubsub", "naive")  # experiments.cluster.MODES
FAULTS = ("drain", "kill", "restart-redis")
# [network]: the impairment of the point's own network namespace (experiments/network.py, docs/network.md).
NETWORK_KEYS = ("loss_percent", "rate_mbit", "delay_ms", "jitter_ms")
# [network] http: the HTTP the members speak, through a TLS proxy in front of the server (experiments/haproxy.py's
# HTTP_ARMS: "1.1" over TLS, "2" over TLS, "h2c"); absent, they talk to the server directly. Sweepable. Not an
# impairment: a [network] with only this key runs on the machine's loopback, without a namespace.
HTTP_KEY = "http"
HTTP_VALUES = ("1.1", "2", "h2c")
LOSS_STEP_PERCENT = 0.01  # the drop rule compares a random number mod 10 000: hundredths of a per cent
# [server] keys the runner applies itself, not flags of the server: the server's CPU limit, in a cgroup of its own
# (experiments/cgroup.py). cpu_limit is in CPUs (0.5: half of one), 0 for none (the group counts its CPU all the same),
# and may be swept; cpu_period_ms is the CFS period the limit is enforced over.
CPU_KEYS = ("cpu_limit", "cpu_period_ms")
CPU_PERIOD_MS = 20.0
CAPACITY_LOADS = ("users", "messages_per_second")  # what a capacity sweep grows

def server_keys() -> dict[str, Knob]:
    """The settings an experiment's [server] table may fix: the server's own that allow it and every
    transport's knobs (servers.config.server_settings); recorded in the manifest, so a run says how it ran."""
    return {name: knob for name, knob in server_settings().items() if knob.experiment}

QUICK_DURATION_S = 8
QUICK_WARMUP_S = 2.0


class SpecError(ValueError):
    """An experiment file that must not start; the message names the file and the key."""


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    transports: tuple[str, ...]
    repeats: int
    processes: int  # Locust worker processes; 1 runs Locust in one process; 0: "auto", one per generator CPU
    profile: Profile
    sweep: dict[str, tuple] = field(default_factory=dict)
    server: dict[str, object] = field(default_factory=dict)
    source: str = ""
    cluster: dict[str, tuple] = field(default_factory=dict)  # instances, modes: several instances behind HAProxy
    fault: dict[str, object] = field(default_factory=dict)  # kind, at_s, instance (1-based)
    # A capacity sweep (of users or messages_per_second): once a transport hit a limit (figures.capacity: the
    # server's, or the generator saturated), its heavier points are skipped, and the manifest says why.
    stop_at_limit: bool = False
    # [network] and its swept keys: None runs on the machine's loopback; a dict (empty too) runs each point in a
    # network namespace of its own with that impairment (experiments/network.py).
    network: dict[str, float] | None = None
    # Count every point's TCP bytes with a packet capture on the members' port (experiments/capture.py); its
    # payload is then every row's wire bytes, one method for servers with a meter and those without.
    capture: bool = False
    http: str | None = None  # [network] http (or swept): the members' HTTP through a proxy; None: direct
    # With CPU limits and a load sweep: the load at which each transport also runs without a limit (cpu_limit 0),
    # for the check that the limit makes its work neither cheaper nor dearer (figures.limit_cost).
    light_load: float | None = None
    # The file's keys changed for this run (`--set profile.duration_s=690`): dotted key -> value, recorded in the
    # manifest beside the resolved experiment, so a run says where it departs from its file.
    overrides: dict[str, object] = field(default_factory=dict)

    @property
    def cpu_limits(self) -> tuple[float, ...]:
        """The server's CPU limits: [sweep] cpu_limit's, else [server] cpu_limit, else none (no cgroup)."""
        if "cpu_limit" in self.sweep:
            return tuple(float(v) for v in self.sweep["cpu_limit"])
        return (float(self.server["cpu_limit"]),) if "cpu_limit" in self.server else ()

    @property
    def cpu_period_us(self) -> int:
        return round(float(self.server.get("cpu_period_ms", CPU_PERIOD_MS)) * 1000)

    @property
    def server_options(self) -> dict[str, object]:
        """[server] without the keys the runner applies itself: the settings passed to the server as flags."""
        return {k: v for k, v in self.server.items() if k not in CPU_KEYS}

    @property
    def load_key(self) -> str | None:
        """The load a capacity sweep grows: users or messages_per_second, whichever is swept."""
        return next((k for k in CAPACITY_LOADS if k in self.sweep), None)

    @property
    def point_keys(self) -> list[str]:
        """The parameters that tell points apart: the swept profile and network keys (and the CPU limit, swept or
        not, when the server has one), then the cluster's."""
        limit = ["cpu_limit"] if self.cpu_limits and "cpu_limit" not in self.sweep else []
        return [*self.sweep, *limit, *(["instances", "mode"] if self.cluster else [])]

    def points(self) -> list[Point]:
        """Every sweep combination × repeat × transport, in run order (transports innermost; with CPU limits, a
        transport's limits right after each other, so the points compared at one load run minutes apart at most).
        At the light load, each transport runs without a limit (cpu_limit 0) before its limits."""
        keys = [k for k in self.sweep if k != "cpu_limit"]
        combos = list(itertools.product(*(self.sweep[k] for k in keys))) or [()]
        clusters = [{"instances": n, "mode": m} for n in self.cluster.get("instances", ())
                    for m in self.cluster.get("modes", ())] or [{}]
        out = []
        for values in combos:
            swept = dict(zip(keys, values, strict=True))
            profile = self.profile.replace(**{k: v for k, v in swept.items() if k not in (*NETWORK_KEYS, HTTP_KEY)})
            network = None if self.network is None else \
                {**self.network, **{k: float(v) for k, v in swept.items() if k in NETWORK_KEYS}}
            limits: tuple[float | None, ...] = self.cpu_limits or (None,)
            if self.light_load is not None and swept.get(self.load_key) == self.light_load and 0 not in limits:
                limits = (0.0, *limits)
            for cluster in clusters:
                for repeat in range(1, self.repeats + 1):
                    for transport in self.transports:
                        for limit in limits:
                            at = {**swept, **({} if limit is None else {"cpu_limit": limit}), **cluster}
                            ordered = {k: at[k] for k in self.point_keys}  # the file's order, for folders and columns
                            out.append(Point(transport, repeat, ordered, profile, network,
                                             swept.get(HTTP_KEY, self.http), limit))
        return out

    def quick(self) -> Experiment:
        """The same experiment with short durations, for a smoke run."""
        def shorten(p: Profile) -> Profile:
            duration = min(p.duration_s, QUICK_DURATION_S)
            return p.replace(duration_s=duration, warmup_s=min(p.warmup_s, QUICK_WARMUP_S, duration / 4))

        fault = dict(self.fault)
        if fault:
            quick_duration = shorten(self.profile).duration_s
            fault["at_s"] = min(float(fault["at_s"]), quick_duration / 2)
        return dataclasses.replace(self, profile=shorten(self.profile), sweep={
            k: v for k, v in self.sweep.items() if k not in ("duration_s", "warmup_s")
        }, fault=fault)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "transports": list(self.transports),
            "repeats": self.repeats,
            "processes": self.processes,
            "stop_at_limit": self.stop_at_limit,
            "light_load": self.light_load,
            "profile": self.profile.as_dict(),
            "sweep": {k: list(v) for k, v in self.sweep.items()},
            "server": dict(self.server),
            "cluster": {k: list(v) for k, v in self.cluster.items()},
            "fault": dict(self.fault),
            "network": None if self.network is None else dict(self.network),
            "capture": self.capture,
            "http": self.http,
            "source": self.source,
            "overrides": dict(self.overrides),
        }


@dataclass(frozen=True)
class Point:
    transport: str
    repeat: int
    swept: dict[str, object]
    profile: Profile
    network: dict[str, float] | None = None  # the impairment at this point ([network] with its swept keys)
    http: str | None = None  # the members' HTTP through the proxy (HTTP_VALUES), or None: direct to the server
    cpu_limit: float | None = None  # the server's CPU limit (0: none, in a cgroup all the same); None: no cgroup

    @property
    def slug(self) -> str:
        """A folder built from the parameters, e.g. `users=200/websocket-r1` (`websocket-r1` with no sweep)."""
        run = f"{self.transport}-r{self.repeat}"
        params = ",".join(f"{k}={v}" for k, v in self.swept.items())
        return f"{params}/{run}" if params else run


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> Experiment:
    """Read and validate an experiment file, with some of its keys changed (`overrides`: `KEY=VALUE` texts, see
    apply_overrides); raise SpecError naming the file and the key."""
    data = read_toml(Path(path), SpecError, "experiment")
    changed = apply_overrides(data, overrides)
    experiment = experiment_from_dict(data, str(path))
    return dataclasses.replace(experiment, overrides=changed) if changed else experiment


def apply_overrides(data: dict, assignments: Iterable[str]) -> dict[str, object]:
    """Set each `KEY=VALUE` of `assignments` in the decoded file `data` before it is validated, and return them as
    {KEY: value}. KEY is dotted: a top-level key (`transports`) or a table's (`profile.duration_s`, `server.history`,
    `sweep.users`, `network.loss_percent`); a table the file lacks is made. VALUE is a TOML value (`690`, `0.5`,
    `true`, `["websocket", "sse"]`, `"text"`), or else taken as text (`arrival=poisson`). What the file then says is
    checked as if it had been written so: a wrong key or value is the file's error, naming the key."""
    changed: dict[str, object] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        key = key.strip()
        path = key.split(".")
        if not equals or not all(NAME_RE.fullmatch(part) for part in path):
            raise SpecError(f"--set {assignment!r}: write KEY=VALUE, KEY a key or table.key of the experiment file "
                            f"(e.g. profile.duration_s=690); the top-level keys are {', '.join(TOP_KEYS)}")
        if path[0] not in TOP_KEYS:
            raise SpecError(f"--set {key}: unknown key {path[0]!r}; the keys are {', '.join(TOP_KEYS)}")
        try:
            value = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: text
        table = data
        for depth, part in enumerate(path[:-1], 1):
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise SpecError(f"--set {key}: {'.'.join(path[:depth])} is a value, not a table")
        table[path[-1]] = value
        changed[key] = value
    return changed


def experiment_from_dict(data: dict, source: str) -> Experiment:
    def fail(key: str, problem: str) -> SpecError:
        return SpecError(f"{source}: {key}: {problem}")

    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown key; the keys are {', '.join(TOP_KEYS)}")
    for key in ("name", "transports", "profile"):
        if key not in data:
            raise fail(key, "missing")

    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise fail("name", "must match ^[A-Za-z0-9_-]{1,64}$")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", "must be a string")

    transports = data["transports"]
    known = registry.names(None)
    if transports == "all":  # rtlab's own transports, whichever the registry holds when the file runs
        transports = list(registry.names())
    if not isinstance(transports, list) or not transports:
        raise fail("transports", f'must be "all" or a non-empty list of {", ".join(known)}')
    for t in transports:
        if t not in known:
            raise fail("transports", f"unknown transport {t!r}; choose from {', '.join(known)}")
    if len(set(transports)) != len(transports):
        raise fail("transports", "lists a transport twice")

    repeats = _int(data.get("repeats", 1), 1, 100, lambda p: fail("repeats", p))
    # "auto": one Locust process per CPU the load generator is pinned to (the runner decides, per machine).
    processes = 0 if data.get("processes") == "auto" else _int(data.get("processes", 1), 1, 64,
                                                             lambda p: fail("processes", f'{p}, or "auto"'))
    stop_at_limit = data.get("stop_at_limit", False)
    if not isinstance(stop_at_limit, bool):
        raise fail("stop_at_limit", "must be true or false")
    capture = data.get("capture", False)
    if not isinstance(capture, bool):
        raise fail("capture", "must be true or false")

    try:
        profile = profile_from_dict(data["profile"], f"{source}: [profile]")
    except ProfileError as error:
        raise SpecError(str(error)) from None

    sweep_data = data.get("sweep", {})
    if not isinstance(sweep_data, dict):
        raise fail("sweep", "must be a table of lists")
    sweep: dict[str, tuple] = {}
    period_ms = _period_ms(data.get("server", {}), fail)
    for key, values in sweep_data.items():
        if key not in profile_keys() and key not in NETWORK_KEYS and key not in (HTTP_KEY, "cpu_limit"):
            raise fail(f"sweep.{key}", f"not a profile or network key, nor cpu_limit; the keys are "
                                       f"{', '.join([*profile_keys(), *NETWORK_KEYS, HTTP_KEY, 'cpu_limit'])}")
        if not isinstance(values, list) or not values:
            raise fail(f"sweep.{key}", "must be a non-empty list")
        if len(set(map(repr, values))) != len(values):
            raise fail(f"sweep.{key}", "lists a value twice")
        for value in values:
            if key == HTTP_KEY:
                http_value(value, lambda p: fail(f"sweep.{key}", p))
                continue
            if key in NETWORK_KEYS:
                network_value(key, value, lambda p, key=key: fail(f"sweep.{key}", p))
                continue
            if key == "cpu_limit":
                cpu_limit_value(value, period_ms, lambda p: fail("sweep.cpu_limit", p))
                continue
            try:
                profile.replace(**{key: value})
            except (ProfileError, TypeError) as error:
                raise fail(f"sweep.{key}", str(error)) from None
        sweep[key] = tuple(values)

    loads = [k for k in sweep if k != "cpu_limit"]
    if stop_at_limit and (loads not in (["users"], ["messages_per_second"]) or data.get("cluster")):
        raise fail("stop_at_limit", "needs a sweep of users or of messages_per_second (and of cpu_limit, if any) "
                                    "alone, on one server")

    server = data.get("server", {})
    if not isinstance(server, dict):
        raise fail("server", "must be a table")
    server = dict(server)
    allowed = server_keys()
    for key, value in server.items():
        if key == "cpu_limit":
            server[key] = cpu_limit_value(value, period_ms, lambda p: fail("server.cpu_limit", p))
            continue
        if key == "cpu_period_ms":
            server[key] = period_ms
            continue
        if key not in allowed:
            raise fail(f"server.{key}", f"unknown key; the keys are {', '.join([*allowed, *CPU_KEYS])}")
        try:
            server[key] = allowed[key].check(value)
        except ValueError as error:
            raise fail(f"server.{key}", str(error)) from None

    cluster = _cluster(data.get("cluster", {}), fail)
    limited = "cpu_limit" in server or "cpu_limit" in sweep
    if limited and cluster:
        raise fail("server.cpu_limit" if "cpu_limit" in server else "sweep.cpu_limit",
                   "limits one server's CPU; a [cluster]'s instances are not limited")
    fault = _fault(data.get("fault", {}), cluster, profile, fail)
    network_data = data.get("network")
    http = None
    if isinstance(network_data, dict) and HTTP_KEY in network_data:
        network_data = dict(network_data)
        http = http_value(network_data.pop(HTTP_KEY), lambda p: fail(f"network.{HTTP_KEY}", p))
        network_data = network_data or None  # http alone is no impairment: no namespace
    if (http is not None or HTTP_KEY in sweep) and cluster:
        raise fail(f"network.{HTTP_KEY}", "puts one proxy before one server; a [cluster] has its own HAProxy")
    network = _network(network_data, sweep, fail)
    light_load = _light_load(data.get("light_load"), limited, sweep, fail)
    return Experiment(name, description, tuple(transports), repeats, processes, profile, sweep, dict(server), source,
                      cluster, fault, stop_at_limit, network, capture, http, light_load)


def http_value(value: object, fail) -> str:
    """Check one [network] http value (or a swept one); raise `fail(problem)` if bad."""
    if value not in HTTP_VALUES:
        raise fail(f'must be one of {", ".join(repr(v) for v in HTTP_VALUES)} (a string), got {value!r}')
    return str(value)


def cpu_limit_value(value: object, period_ms: float, fail) -> float:
    """Check one CPU limit (in CPUs; 0: none) and return it as a float; raise `fail(problem)` if bad."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise fail(f"must be a number of CPUs (0.5: half of one; 0: no limit), got {value!r}")
    value = float(value)
    least = 1.0 / period_ms  # the kernel's smallest quota, 1 ms a period
    if value != 0 and not least <= value <= 64:
        raise fail(f"must be 0 (no limit) or from {least:g} (a 1 ms quota each {period_ms:g} ms period, the "
                   f"kernel's least) to 64 CPUs, got {value:g}")
    return value


def _period_ms(server: object, fail) -> float:
    value = server.get("cpu_period_ms", CPU_PERIOD_MS) if isinstance(server, dict) else CPU_PERIOD_MS
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 1000:
        raise fail("server.cpu_period_ms", f"must be from 1 to 1000 ms (the CFS periods the kernel accepts), got "
                                           f"{value!r}")
    if abs(value * 1000 - round(value * 1000)) > 1e-6:
        raise fail("server.cpu_period_ms", f"is applied in whole microseconds, got {value!r}")
    return float(value)


def _light_load(value: object, limited: bool, sweep: dict[str, tuple], fail) -> float | None:
    """light_load: one of the swept loads, where each transport also runs without its CPU limit."""
    if value is None:
        return None
    load_key = next((k for k in CAPACITY_LOADS if k in sweep), None)
    if not limited or load_key is None:
        raise fail("light_load", "needs a CPU limit ([server] or [sweep] cpu_limit) and a sweep of users or "
                                 "messages_per_second")
    if isinstance(value, bool) or value not in sweep[load_key]:
        raise fail("light_load", f"must be one of sweep.{load_key} ({', '.join(map(str, sweep[load_key]))}), so the "
                                 f"limited points there are compared with it, got {value!r}")
    return value


def network_value(key: str, value: object, fail) -> float:
    """Check one [network] value (or a swept one) and return it as a float; raise `fail(problem)` if bad."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise fail(f"must be a number, got {value!r}")
    value = float(value)
    if key == "loss_percent":
        if not 0 <= value <= 100:
            raise fail(f"must be from 0 to 100 (per cent of packets dropped), got {value:g}")
        if abs(value / LOSS_STEP_PERCENT - round(value / LOSS_STEP_PERCENT)) > 1e-6:
            raise fail(f"is applied in steps of {LOSS_STEP_PERCENT} %, got {value:g}")
    elif key == "rate_mbit":
        if not 0 < value <= 100_000:
            raise fail(f"must be more than 0 and at most 100000 Mbit/s, got {value:g}")
    elif not 0 <= value <= 60_000:  # delay_ms, jitter_ms
        raise fail(f"must be from 0 to 60000 ms, got {value:g}")
    return value


def _network(data: object, sweep: dict[str, tuple], fail) -> dict[str, float] | None:
    """[network] as {key: float}, or None when the file neither has the table nor sweeps one of its keys. A swept
    key's values replace its value here at each point, as a swept profile key's replace [profile]'s."""
    if data is None and not any(k in NETWORK_KEYS for k in sweep):
        return None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise fail("network", f"must be a table with {', '.join(NETWORK_KEYS)}")
    unknown = sorted(set(data) - set(NETWORK_KEYS))
    if unknown:
        raise fail(f"network.{unknown[0]}", f"unknown key; the keys are {', '.join(NETWORK_KEYS)}")
    network = {key: network_value(key, value, lambda p, key=key: fail(f"network.{key}", p))
               for key, value in data.items()}
    # Jitter varies the delay around delay_ms: it needs a delay at every point, and no more than it.
    delays = sweep.get("delay_ms", (network.get("delay_ms", 0.0),))
    jitters = sweep.get("jitter_ms", (network.get("jitter_ms", 0.0),))
    if max(jitters) > 0 and max(jitters) > min(delays):
        where = "sweep.jitter_ms" if "jitter_ms" in sweep else "network.jitter_ms"
        raise fail(where, f"must be at most delay_ms at every point ({min(delays):g} ms), got {max(jitters):g}")
    return network


def _cluster(data: object, fail) -> dict[str, tuple]:
    if not isinstance(data, dict):
        raise fail("cluster", "must be a table with instances and modes")
    if not data:
        return {}
    unknown = sorted(set(data) - {"instances", "modes"})
    if unknown:
        raise fail(f"cluster.{unknown[0]}", "unknown key; the keys are instances, modes")
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        raise fail("cluster.instances", "must be a non-empty list of instance counts")
    for n in instances:
        _int(n, 1, 8, lambda p: fail("cluster.instances", p))
    modes = data.get("modes")
    if not isinstance(modes, list) or not modes or any(m not in CLUSTER_MODES for m in modes):
        raise fail("cluster.modes", f"must be a non-empty list of {', '.join(CLUSTER_MODES)}")
    return {"instances": tuple(instances), "modes": tuple(modes)}


def _fault(data: object, cluster: dict, profile: Profile, fail) -> dict[str, object]:
    if not isinstance(data, dict):
        raise fail("fault", "must be a table with kind, at_s and instance")
    if not data:
        return {}
    if not cluster:
        raise fail("fault", "needs a [cluster]: faults happen to instances behind HAProxy")
    unknown = sorted(set(data) - {"kind", "at_s", "instance"})
    if unknown:
        raise fail(f"fault.{unknown[0]}", "unknown key; the keys are kind, at_s, instance")
    if data.get("kind") not in FAULTS:
        raise fail("fault.kind", f"must be one of {', '.join(FAULTS)}")
    at_s = data.get("at_s")
    if isinstance(at_s, bool) or not isinstance(at_s, (int, float)) or not profile.warmup_s < at_s < profile.duration_s:
        raise fail("fault.at_s", f"must be a number between warmup_s ({profile.warmup_s}) and duration_s "
                                 f"({profile.duration_s}), got {at_s!r}")
    instance = _int(data.get("instance", 1), 1, 8, lambda p: fail("fault.instance", p))
    if data["kind"] in ("drain", "kill") and min(cluster["instances"]) < 2:
        raise fail("fault.kind", f"{data['kind']} needs at least 2 instances, so members have somewhere to go")
    if instance > min(cluster["instances"]):
        raise fail("fault.instance", f"must name one of the instances (at most {min(cluster['instances'])})")
    if data["kind"] == "restart-redis" and "pubsub" not in cluster["modes"]:
        raise fail("fault.kind", "restart-redis needs the pubsub mode (the only one with Redis)")
    return {"kind": data["kind"], "at_s": float(at_s), "instance": instance}


def _int(value: object, low: int, high: int, fail) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise fail(f"must be from {low} to {high}, got {value}")
    return value
