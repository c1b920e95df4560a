"""Run an experiment: for every point, the same lifecycle on fresh processes, raw files kept, then a summary.

server (pinned to one CPU) → /healthz → Locust headless (pinned to the others) + resource sampler →
/metrics scraped when the measured window opens (every member joined: Locust's measuring.json) and at its
end → everything stopped in `finally`, so Ctrl-C or a crash leaves no process behind.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import http.client
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from clients.results import MEASURING_MARKER
from servers import registry
from servers.config import server_settings

from . import capture as packet_capture
from . import cgroup, figures, network
from .spec import Experiment, Point, SpecError
from .summary import SUMMARY_COLUMNS, add_ratios, summarize_point
from .supervisor import Group, start_server

ROOT = Path(__file__).resolve().parent.parent
SERVER_START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
# How long after its scheduled end a Locust run may take to write its files before it is killed.
LOCUST_GRACE_S = 60.0


def server_flags(key: str, value: object) -> list[str]:
    """The `python -m servers` arguments for one [server] key (a declared setting or a transport's knob)."""
    return server_settings()[key].cli_args(value)


@dataclass
class Pinning:
    """Which CPUs the server and the load generator run on; recorded in the manifest."""

    server: list[int]
    generator: list[int]

    @classmethod
    def choose(cls) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(cpus, cpus)  # one CPU: they share it, and the manifest says so
        return cls(cpus[:1], cpus[1:])


# Where the runner's own requests come from: None, the kernel's choice; inside an impaired namespace,
# network.OBSERVER_ADDRESS, which the loss rule lets through (set around each such point).
observer_source: str | None = None


def http_get(url: str, timeout: float = 5.0) -> str:
    if observer_source is None:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                            source_address=(observer_source, 0))
    try:
        connection.request("GET", parts.path or "/")
        response = connection.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise urllib.error.HTTPError(url, response.status, response.reason, response.headers, None)
        return body
    finally:
        connection.close()


def wait_healthy(url: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return json.loads(http_get(f"{url}/healthz"))
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def delivered_total(metrics_text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith("rtlab_messages_delivered_total")
    )


def write_profile(point: Point, path: Path) -> None:
    lines = [f"{k} = {json.dumps(v)}" for k, v in point.profile.as_dict().items()]
    path.write_text("\n".join(lines) + "\n")


class Display:
    """Live progress: the point, its elapsed time and the current delivery rate (rich when available)."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet = total, quiet
        self._printed: tuple[int, str] | None = None
        self._live = None
        if not quiet and sys.stdout.isatty():
            from rich.live import Live

            self._live = Live(refresh_per_second=4, transient=True)
            self._live.start()

    def update(self, index: int, point: Point, phase: str, elapsed_s: float, rate: float | None) -> None:
        rate_text = f"{rate:,.0f} deliveries/s" if rate is not None else "—"
        line = (f"[{index}/{self.total}] {point.slug}  {phase:<8} {elapsed_s:5.0f}/{point.profile.duration_s} s"
                f"  {rate_text}")
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line))
        elif not self.quiet and self._printed != (index, phase):
            self._printed = (index, phase)  # without a terminal: one line per phase, not a stream
            print(line, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()


def run_point(experiment: Experiment, point: Point, index: int, point_dir: Path, pinning: Pinning,
              display: Display, limit: cgroup.Cgroup | None = None, hash_seed: int | None = None) -> dict:
    """Run one transport at one point on fresh processes (the server in `limit`'s cgroup, when given, and with
    PYTHONHASHSEED `hash_seed`, when given); return what the summary needs to find its files."""
    point_dir.mkdir(parents=True, exist_ok=True)
    write_profile(point, point_dir / "profile.toml")
    procs = Group()
    flags = [flag for key, value in experiment.server_options.items() for flag in server_flags(key, value)]
    window: dict[str, float] = {}
    cluster = proxy = None
    try:
        if "mode" in point.swept:
            from .cluster import Cluster

            cluster = Cluster(
                point.transport, int(point.swept["instances"]), str(point.swept["mode"]), point_dir / "cluster",
                server_args=["--no-access-log", *flags], cpus=pinning.server,
                knobs={k: v for k, v in experiment.server.items() if k in registry.server_knobs()},
            ).start()
            url = cluster.url
            scrape_urls = {i.name: i.url for i in cluster.instances}
            targets = cluster.pids()
        else:
            server = start_server(
                ["--transport", point.transport, "--host", "127.0.0.1", "--no-access-log", *flags],
                point_dir / "server.log", cpus=pinning.server, timeout_s=SERVER_START_TIMEOUT_S, group=procs,
                cgroup=limit, env=None if hash_seed is None else {**os.environ, "PYTHONHASHSEED": str(hash_seed)},
            )
            url = server.url
            scrape_urls = {"server": url}
            targets = {"server": server.process.pid}
            if point.http:  # the members' HTTP through a TLS proxy: they talk to it, it talks HTTP/1.1 to the server
                proxy = start_proxy(experiment, point, server.port, point_dir, pinning)
                url = proxy.url
                targets[figures.PROXY_LABEL] = proxy.pid
        health = wait_healthy(next(iter(scrape_urls.values())), SERVER_START_TIMEOUT_S)
        capture = start_capture(experiment, point_dir, pinning, procs, url, scrape_urls)

        extra = ["--", "--processes", str(experiment.processes)] if experiment.processes > 1 else []
        started = time.monotonic()
        locust = procs.start(
            "locust",
            [sys.executable, "-m", "clients", "--transport", point.transport, "--host", url,
             "--profile", repo_relative(point_dir / "profile.toml"), "--headless", "--out", repo_relative(point_dir),
             *proxy_client_args(proxy), *extra],
            point_dir / "locust.log", cpus=pinning.generator,
        )
        observers = {packet_capture.LABEL: capture.pid} if capture and capture.pid else {}
        sampled = [arg for label, pid in {**targets, "generator": locust.pid, **observers}.items()
                   for arg in ("--pid", str(pid), "--label", label)]
        procs.start(
            "sampler",
            [sys.executable, "-m", "experiments.sampler", *sampled, "--children", "--self",
             "--out", str(point_dir / "resources.csv"),
             "--max-duration", str(point.profile.duration_s + LOCUST_GRACE_S)],
            point_dir / "sampler.log", cpus=pinning.generator,  # the observer never runs on the server's CPU
        )

        test_start = started + startup_delay(point_dir, started)
        measure_from = None  # when Locust says every member has joined (window_opened)
        measure_to = test_start + point.profile.duration_s - 0.5  # before Locust stops its users
        fault_at = test_start + float(experiment.fault["at_s"]) if experiment.fault else None
        last_total, last_t, next_rate_at, rate = None, None, 0.0, None
        for _ in range(int((point.profile.duration_s + LOCUST_GRACE_S) * 10)):  # bounded
            now = time.monotonic()
            if not locust.alive:
                break
            if measure_from is None:
                measure_from = window_opened(point_dir)
            if "before" not in window and measure_from is not None and now >= measure_from:
                if capture:
                    capture.mark("before")
                scrape_all(scrape_urls, point_dir, "metrics_before")
                window["before"] = time.monotonic()
                record_cgroup(limit, point_dir, "start")
            if fault_at is not None and now >= fault_at:
                fault_at = None
                inject_fault(cluster, experiment.fault)
            if "after" not in window and "before" in window and now >= measure_to:
                if capture:
                    capture.mark("after")
                scrape_all(scrape_urls, point_dir, "metrics_after")
                window["after"] = time.monotonic()
                record_cgroup(limit, point_dir, "end")
            # The live rate for the display: not in the last seconds, so a slow scrape cannot delay the window's end.
            if now >= next_rate_at and now < measure_to - 6:
                next_rate_at = now + 1.0
                total = sum(delivered_total(text) for text in scrape_texts(scrape_urls).values())
                if last_total is not None and now > last_t:
                    rate = (total - last_total) / (now - last_t)
                last_total, last_t = total, now
            phase = "warm-up" if measure_from is None or now < measure_from else ("measure" if now < measure_to else "finish")
            display.update(index, point, phase, now - test_start, rate)
            time.sleep(0.1)
        code = locust.wait(LOCUST_GRACE_S)
        if capture:
            finish_capture(capture, scrape_urls, point_dir)
        if "before" not in window:
            raise RuntimeError(f"Locust never opened the measured window; see {point_dir / 'locust.log'}")
        health_end = health_after(next(iter(scrape_urls.values())))  # after the capture's end: the meter counts it
        if "after" not in window:
            raise RuntimeError(f"Locust ended before the measured window did; see {point_dir / 'locust.log'}")
        if code not in (0, 1):  # 1: Locust saw failures (losses are failures); still a result
            raise RuntimeError(f"Locust exited with {code}; see {point_dir / 'locust.log'}")
    finally:
        procs.stop_all()
        if cluster is not None:
            cluster.stop()
        if proxy is not None:
            proxy.stop()
    return {
        "pids": {**{p.label: p.pid for p in procs.processes}, **targets},
        "health": health,
        "health_end": health_end,
        "window_mono_s": [window["before"], window["after"]],
        "cluster": cluster.describe(point_dir) if cluster is not None else None,
        "capture": capture.describe() if capture else None,
        "proxy": describe_proxy(proxy, pinning, point_dir),
    }


def start_proxy(experiment: Experiment, point: Point, server_port: int, point_dir: Path, pinning: Pinning):
    """HAProxy before the server for the point's HTTP arm (experiments/haproxy.py), on the server's CPUs: what the
    proxy costs is the serving side's; its timeouts above every transport's longest silence."""
    from .haproxy import HTTP_ARMS, HAProxy, proxy_idle_s

    knobs = {k: v for k, v in experiment.server.items() if k in registry.server_knobs()}
    return HAProxy(point_dir / "proxy", [("server-1", server_port)], "roundrobin", cpus=pinning.server,
                   arm=HTTP_ARMS[point.http], idle_s=proxy_idle_s(point.transport, knobs)).start(SERVER_START_TIMEOUT_S)


def proxy_client_args(proxy) -> list[str]:
    """`python -m clients` arguments for members that talk to `proxy` (none without one)."""
    if proxy is None:
        return []
    return ["--http", proxy.arm.client_http, *(["--tls-ca", repo_relative(proxy.ca_path)] if proxy.ca_path else [])]


def describe_proxy(proxy, pinning: Pinning, point_dir: Path) -> dict | None:
    if proxy is None:
        return None
    return {"http": proxy.arm.name, "label": proxy.arm.label, "url": proxy.url, "cpus": pinning.server,
            "config": str(proxy.config_path.relative_to(point_dir)), "pid": proxy.pid}  # in the point's folder


def http_preflight(experiment: Experiment) -> None:
    """Refuse, before anything starts, an experiment whose HTTP arms this machine's HAProxy cannot give (SpecError:
    exit 2, naming what is missing)."""
    from .haproxy import http_unavailable

    arms = sorted({point.http for point in experiment.points() if point.http})
    if arms:
        problem = http_unavailable(arms)
        if problem:
            raise SpecError(f"{experiment.source}: [network] http = {', '.join(arms)}: {problem}; nothing was started")


def start_capture(experiment: Experiment, point_dir: Path, pinning: Pinning, procs: Group, url: str,
                  scrape_urls: dict[str, str]) -> packet_capture.Capture | None:
    """With `capture = true`: count the members' port (the URL Locust is given) from before the first member
    connects; `metrics_start` is the meter's reading at that moment (the capture's zero)."""
    if not experiment.capture:
        return None
    capture = packet_capture.Capture(point_dir, pinning.generator, procs, network.OBSERVER_ADDRESS)
    capture.add(packet_capture.FRONT, urllib.parse.urlsplit(url).port)
    capture.start()
    scrape_all(scrape_urls, point_dir, "metrics_start")
    return capture


def finish_capture(capture: packet_capture.Capture, scrape_urls: dict[str, str], point_dir: Path,
                   timeout_s: float = 5.0) -> None:
    """Once Locust is gone: wait until the server holds no member's connection and its byte counters stand
    still (bounded), read them (`metrics_end`), then stop the capture, which counts what is queued still."""
    last = None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        texts = scrape_texts(scrape_urls)
        now = [sum(figures.metric_total(figures.parse_metrics(t), name) for t in texts.values())
               for name in ("rtlab_wire_received_bytes_total", "rtlab_wire_sent_bytes_total", "rtlab_connections_open")]
        if now == last and now[2] == 0:
            break
        last = now
        time.sleep(0.25)
    scrape_all(scrape_urls, point_dir, "metrics_end")
    capture.stop()


def health_after(url: str) -> dict | None:
    """/healthz once the members are gone: what a peer negotiated with them (uvicorn's WebSocket extensions)."""
    with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError, ValueError):
        return json.loads(http_get(f"{url}/healthz"))
    return None


def record_cgroup(group: cgroup.Cgroup | None, point_dir: Path, moment: str) -> None:
    """Add the server's cgroup (its limit as applied) and its counters now to the point's cgroup.json, under
    `moment` ("start" or "end" of the measured window): the summary's cgroup figures come from these two."""
    if group is None:
        return
    path = point_dir / cgroup.STAT_FILE
    data = json.loads(path.read_text()) if path.exists() else {"cgroup": group.describe()}
    data[moment] = group.stat().as_dict()
    write_json(path, data)


def scrape_texts(urls: dict[str, str]) -> dict[str, str]:
    """Scrape /metrics of every instance that still answers (a killed one does not)."""
    texts = {}
    for name, url in urls.items():
        with contextlib.suppress(urllib.error.URLError, ConnectionError, OSError):
            texts[name] = http_get(f"{url}/metrics")
    return texts


def scrape_all(urls: dict[str, str], point_dir: Path, stem: str) -> None:
    """Write `stem.txt` (one server) or `stem-<instance>.txt` (a cluster) for every instance that answers."""
    for name, text in scrape_texts(urls).items():
        (point_dir / (f"{stem}.txt" if list(urls) == ["server"] else f"{stem}-{name}.txt")).write_text(text)


def inject_fault(cluster, fault: dict) -> None:
    index = int(fault["instance"]) - 1
    if fault["kind"] == "drain":
        cluster.drain(index)
    elif fault["kind"] == "kill":
        cluster.kill(index)
    else:
        cluster.restart_redis()


def startup_delay(point_dir: Path, started: float, timeout: float = 30.0) -> float:
    """Seconds from launching Locust to its test start, read from the marker the locustfile writes."""
    marker = point_dir / "started.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists():
            with contextlib.suppress(ValueError, KeyError):
                return json.loads(marker.read_text())["t_mono_s"] - started
        time.sleep(0.05)
    raise RuntimeError(f"Locust did not start its test within {timeout:.0f} s; see {point_dir / 'locust.log'}")


def window_opened(point_dir: Path) -> float | None:
    """When the measured window opens (monotonic s), from the marker Locust writes once every member has joined
    (or at its join deadline); None until then."""
    marker = point_dir / MEASURING_MARKER
    if not marker.exists():
        return None
    try:
        return float(json.loads(marker.read_text())["t_mono_s"])
    except (ValueError, KeyError):  # caught half written: read it again next time
        return None


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def versions(extra: list[str] = ()) -> dict:
    """Python's version and every installed version of what rtlab depends on (pyproject.toml's dependencies),
    and of `extra` (the libraries the run's peers are)."""
    from importlib.metadata import PackageNotFoundError, requires, version

    out = {"python": platform.python_version()}
    try:
        wanted = [re.split(r"[\s;<>=!~\[]", line, maxsplit=1)[0] for line in requires("rtlab") or []
                  if "extra ==" not in line]
    except PackageNotFoundError:  # run from a tree that was never installed
        wanted = []
    for package in dict.fromkeys([*wanted, *extra]):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def repo_relative(path: str | Path) -> str:
    """`path` relative to the repository when it lies inside it, so results name no machine's folders."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def run_experiment(experiment: Experiment, out_root: Path, quick: bool, quiet: bool = False) -> Path:
    """Run every point of `experiment`; write results/<UTC timestamp>-<name>/ and point results/latest at it."""
    global observer_source
    if quick:
        experiment = experiment.quick()
    network.preflight(experiment)  # a [network] this machine cannot give: SpecError (exit 2) before anything starts
    http_preflight(experiment)  # an HTTP arm its HAProxy cannot give: the same
    if experiment.cpu_limits:  # likewise a cgroup with a CPU limit
        cgroup.preflight(period_us=experiment.cpu_period_us)
    experiment = dataclasses.replace(experiment, source=repo_relative(experiment.source))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = out_root / f"{stamp}-{experiment.name}"
    run_dir.mkdir(parents=True)
    pinning = Pinning.choose()
    asked_processes = experiment.processes or "auto"
    if not experiment.processes:  # "auto": every CPU the load may use gets a Locust process
        experiment = dataclasses.replace(experiment, processes=len(pinning.generator))
    hash_seed = random.randint(1, 2**32 - 1) if experiment.cpu_limits else None
    manifest = {
        "name": experiment.name,
        "git_commit": git("rev-parse", "HEAD") or None,
        "git_dirty": bool(git("status", "--porcelain")),
        "versions": versions([p for t in experiment.transports for p in registry.get(t).packages]),
        "machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
        # The sampler and the runner itself share the generator's CPUs: nothing but the server runs on its CPU.
        "pinning": {"server_cpus": pinning.server, "generator_cpus": pinning.generator,
                    "sampler_cpus": pinning.generator, "runner_cpus": pinning.generator,
                    # How the load used its CPUs: Locust processes (a master and its workers when > 1) on them.
                    "generator_processes": experiment.processes, "generator_processes_asked": asked_processes},
        "quick": quick,
        # Under CPU limits every server of the run gets one hash seed: a Python process runs a few per cent faster or
        # slower for its whole life with its seed (docs/metrics.md, "Overhead, measured"), which the checks that
        # compare a transport's runs must not read as the limit's doing.
        "server_hash_seed": hash_seed,
        "experiment": experiment.as_dict(),
        "started_at": utc_now(),
        "ended_at": None,
        "points": [],
    }
    write_json(run_dir / "manifest.json", manifest)
    # The runner's own scrapes and bookkeeping stay off the server's CPU too.
    own_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, pinning.generator)
    points = experiment.points()
    display = Display(len(points), quiet)
    rows = []
    load_key = capacity_load(experiment)
    limited: dict[tuple, str] = {}  # (transport, CPU limit) -> the limit it hit (stop_at_limit)
    try:
        for index, point in enumerate(points, 1):
            point_dir = run_dir / point.slug
            if (point.transport, point.cpu_limit) in limited:
                manifest.setdefault("skipped", []).append(
                    {"dir": point.slug, "transport": point.transport, "swept": point.swept,
                     "why": f"stop_at_limit: {limited[point.transport, point.cpu_limit]}"})
                continue
            # With a [network]: the point's processes and the runner's requests in a namespace of its own, impaired.
            # With a CPU limit: the server in a cgroup of its own, limited.
            with network.impaired(point.network, f"rtlab-{os.getpid()}-{index}") as netns, \
                    server_cgroup(point, experiment, f"rtlab-{os.getpid()}-{index}") as limit:
                observer_source = network.OBSERVER_ADDRESS if netns or experiment.capture else None
                try:
                    info = run_point(experiment, point, index, point_dir, pinning, display, limit, hash_seed)
                finally:
                    observer_source = None
            row = summarize_point(point, point_dir, info["window_mono_s"], experiment.processes, len(pinning.server))
            rows.append(row)
            manifest["points"].append({"dir": point.slug, "transport": point.transport, "repeat": point.repeat,
                                       "swept": point.swept, "healthz": info["health"],
                                       "healthz_end": info["health_end"], "pids": info["pids"],
                                       "cluster": info["cluster"], "network": netns.facts if netns else None,
                                       "capture": info["capture"], "proxy": info["proxy"],
                                       "cgroup": limit.describe() if limit else None,
                                       "observer": {"sampler_cpu_percent": row["sampler_cpu_percent"],
                                                    "cpus": pinning.generator},
                                       "window_mono_s": info["window_mono_s"]})
            write_json(run_dir / "manifest.json", manifest)
            if load_key is not None and point.cpu_limit != 0:  # the light load's unlimited run is no capacity's
                found = figures.capacity([r for r in rows if r["transport"] == point.transport
                                          and r.get("cpu_limit") == point.cpu_limit], load_key)
                if found[point.transport].bound != "sweep":
                    limited[point.transport, point.cpu_limit] = found[point.transport].reason
    finally:
        os.sched_setaffinity(0, own_cpus)
        display.close()
        manifest["ended_at"] = utc_now()
        write_json(run_dir / "manifest.json", manifest)
        add_ratios(rows, experiment.point_keys)
        write_summary(run_dir / "summary.csv", rows, experiment.point_keys)
        write_marginal_costs(run_dir / "marginal.csv", rows, experiment)
        write_capacity(run_dir / "capacity.csv", rows, experiment)
        point_latest(out_root, run_dir)
    return run_dir


def capacity_load(experiment: Experiment) -> str | None:
    """The load a stop_at_limit experiment grows (its one swept key, users or messages_per_second; the CPU limit
    may be swept beside it, and each limit is walked on its own), else None."""
    if not experiment.stop_at_limit:
        return None
    swept = [k for k in experiment.sweep if k != "cpu_limit"]
    if len(swept) != 1 or swept[0] not in ("users", "messages_per_second") or experiment.cluster:
        return None
    return swept[0]


def server_cgroup(point: Point, experiment: Experiment, name: str):
    """The point's server cgroup (experiments/cgroup.py) as a context, or a null one when it has no CPU limit."""
    if point.cpu_limit is None:
        return contextlib.nullcontext()
    return cgroup.limited(point.cpu_limit or None, name, experiment.cpu_period_us)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_summary(path: Path, rows: list[dict], swept: list[str]) -> None:
    columns = ["transport", "repeat", *swept, *SUMMARY_COLUMNS]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_marginal_costs(path: Path, rows: list[dict], experiment: Experiment) -> None:
    """A message-rate sweep's marginal and fixed costs per transport (figures.marginal_costs), when it has one."""
    if "messages_per_second" not in experiment.sweep:
        return
    users = experiment.profile.users
    fits = figures.marginal_costs([{"users": users, **row} for row in rows])
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["transport", *figures.MARGINAL_COLUMNS])
        for transport, fit in fits.items():
            writer.writerow([transport, *(round(fit[c], 4) for c in figures.MARGINAL_COLUMNS)])


def write_capacity(path: Path, rows: list[dict], experiment: Experiment) -> None:
    """A capacity sweep under CPU limits: each transport's capacity at each limit, per CPU, and the two checks
    (figures.capacity_table), when it is one."""
    if not experiment.cpu_limits or capacity_load(experiment) is None or not rows:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, figures.CAPACITY_COLUMNS)
        writer.writeheader()
        for row in figures.capacity_table(rows, capacity_load(experiment), experiment.light_load):
            writer.writerow({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})


def point_latest(out_root: Path, run_dir: Path) -> None:
    latest = out_root / "latest"
    tmp = out_root / f".latest-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, latest)
