"""Experiment files: load and validate `experiments/<name>.toml`, expand its sweep into points."""

from __future__ import annotations

import dataclasses
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from clients.profile import Profile, ProfileError, profile_from_dict
from clients.profile import keys as profile_keys
from servers import registry
from servers.config import server_settings
from servers.settings import Knob, read_toml

NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
TOP_KEYS = ("name", "description", "transports", "repeats", "processes", "profile", "sweep", "server", "cluster", "fault")
CLUSTER_MODES = ("sticky", "pubsub", "naive")  # experiments.cluster.MODES
FAULTS = ("drain", "kill", "restart-redis")

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
    processes: int  # Locust worker processes; 1 runs Locust in one process
    profile: Profile
    sweep: dict[str, tuple] = field(default_factory=dict)
    server: dict[str, object] = field(default_factory=dict)
    source: str = ""
    cluster: dict[str, tuple] = field(default_factory=dict)  # instances, modes: several instances behind HAProxy
    fault: dict[str, object] = field(default_factory=dict)  # kind, at_s, instance (1-based)

    @property
    def point_keys(self) -> list[str]:
        """The parameters that tell points apart: the swept profile keys, then the cluster's."""
        return [*self.sweep, *(["instances", "mode"] if self.cluster else [])]

    def points(self) -> list[Point]:
        """Every sweep combination × repeat × transport, in run order (transports innermost)."""
        keys = list(self.sweep)
        combos = list(itertools.product(*(self.sweep[k] for k in keys))) or [()]
        clusters = [{"instances": n, "mode": m} for n in self.cluster.get("instances", ())
                    for m in self.cluster.get("modes", ())] or [{}]
        out = []
        for values in combos:
            swept = dict(zip(keys, values, strict=True))
            profile = self.profile.replace(**swept)
            for cluster in clusters:
                for repeat in range(1, self.repeats + 1):
                    for transport in self.transports:
                        out.append(Point(transport, repeat, {**swept, **cluster}, profile))
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
            "profile": self.profile.as_dict(),
            "sweep": {k: list(v) for k, v in self.sweep.items()},
            "server": dict(self.server),
            "cluster": {k: list(v) for k, v in self.cluster.items()},
            "fault": dict(self.fault),
            "source": self.source,
        }


@dataclass(frozen=True)
class Point:
    transport: str
    repeat: int
    swept: dict[str, object]
    profile: Profile

    @property
    def slug(self) -> str:
        """A folder built from the parameters, e.g. `users=200/websocket-r1` (`websocket-r1` with no sweep)."""
        run = f"{self.transport}-r{self.repeat}"
        params = ",".join(f"{k}={v}" for k, v in self.swept.items())
        return f"{params}/{run}" if params else run


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; raise SpecError naming the file and the key."""
    return experiment_from_dict(read_toml(Path(path), SpecError, "experiment"), str(path))


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
    processes = _int(data.get("processes", 1), 1, 64, lambda p: fail("processes", p))

    try:
        profile = profile_from_dict(data["profile"], f"{source}: [profile]")
    except ProfileError as error:
        raise SpecError(str(error)) from None

    sweep_data = data.get("sweep", {})
    if not isinstance(sweep_data, dict):
        raise fail("sweep", "must be a table of lists")
    sweep: dict[str, tuple] = {}
    for key, values in sweep_data.items():
        if key not in profile_keys():
            raise fail(f"sweep.{key}", f"not a profile key; the keys are {', '.join(profile_keys())}")
        if not isinstance(values, list) or not values:
            raise fail(f"sweep.{key}", "must be a non-empty list")
        if len(set(map(repr, values))) != len(values):
            raise fail(f"sweep.{key}", "lists a value twice")
        for value in values:
            try:
                profile.replace(**{key: value})
            except (ProfileError, TypeError) as error:
                raise fail(f"sweep.{key}", str(error)) from None
        sweep[key] = tuple(values)

    server = data.get("server", {})
    if not isinstance(server, dict):
        raise fail("server", "must be a table")
    server = dict(server)
    allowed = server_keys()
    for key, value in server.items():
        if key not in allowed:
            raise fail(f"server.{key}", f"unknown key; the keys are {', '.join(allowed)}")
        try:
            server[key] = allowed[key].check(value)
        except ValueError as error:
            raise fail(f"server.{key}", str(error)) from None

    cluster = _cluster(data.get("cluster", {}), fail)
    fault = _fault(data.get("fault", {}), cluster, profile, fail)
    return Experiment(name, description, tuple(transports), repeats, processes, profile, sweep, dict(server), source,
                      cluster, fault)


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
