"""Load a run folder into tidy pandas DataFrames for the notebooks; every figure comes from experiments.figures."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from clients.profile import load_profile
from servers import registry

from . import figures, formats
from .plots import (  # noqa: F401  (the notebooks' helpers, reached through this one import)
    FIGURE_DPI,
    PARAMETER_LABELS,
    dodge,
    figure_label,
    legend,
    log_axis,
    parameter_label,
    show,
    show_table,
    subplot_grid,
    sweep_axis,
    use_style,
)
from .spec import Point
from .summary import load_run_data, scrapes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
LATEST = RESULTS / "latest"
REFERENCE = RESULTS / "reference"

OTHER_COLOUR = "#777777"  # a transport this checkout's registry does not know (an old run)
# Server solid, load generator dashed, whatever the transport.
PROCESS_LINESTYLES = {"server": "-", "generator": "--"}
ID_COLUMNS = ["point", "transport", "repeat"]  # and then the swept keys: every tidy frame starts with these


def colour(transport: str) -> str:
    """Return the colour of `transport` in every plot and in the demo page: its registry entry's
    (servers.registry), grey for one the registry does not know."""
    return registry.colour(transport, OTHER_COLOUR)


def label(transport: str) -> str:
    """Return how plots and tables name `transport`: its registry entry's label."""
    return registry.label(transport)


def resolve_run(path: str | Path | None = None) -> Path:
    """Return the run folder `path` names, read from the working directory or the repository root.

    None or `results/latest` without any run yet fall back to the committed reference run.
    """
    candidates = []
    if path is not None:
        path = Path(path)
        candidates = [path] if path.is_absolute() else [Path.cwd() / path, ROOT / path]
    for candidate in candidates:
        if (candidate / "manifest.json").exists():
            return candidate.resolve()
    if path is None or Path(path).name == "latest":
        for fallback in (LATEST, REFERENCE):
            if (fallback / "manifest.json").exists():
                return fallback.resolve()
    raise FileNotFoundError(f"no run at {path} (a run folder holds manifest.json); run `make run-experiment` first")


def relative_to_root(path: str | Path) -> str:
    """Return `path` relative to the repository root when it lies inside it, else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@dataclass
class Run:
    """One run folder, loaded. Every frame starts with ID_COLUMNS and the swept keys of the run."""

    path: Path
    manifest: dict
    # summary.csv as the runner wrote it, with `point` (its folder) and the profile keys it did not sweep.
    summary: pd.DataFrame
    # One row per point: the point's whole profile, every figure of experiments.figures.FIGURES, window_s, and
    # `flagged` (formats.flags: the generator saturated, sends behind schedule, members joined late).
    points: pd.DataFrame
    # Delivery latency distribution from the HDR histogram: one row per recorded value (value_ms, count,
    # cumulative_count, cumulative_fraction).
    latency: pd.DataFrame
    # Sampler rows of the server and the generator: t_s from the start of the measured window, in_window,
    # cpu_rate (CPU seconds per second over the next second, figures.cpu_rates), rss_mb, tcp_connections, ...
    resources: pd.DataFrame
    # Every /metrics sample scraped at both ends of the window: name, labels, before, after, delta.
    metrics: pd.DataFrame
    # The event-loop lag histogram over the window: le_ms (bucket upper bound), count, cumulative_fraction.
    loop_lag: pd.DataFrame
    # Connection set-up, one row per member and measure: `what` ("join", "first message"), `ms` from the member's
    # start (empty for runs from before it was recorded).
    setup: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    # Delivery latency per five minutes of the window (figures.latency_by_span): start_s, deliveries, p50_ms, p99_ms,
    # max_ms (empty for runs that recorded no intervals).
    spans: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def display_path(self) -> str:
        """The run folder relative to the repository when inside it: the same in every checkout."""
        return relative_to_root(self.path)

    @property
    def experiment(self) -> dict:
        return self.manifest["experiment"]

    @property
    def profile(self) -> dict:
        return self.experiment["profile"]

    @property
    def swept(self) -> list[str]:
        return point_keys(self.experiment)

    @property
    def transports(self) -> list[str]:
        return [t for t in self.experiment["transports"] if t in set(self.points["transport"])]

    @property
    def machine(self) -> str:
        m = self.manifest["machine"]
        return f"{m['cpu_model']}, {m['cpu_count']} CPUs ({m['platform']})"

    def profile_text(self) -> str:
        """Describe the load in one line: the profile, with swept keys given as their values."""
        p, sweep = self.profile, self.experiment["sweep"]

        def value(key: str, fmt: str) -> str:
            if key in sweep:
                return "{" + ", ".join(fmt.format(v) for v in sweep[key]) + "}"
            return fmt.format(p[key])

        rooms = f"rooms of {value('room_size', '{:,}')}" if p.get("room_size") else f"{value('rooms', '{:,}')} rooms"
        parts = [
            f"{value('users', '{:,}')} members in {rooms}",
            f"{value('messages_per_second', '{:g}')} msg/s each ({p['arrival']})",
            f"{value('message_bytes', '{:,}')} B texts",
        ]
        for transport in self.experiment["transports"]:  # each transport's own keys, as its registry entry words them
            try:
                knobs = registry.get(transport).profile_knobs
            except registry.UnknownTransport:
                continue
            parts += [knob.phrase.replace("{:g}", value(knob.name, "{:g}")) for knob in knobs
                      if knob.phrase and knob.name in p]
        parts.append(f"{value('duration_s', '{:g}')} s runs ({value('warmup_s', '{:g}')} s warm-up)")
        quick = " (quick)" if self.manifest.get("quick") else ""
        return f"{self.experiment['name']}{quick}: " + ", ".join(parts)

    def title(self, what: str) -> str:
        """Return a figure title: what it shows, then the run's profile."""
        return f"{what}\n{self.profile_text()}"

    def sweep_values(self) -> list[tuple]:
        """Return the combinations of swept values in run order ([()] when nothing was swept)."""
        if not self.swept:
            return [()]
        return list(dict.fromkeys(tuple(row) for row in self.points[self.swept].itertuples(index=False)))

    def sweep_label(self, values: tuple) -> str:
        """Return e.g. `users=200`, or the experiment's name when nothing was swept."""
        return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(self.swept, values)) \
            or self.experiment["name"]

    def select(self, frame: pd.DataFrame, values: tuple) -> pd.DataFrame:
        """Return the rows of `frame` at one combination of swept values."""
        mask = pd.Series(True, index=frame.index)
        for key, value in zip(self.swept, values):
            mask &= frame[key] == value
        return frame[mask]

    @property
    def load_key(self) -> str | None:
        """The load a capacity sweep grew: users, else the message rate, whichever was swept (None: neither)."""
        return next((k for k in CAPACITY_LOADS if k in self.swept), None)

    def capacity(self, load_key: str | None = None) -> dict[str, figures.Capacity]:
        """Each transport's capacity over this run's sweep of `load_key` (default: self.load_key), by
        figures.capacity's criterion; under CPU limits, at the highest limit (capacity_by_limit gives each); {} when
        no load was swept."""
        by_limit = self.capacity_by_limit(load_key)
        return by_limit[list(by_limit)[-1]] if by_limit else {}

    def capacity_by_limit(self, load_key: str | None = None) -> dict[float | None, dict[str, figures.Capacity]]:
        """{CPU limit: {transport: capacity}} (figures.capacity_by_limit; {None: ...} for a run without limits)."""
        load_key = load_key or self.load_key
        if load_key is None:
            return {}
        return figures.capacity_by_limit(capacity_rows(self.points, load_key), load_key)

    def capacity_table(self) -> pd.DataFrame:
        """One row per transport and CPU limit: capacity, per CPU, both checks and the flags (figures.capacity_table,
        what the run's capacity.csv holds); empty when no load was swept."""
        if self.load_key is None:
            return pd.DataFrame(columns=figures.CAPACITY_COLUMNS)
        rows = figures.capacity_table(capacity_rows(self.points, self.load_key), self.load_key,
                                      self.experiment.get("light_load"))
        return pd.DataFrame(rows, columns=figures.CAPACITY_COLUMNS)


CAPACITY_LOADS = ("users", "messages_per_second")  # what a capacity sweep grows
SOAK_MIN_WINDOW_S = 600  # a measured window this long is a soak, whether or not members come and go


@dataclass(frozen=True)
class Subject:
    """Something a run may or may not have measured, and the experiment that does: a notebook (its metadata's
    `rtlab.needs`) or a section of one (a cell's) is shown only for a run that measured its subject."""

    what: str  # "a capacity sweep": finishes "This run has no ..."
    experiment: str  # the `make run-experiment` that measures it
    measured: Callable[[dict], bool]  # on the run's manifest["experiment"]


def _is_peer(transport: str) -> bool:
    try:
        return registry.get(transport).group == registry.PEER
    except registry.UnknownTransport:
        return False


SUBJECTS: dict[str, Subject] = {
    "sweep": Subject("swept parameter", "make run-experiment EXP=message-rate", lambda e: bool(point_keys(e))),
    "capacity": Subject("capacity sweep (of members or of the message rate)", "make run-experiment EXP=capacity",
                        lambda e: any(k in e["sweep"] for k in CAPACITY_LOADS)),
    "message-rate": Subject("sweep of the message rate", "make run-experiment EXP=message-rate",
                            lambda e: "messages_per_second" in e["sweep"]),
    "cluster": Subject("cluster of instances", "make run-experiment EXP=scaling", lambda e: bool(e.get("cluster"))),
    "packet-loss": Subject("sweep of packet loss", "make run-experiment EXP=network-loss",
                           lambda e: "loss_percent" in e["sweep"]),
    "peers": Subject("peers beside rtlab's transports", "make run-experiment EXP=peers",
                     lambda e: any(_is_peer(t) for t in e["transports"])),
    "soak": Subject("long run with members coming and going", "make run-experiment EXP=soak",
                    lambda e: e["profile"].get("reconnect_every_s", 0) > 0
                    or e["profile"]["duration_s"] - e["profile"]["warmup_s"] >= SOAK_MIN_WINDOW_S),
    "http-versions": Subject("sweep of the members' HTTP version", "make run-experiment EXP=http2",
                             lambda e: "http" in e["sweep"]),
}


def measures(manifest: dict, subject: str) -> bool:
    """Whether the run (its manifest) measured `subject` (a key of SUBJECTS)."""
    return SUBJECTS[subject].measured(manifest["experiment"])


def not_measured(subject: str) -> str:
    """The one line a report shows for a subject the run did not measure: what, and the experiment that does."""
    found = SUBJECTS[subject]
    return f"This run has no {found.what}: `{found.experiment}` measures it."


def cpu_limit_text(run: Run) -> str:
    """Describe the server's CPU limits in one line ("" for a run without any), from the manifest's groups."""
    groups = [p["cgroup"] for p in run.manifest["points"] if p.get("cgroup")]
    limits = sorted({g["cpu_limit"] for g in groups if g["cpu_limit"]})
    if not groups:
        return ""
    group = groups[0]
    light = run.experiment.get("light_load")
    return (f"{', '.join(f'{v:g}' for v in limits)} CPU, in a cgroup of its own (v{group['version']}, "
            f"{group['period_us'] / 1000:g} ms periods, no burst)"
            + (f"; at {light:g} also without a limit, in a cgroup all the same" if light is not None else ""))


def at_cpu_limit(points: pd.DataFrame, limit: float | None) -> pd.DataFrame:
    """The points run at CPU limit `limit` (all of them for None, in a run without limits)."""
    if limit is None or "cpu_limit" not in points.columns:
        return points
    return points[points["cpu_limit"] == limit]


def capacity_frame(run: Run, unit: str) -> pd.DataFrame:
    """The capacity table as the notebook shows it, written out as the terminal writes figures (experiments.formats):
    each transport at each CPU limit, per CPU, the checks and the flags (figures.capacity_table)."""
    table = run.capacity_table()

    def load(value: float, bound: str = "server") -> str:
        return "none" if math.isnan(value) else ("≥ " if bound != "server" else "") + f"{value:,.6g}"

    def ratio(value: float) -> str:
        return "—" if math.isnan(value) else f"{value:.2f}"

    def crossing(at: float, below: float, cpu: float, over: float, cpu_over: float) -> str:
        if math.isnan(at):
            return "—"
        value = f"{at:.3g}" if at < 100 else f"{at:,.0f}"
        return f"≈ {value} ({below:,.6g}: {cpu:.0f} %, {over:,.6g}: {cpu_over:.0f} %)"

    rate = partial(formats.text, "deliveries_per_second")
    return pd.DataFrame({
        "transport": [label(t) for t in table["transport"]],
        "CPU limit": ["none" if pd.isna(v) else f"{v:g}" for v in table["cpu_limit"]],  # None: a run without limits
        f"capacity ({unit})": [load(v, b) for v, b in zip(table["capacity"], table["bound"])],
        "deliveries there (/s)": [rate(v) for v in table["delivered_per_s"]],
        # Where the walk ended on the server's CPU: the load at which it crosses 90 % of the limit, between the two
        # measured points around it (figures.Capacity.crossing); per CPU divides it.
        "90 % of the limit at": [crossing(*values) for values in zip(
            table["crossing"], table["capacity"], table["cpu_percent"], table["over"], table["cpu_percent_over"])],
        f"{unit} per CPU": [load(v, b) for v, b in zip(table["capacity_per_cpu"], table["bound"])],
        "deliveries per CPU (/s)": [rate(v) for v in table["delivered_per_s_per_cpu"]],
        "generator there (%)": [formats.text("generator_cpu_peak", v) for v in table["generator_peak"]],
        "check 1 (1 ± 15 %)": [ratio(v) for v in table["scaling_ratio"]],
        "check 2 (1 ± 10 %)": [ratio(v) for v in table["light_cost_ratio"]],
        "bound": table["bound"],
        "what ended it": table["reason"],
        "flag": [f or "ok" for f in table["flag"]],
    })


def capacity_rows(points: pd.DataFrame, load_key: str) -> list[dict]:
    """The summary-row view figures.capacity reads, from analysis points (figure names -> summary columns)."""
    return [
        {"transport": r.transport, "repeat": r.repeat, load_key: getattr(r, load_key),
         "cpu_limit": getattr(r, "cpu_limit", None), "latency_p99_ms": r.latency_p99_ms,
         "lost": r.messages_lost, "generator_saturated": r.generator_saturated,
         "generator_cpu_peak": r.generator_cpu_peak, "server_cpu_percent": r.server_cpu_share * 100,
         "cgroup_cpu_percent": r.cgroup_cpu_share * 100,
         "delivered_offered_ratio": r.delivered_offered_ratio,
         "delivered_offered_tolerance": r.delivered_offered_tolerance, "offered_per_s": r.offered_deliveries_per_second,
         "delivered_per_s": r.deliveries_per_second, "cgroup_throttled_percent": r.cgroup_throttled_share * 100,
         "cgroup_cpu_us_per_delivered": r.cgroup_cpu_us_per_delivered_message,
         "server_cpu_us_per_delivered": r.server_cpu_us_per_delivered_message}
        for r in points.itertuples()
    ]


def load_run(path: str | Path | None = None) -> Run:
    """Load the run folder at `path` (see resolve_run); raw files only, every figure from experiments.figures."""
    run_dir = resolve_run(path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    swept = point_keys(manifest["experiment"])
    cpus = manifest["machine"].get("cpu_count") or 1
    processes = manifest["experiment"].get("processes", 1)
    server_cpus = len(manifest.get("pinning", {}).get("server_cpus") or [0])

    points, latency, resources, metrics, loop_lag, setup, spans = [], [], [], [], [], [], []
    for entry in manifest["points"]:
        point_dir = run_dir / entry["dir"]
        ids = {"point": entry["dir"], "transport": entry["transport"], "repeat": entry["repeat"],
               **{key: entry["swept"][key] for key in swept}}
        profile = load_profile(point_dir / "profile.toml")
        point = Point(entry["transport"], entry["repeat"], entry["swept"], profile)
        window = entry["window_mono_s"]
        # The payload of runs from before the server counted it is estimated from the profile; a peer's, whose
        # server does not count it, is absent, never guessed.
        sizes = message_sizes(profile) if counts_payload(entry["transport"]) else {}
        data = dataclasses.replace(load_run_data(point, point_dir, window, processes, server_cpus), cpus=cpus, **sizes)
        computed = figures.compute(data)
        points.append({**ids, **profile.as_dict(), **computed, "window_s": window[1] - window[0],
                       "flagged": bool(formats.flags(computed))})
        latency.append(_latency_frame(data, ids))
        setup.append(_setup_frame(data, ids))
        spans.append(pd.DataFrame(figures.latency_by_span(data)).assign(**ids) if data.latency_intervals else
                     pd.DataFrame())
        resources.append(_resources_frame(point_dir / "resources.csv", window, ids))
        scraped = _metrics_frame(point_dir, ids)
        metrics.append(scraped)
        loop_lag.append(_loop_lag_frame(scraped, ids))

    summary = pd.read_csv(run_dir / "summary.csv")
    if len(summary) == len(manifest["points"]):  # the runner writes one row per point, in the manifest's order
        summary.insert(0, "point", [entry["dir"] for entry in manifest["points"]])
    for key, value in manifest["experiment"]["profile"].items():
        if key not in summary.columns:
            summary[key] = value

    return Run(
        path=run_dir,
        manifest=manifest,
        summary=summary,
        points=pd.DataFrame(points),
        latency=_concat(latency, [*ID_COLUMNS, *swept, "value_ms", "count", "cumulative_count",
                                  "cumulative_fraction"]),
        resources=_concat(resources, [*ID_COLUMNS, *swept, "process", "pid", "t_s", "in_window", "cpu_user_s",
                                      "cpu_system_s", "cpu_rate", "rss_mb", "fds", "threads", "tcp_connections"]),
        metrics=_concat(metrics, [*ID_COLUMNS, *swept, "name", "labels", "before", "after", "delta"]),
        loop_lag=_concat(loop_lag, [*ID_COLUMNS, *swept, "le_ms", "count", "cumulative_fraction"]),
        setup=_concat(setup, [*ID_COLUMNS, *swept, "what", "ms"]),
        spans=_concat(spans, [*ID_COLUMNS, *swept, "start_s", "deliveries", "p50_ms", "p99_ms", "max_ms"]),
    )


def point_keys(experiment: dict) -> list[str]:
    """The parameters that tell a run's points apart: swept profile keys, then a cluster's instances and mode."""
    return [*experiment["sweep"], *(["instances", "mode"] if experiment.get("cluster") else [])]


def marginal_costs(run: Run) -> pd.DataFrame:
    """A message-rate sweep's marginal cost per delivered message and fixed cost per member and second, per
    transport (experiments.figures.marginal_costs; empty when the run does not sweep the message rate)."""
    if "messages_per_second" not in run.swept:
        return pd.DataFrame(columns=["transport", *figures.MARGINAL_COLUMNS])
    fits = figures.marginal_costs(run.summary.to_dict("records"))
    return pd.DataFrame([{"transport": t, **fit} for t, fit in fits.items()],
                        columns=["transport", *figures.MARGINAL_COLUMNS])


def counts_payload(transport: str) -> bool:
    try:
        return registry.get(transport).counts_payload
    except registry.UnknownTransport:
        return True


def ratios(run: Run) -> pd.DataFrame:
    """run.points' ID columns with, per figures.RATIO_FIGURES, each point's figure divided by its rtlab
    transport's at the same point (a peer's registry compare_with; rtlab's own rows are 1.0), and `vs`."""
    rows = run.points.to_dict("records")
    computed = figures.ratios(rows, {name: name for name in figures.RATIO_FIGURES}, [*run.swept, "repeat"])
    frame = run.points[[*ID_COLUMNS, *run.swept]].copy()
    frame["vs"] = [r["vs"] for r in computed]
    for name in figures.RATIO_FIGURES:
        frame[name] = [r[name] for r in computed]
    return frame


def carrier(transport: str) -> str:
    """Return what `transport`'s members' messages travel on, from its registry entry: "tcp" or "udp" ("" for a
    transport the registry does not know)."""
    try:
        return registry.get(transport).carrier
    except registry.UnknownTransport:
        return ""


def protocol(transport: str) -> str:
    """Return the protocol that recovers (or not) `transport`'s lost packets, from its registry entry: "TCP",
    "SCTP" or "QUIC" ("" for a transport the registry does not know)."""
    try:
        return registry.get(transport).protocol
    except registry.UnknownTransport:
        return ""


# network_points' columns after the ID columns and swept keys.
NETWORK_COLUMNS = ["loss_asked_percent", "loss_applied_percent", "packets_seen", "packets_dropped", "dropped_percent",
                   "tcp_out_segments", "tcp_retransmitted_segments", "retransmitted_percent", "mtu", "drop_rule",
                   "qdisc"]


def network_points(run: Run) -> pd.DataFrame:
    """Return one row per point that ran in an impaired namespace (empty for a run without [network]): the loss
    asked for and as the drop rule applies it, the rule and lo's MTU and qdiscs as the kernel read them back, and
    the kernel's counters at the point's end (experiments/network.py): TCP and UDP packets the rule saw and dropped,
    TCP segments sent and retransmitted, the two shares in %. The counters cover the whole point, warm-up and the
    runner's own requests included, not only the measured window."""
    rows = []
    for entry in run.manifest["points"]:
        facts = entry.get("network")
        if not facts:
            continue
        at_end = facts.get("at_end") or {}
        packets, tcp = at_end.get("packets") or {}, at_end.get("tcp") or {}
        seen, dropped = packets.get("seen", math.nan), packets.get("dropped", math.nan)
        sent, resent = tcp.get("out_segments", math.nan), tcp.get("retransmitted_segments", math.nan)
        # The rule as read back before the point ran, its counters (zero then) left out.
        rule = next((" ".join(line.replace("counter packets 0 bytes 0", "counter").split())
                     for line in facts.get("ruleset", "").splitlines() if "numgen" in line), "no drop rule")
        rows.append({
            "point": entry["dir"], "transport": entry["transport"], "repeat": entry["repeat"],
            **{key: entry["swept"][key] for key in run.swept},
            "loss_asked_percent": (facts.get("requested") or {}).get("loss_percent", math.nan),
            "loss_applied_percent": (facts.get("applied") or {}).get("loss_percent", math.nan),
            "packets_seen": seen, "packets_dropped": dropped, "dropped_percent": _percent(dropped, seen),
            "tcp_out_segments": sent, "tcp_retransmitted_segments": resent,
            "retransmitted_percent": _percent(resent, sent),
            "mtu": (facts.get("link") or {}).get("mtu"), "drop_rule": rule, "qdisc": "; ".join(facts.get("qdisc", [])),
        })
    return pd.DataFrame(rows, columns=[*ID_COLUMNS, *run.swept, *NETWORK_COLUMNS])


def _percent(part: float, whole: float) -> float:
    return 100 * part / whole if whole else math.nan


def network_text(run: Run) -> str:
    """Describe the run's impairment in one line, swept keys as their values ("" for a run without [network])."""
    network = run.experiment.get("network")
    if network is None:
        return ""
    sweep = run.experiment["sweep"]

    def value(key: str) -> str | None:
        if key in sweep:
            return "{" + ", ".join(f"{v:g}" for v in sweep[key]) + "}"
        return f"{network[key]:g}" if network.get(key) is not None else None

    parts = []
    if value("loss_percent") is not None:
        parts.append(f"{value('loss_percent')} % of the TCP and UDP packets dropped at random on arrival (nftables)")
    if value("rate_mbit") is not None:
        parts.append(f"rate limited to {value('rate_mbit')} Mbit/s (tbf)")
    if value("delay_ms") is not None and (network.get("delay_ms") or "delay_ms" in sweep):
        jitter = f" ± {value('jitter_ms')}" if value("jitter_ms") is not None else ""
        parts.append(f"{value('delay_ms')}{jitter} ms delay each way (netem)")
    return "each point in a network namespace of its own, " + (", ".join(parts) or "nothing impaired")


def message_sizes(profile) -> dict[str, float]:
    """Return the RunData inputs that size one message (figures.MessageSizes) for a point's profile."""
    ids_per_room = profile.messages_per_second * profile.users * profile.duration_s / profile.rooms
    sizes = figures.MessageSizes.typical(profile.message_bytes, profile.users, profile.rooms, ids_per_room)
    return {"message_json_bytes": sizes.delivered, "send_json_bytes": sizes.sent}


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _latency_frame(data: figures.RunData, ids: dict) -> pd.DataFrame:
    histogram = data.latency_us
    if histogram is None or not histogram.get_total_count():
        return pd.DataFrame()
    # The iterator hands back one object it updates in place: read each step as it comes.
    steps = [(item.value_iterated_to / 1000, item.count_added_in_this_iter_step)
             for item in histogram.get_recorded_iterator()]
    frame = pd.DataFrame(steps, columns=["value_ms", "count"])
    frame["cumulative_count"] = frame["count"].cumsum()
    frame["cumulative_fraction"] = frame["cumulative_count"] / histogram.get_total_count()
    return frame.assign(**ids)


SETUP_MEASURES = {"join": "join_ms_samples", "first message": "first_message_ms_samples"}


def _setup_frame(data: figures.RunData, ids: dict) -> pd.DataFrame:
    counts = data.completeness or {}
    frames = [pd.DataFrame({"what": what, "ms": counts[key]}) for what, key in SETUP_MEASURES.items()
              if counts.get(key)]
    return pd.concat(frames, ignore_index=True).assign(**ids) if frames else pd.DataFrame()


def _resources_frame(path: Path, window: list[float], ids: dict) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame()
    pids = pd.read_csv(path).groupby("label")["pid"].first()
    frames = []
    for process, samples in figures.read_samples(path).items():
        rates = dict(figures.cpu_rates(samples))
        frames.append(pd.DataFrame({
            "process": process,
            "pid": pids.get(process),
            "t_s": [t - window[0] for t in samples.t_s],
            "in_window": [window[0] <= t <= window[1] for t in samples.t_s],
            "cpu_user_s": samples.cpu_user_s,
            "cpu_system_s": samples.cpu_system_s,
            "cpu_rate": [rates.get(t, math.nan) for t in samples.t_s],
            "rss_mb": [b / 1e6 for b in samples.rss_bytes],
            "fds": samples.fds,
            "threads": samples.threads,
            "tcp_connections": samples.tcp_connections,
        }))
    return pd.concat(frames, ignore_index=True).assign(**ids) if frames else pd.DataFrame()


def _labels_text(pairs: tuple[tuple[str, str], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in pairs)


def _metrics_frame(point_dir: Path, ids: dict) -> pd.DataFrame:
    """Every /metrics sample at both ends of the window; a cluster's instances add an `instance` label."""
    pages_before, pages_after = scrapes(point_dir, "metrics_before"), scrapes(point_dir, "metrics_after")
    rows = []
    for instance in [name for name in pages_before if name in pages_after]:
        before = figures.parse_metrics(pages_before[instance])
        after = figures.parse_metrics(pages_after[instance])
        for key in sorted(before.keys() | after.keys()):
            name, pairs = key
            if len(pages_before) > 1:
                pairs = tuple(sorted((*pairs, ("instance", instance))))
            b, a = before.get(key, math.nan), after.get(key, math.nan)
            rows.append({"name": name, "labels": _labels_text(pairs), "before": b, "after": a, "delta": a - b})
    return pd.DataFrame(rows).assign(**ids) if rows else pd.DataFrame()


def _loop_lag_frame(scraped: pd.DataFrame, ids: dict) -> pd.DataFrame:
    if scraped.empty:
        return pd.DataFrame()
    buckets = scraped[scraped["name"] == "rtlab_event_loop_lag_seconds_bucket"]
    rows = []
    for labels, delta in zip(buckets["labels"], buckets["delta"]):
        le = dict(pair.split("=", 1) for pair in labels.split(","))["le"]
        rows.append({"le_ms": float(le) * 1000, "cumulative_count": delta})
    if not rows:
        return pd.DataFrame()
    # Prometheus buckets are cumulative; the +Inf bucket holds every observation of the window.
    frame = pd.DataFrame(rows).sort_values("le_ms", ignore_index=True)
    total = frame["cumulative_count"].iloc[-1]
    frame["count"] = frame["cumulative_count"].diff().fillna(frame["cumulative_count"])
    frame["cumulative_fraction"] = frame["cumulative_count"] / total if total else math.nan
    return frame.assign(**ids)


def figure_table(run: Run, names: dict[str, str], check: bool = False) -> pd.DataFrame:
    """Return run.points with the swept keys, transport (and repeat when repeated) and the figures in
    `names` ({figure: header}), written as the terminal table writes them (experiments.formats: MB, integers,
    %, yes/no, the unit in each header): a table to display (show_table). `check`: a last column with the row's
    flags (formats.check: generator saturated, sends behind schedule, members joined late), "ok" without."""
    ids = [*run.swept, "transport"] + (["repeat"] if run.experiment.get("repeats", 1) > 1 else [])
    table = run.points[ids].copy()
    for name, header in names.items():
        table[formats.header(name, header)] = [formats.text(name, value) for value in run.points[name]]
    if check:
        table["check"] = [formats.check(row) for row in run.points.to_dict("records")]
    return table
