"""Print a run's comparison table across transports, from its summary.csv."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from servers import registry

from . import figures, formats
from .summary import COLUMN_FIGURES

# summary.csv column -> header; units and number formats are experiments.formats' (the notebooks' too).
COLUMNS = (
    ("delivered", "delivered"),
    ("lost", "lost"),
    ("duplicates", "dup"),
    ("never_arrived", "never arrived"),
    ("latency_p50_ms", "p50"),
    ("latency_p99_ms", "p99"),
    ("latency_max_ms", "max"),
    ("join_p99_ms", "join p99"),
    ("bytes_per_delivered", "bytes"),
    ("server_cpu_us_per_delivered", "CPU"),
    ("server_rss_peak_mb", "RSS"),
    ("generator_cpu_peak", "gen CPU"),
)


def read_summary(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def cell(value: str, fmt: str) -> str:
    try:
        return fmt.format(float(value))
    except (TypeError, ValueError):
        return value or "—"


def column_text(column: str, value: str) -> str:
    """A summary.csv value as the reader reads it: its figure's unit and format (experiments.formats)."""
    name, scale = COLUMN_FIGURES[column]
    try:
        value = float(value) / scale
    except (TypeError, ValueError):
        pass
    return formats.text(name, value)


def column_header(column: str, label: str) -> str:
    return formats.header(COLUMN_FIGURES[column][0], label)


def print_table(run_dir: Path, console: Console | None = None) -> None:
    rows = read_summary(run_dir)
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    if not rows:
        console.print(f"{run_dir}: no point finished")
        return
    experiment = json.loads((run_dir / "manifest.json").read_text())["experiment"]
    swept = [*experiment["sweep"], *(["instances", "mode"] if experiment.get("cluster") else [])]
    table = Table(title=f"rtlab {run_dir.resolve().name}", title_justify="left")
    repeated = experiment.get("repeats", 1) > 1
    for name in ["transport", *swept, *(["repeat"] if repeated else [])]:
        table.add_column(name)
    for column, label in COLUMNS:
        table.add_column(column_header(column, label), justify="right")
    table.add_column("check")
    for row in rows:
        values = [row["transport"], *(row[c] for c in swept), *([row["repeat"]] if repeated else [])]
        values += [column_text(column, row.get(column, "")) for column, _ in COLUMNS]
        flagged = formats.flags(row)
        table.add_row(*values, Text(", ".join(flagged), style="bold red") if flagged else "ok")
    console.print(table)
    if experiment.get("overrides"):  # --set: where this run departs from its file
        changed = ", ".join(f"{key} = {json.dumps(value)}" for key, value in experiment["overrides"].items())
        console.print(f"changed from {experiment.get('source') or 'the file'} for this run: {changed}", markup=False)
    users = experiment["profile"].get("users")
    for line in findings([{"users": users, **row} for row in rows], swept, experiment.get("light_load")):
        console.print(line, markup=False)
    from .analysis import SUBJECTS  # pandas: only once the table is out

    if SUBJECTS["soak"].measured(experiment):
        for line in soak_lines(rows):
            console.print(line, markup=False, soft_wrap=True)  # one line each, however wide: a log greps it


def soak_lines(rows: list[dict]) -> list[str]:
    """A soak's verdict per row, in the summary's figures: what a leak would move (docs/metrics.md)."""
    def text(column: str, row: dict) -> str:
        return column_text(column, row.get(column, ""))

    return [
        f"{registry.label(row['transport'])}: memory {text('rss_slope_kb_per_min', row)} kB/min over "
        f"{float(row['window_s']) / 60:.0f} min; descriptors {text('server_fds_start', row)} -> "
        f"{text('server_fds_end', row)}, tasks {text('server_tasks_start', row)} -> {text('server_tasks_end', row)}; "
        f"p99 {text('latency_p99_first_5min_ms', row)} ms in the first five minutes, "
        f"{text('latency_p99_last_5min_ms', row)} in the last, {text('latency_p99_worst_5min_ms', row)} at worst; "
        f"{text('reconnects', row)} rejoins; lost {text('lost', row)}, duplicated {text('duplicates', row)}, "
        f"never arrived {text('never_arrived', row)}; {text('server_gc_full_pauses', row)} full GCs"
        for row in rows
    ]


def findings(rows: list[dict], swept: list[str], light_load: float | None = None) -> list[str]:
    """Sentences the table implies: a transport against its theory (short polling's T/2), each peer against
    its rtlab transport, each transport's capacity."""
    lines = []
    for row in rows:
        where = ", ".join(f"{k}={row[k]}" for k in swept) or row["transport"]
        if row.get("latency_theory_ms"):
            lines.append(
                f"{registry.label(row['transport'])} ({where}): measured mean delivery latency "
                f"{cell(row['latency_mean_ms'], '{:,.0f}')} ms beside the theory's {cell(row['latency_theory_ms'], '{:,.0f}')} ms"
            )
        if row.get("vs") and row["vs"] != row["transport"] and row.get("cpu_ratio"):
            ratios = ", ".join(f"{label} x{cell(row.get(key, ''), '{:.2f}')}" for key, label in (
                ("cpu_ratio", "CPU/delivered"), ("bytes_ratio", "bytes/delivered"), ("p50_ratio", "p50"),
                ("p99_ratio", "p99"), ("rss_per_member_ratio", "RSS/member")))
            at = f" ({where})" if swept else ""
            lines.append(f"{row['transport']} against rtlab's {row['vs']}{at}, rtlab = 1: {ratios}")
    if "messages_per_second" in swept:
        for transport, fit in figures.marginal_costs(rows).items():
            lines.append(
                f"{registry.label(transport)}: one more delivered message costs {fit['marginal_cpu_us_per_delivered']:,.1f} µs "
                f"of server CPU and {fit['marginal_bytes_per_delivered']:,.0f} B (the slope of a line through "
                f"{fit['rates']} rates); its intercept, {fit['fixed_cpu_us_per_member_s']:,.1f} µs and "
                f"{fit['fixed_bytes_per_member_s']:,.1f} B per member per second, is the fixed cost only as far as "
                "the cost is a line (EXP=idle measures it directly)"
            )
    load_key = next((k for k in ("users", "messages_per_second") if k in swept), None)
    if load_key is not None and len([k for k in swept if k != "cpu_limit"]) == 1:
        lines += capacity_findings(rows, load_key, light_load)
    return lines


def capacity_findings(rows: list[dict], load_key: str, light_load: float | None = None) -> list[str]:
    """Each transport's capacity (at each CPU limit, and per CPU), then the two checks that make the division by the
    limit honest, a row FLAGGED where one failed or could not be made (figures.capacity_table)."""
    unit = "members" if load_key == "users" else "messages/s per member"
    by_limit = figures.capacity_by_limit(rows, load_key)
    lines = [found.sentence(unit) for found_at in by_limit.values() for found in found_at.values()]
    scaling = figures.limit_scaling(by_limit)
    if scaling:
        lines.append("check 1: the capacity in proportion to the CPU limit, (its ratio / the limits') within "
                     f"1 ± {figures.LIMIT_SCALING_TOLERANCE:.0%}:")
        for check in scaling:
            low, high = check.low, check.high
            high_rate, low_rate = high.estimate_delivered_per_s, low.estimate_delivered_per_s
            lines.append(f"  {check.transport}: {high_rate:,.0f} deliveries/s at {high.cpu_limit:g} "
                         f"CPU / {low_rate:,.0f} at {low.cpu_limit:g} CPU, over "
                         f"{high.cpu_limit / low.cpu_limit:.2f}: "
                         f"{check.ratio:.2f} {verdict(check.problem)}")
    if light_load is not None:
        lines.append(f"check 2: server CPU per delivered message at {light_load:g} {unit}, with the limit / without, "
                     f"within 1 ± {figures.LIMIT_COST_TOLERANCE:.0%}:")
        for cost in figures.limit_cost(rows, load_key, light_load):
            lines.append(f"  {cost.transport} at {cost.cpu_limit:g} CPU: {cost.limited_us:,.1f} / "
                         f"{cost.unlimited_us:,.1f} µs: {cost.ratio:.2f} {verdict(cost.problem)}")
    return lines


def verdict(problem: str) -> str:
    return f"FLAGGED: {problem}" if problem else "ok"

