"""Print a run's comparison table across transports, from its summary.csv."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from servers import registry

from . import figures

COLUMNS = (
    ("delivered", "delivered", "{:,.0f}"),
    ("lost", "lost", "{:,.0f}"),
    ("duplicates", "dup", "{:,.0f}"),
    ("never_arrived", "never arrived", "{:,.0f}"),
    ("latency_p50_ms", "p50 ms", "{:,.1f}"),
    ("latency_p99_ms", "p99 ms", "{:,.1f}"),
    ("latency_max_ms", "max ms", "{:,.1f}"),
    ("bytes_per_delivered", "B/delivered", "{:,.0f}"),
    ("server_cpu_us_per_delivered", "CPU µs/delivered", "{:,.1f}"),
    ("server_rss_peak_mb", "RSS MB", "{:,.1f}"),
    ("generator_cpu_peak", "gen CPU", "{:.0%}"),
)


def read_summary(run_dir: Path) -> list[dict]:
    with open(run_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def cell(value: str, fmt: str) -> str:
    try:
        return fmt.format(float(value))
    except (TypeError, ValueError):
        return value or "—"


def print_table(run_dir: Path, console: Console | None = None) -> None:
    rows = read_summary(run_dir)
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    if not rows:
        console.print(f"{run_dir}: no point finished")
        return
    experiment = json.loads((run_dir / "manifest.json").read_text())["experiment"]
    swept = [*experiment["sweep"], *(["instances", "mode"] if experiment.get("cluster") else [])]
    table = Table(title=f"rtlab {run_dir.resolve().name}", title_justify="left")
    for name in ["transport", *swept, "repeat"]:
        table.add_column(name)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in rows:
        saturated = row.get("generator_saturated") == "True"
        values = [row["transport"], *(row[c] for c in swept), row["repeat"]]
        values += [cell(row.get(key, ""), fmt) for key, _, fmt in COLUMNS]
        if saturated:
            values[-1] += " SATURATED"
        table.add_row(*values)
    console.print(table)
    users = experiment["profile"].get("users")
    for line in findings([{"users": users, **row} for row in rows], swept):
        console.print(line)


def findings(rows: list[dict], swept: list[str]) -> list[str]:
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
    if load_key is not None and len(swept) == 1:
        unit = "members" if load_key == "users" else "messages/s per member"
        for found in figures.capacity(rows, load_key).values():
            lines.append(found.sentence(unit))
    return lines

