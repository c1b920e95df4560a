"""How a figure is shown to a reader (its unit as people read it, scale and number format), defined once for the
terminal table, the notebooks' tables and the report."""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import figures


@dataclass(frozen=True)
class Shown:
    """A figure as a reader sees it: `scale` times its value, in `unit`, written with `spec` (a str.format spec)."""

    unit: str  # "" for a count: the label says what is counted
    scale: float = 1.0
    spec: str = "{:,.1f}"

    def text(self, value: object) -> str:
        """The value written out: "—" when absent or not a number, "yes"/"no" for a flag."""
        number = _number(value)
        if math.isnan(number):
            return "—"
        if self.spec == "yes/no":
            return "yes" if number else "no"
        return self.spec.format(number * self.scale)


# By the unit experiments.figures gives a figure: bytes in MB, per-item bytes in B or kB, counts as integers,
# shares in %, flags as yes/no.
BY_UNIT: dict[str, Shown] = {
    "B": Shown("MB", 1e-6),
    "B/msg": Shown("B/msg", spec="{:,.0f}"),
    "B/conn": Shown("kB", 1e-3),
    "B/member": Shown("kB", 1e-3),
    "B/member/s": Shown("B/s"),
    "msg": Shown("", spec="{:,.0f}"),
    "count": Shown("", spec="{:,.0f}"),
    "msg/s": Shown("/s", spec="{:,.0f}"),
    "pkt": Shown("", spec="{:,.0f}"),
    "pkt/msg": Shown("packets", spec="{:,.2f}"),
    "ms": Shown("ms"),
    "kB/min": Shown("kB/min"),
    "s": Shown("s", spec="{:,.2f}"),
    "us/msg": Shown("µs/msg"),
    "us/member/s": Shown("µs/s"),
    "ratio": Shown("%", 100),
    "bool": Shown("", spec="yes/no"),
}
# Where a figure reads better otherwise than its unit's rule.
BY_FIGURE: dict[str, Shown] = {
    "generator_cpu_peak": Shown("%", 100, "{:,.0f}"),
    "generator_cpu_mean": Shown("%", 100, "{:,.0f}"),
    "server_cpu_share": Shown("%", 100, "{:,.0f}"),
    "server_gc_full_pause_s": Shown("ms", 1000, "{:,.0f}"),
}


def shown(name: str) -> Shown:
    """How figure `name` (experiments.figures.FIGURES) is shown."""
    return BY_FIGURE.get(name) or BY_UNIT[figures.FIGURES[name].unit]


def header(name: str, label: str) -> str:
    """A column header for figure `name`: `label`, with the shown unit in brackets when it has one."""
    unit = shown(name).unit
    return f"{label} ({unit})" if unit else label


def text(name: str, value: object) -> str:
    """Figure `name`'s value (in the figure's own unit) as a reader reads it."""
    return shown(name).text(value)


def _number(value: object) -> float:
    if isinstance(value, str):
        if value in ("True", "False"):
            return float(value == "True")
        try:
            return float(value) if value else math.nan
        except ValueError:
            return math.nan
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


# The flags a row can carry: its latencies then describe more than the server's delivery (docs/metrics.md).
FLAGS = ("generator_saturated", "sends_behind_schedule", "members_joined_late")


def flags(values: dict) -> list[str]:
    """What is flagged in a row ({figure: value}, a summary row or a point), in a few words: the generator
    "saturated", its sends behind schedule ("sends late"), members that had not joined when the window opened
    ("N joined late"); [] for a clean row."""
    out = []
    if _number(values.get("generator_saturated")) == 1:
        out.append("saturated")
    if _number(values.get("sends_behind_schedule")) == 1:
        out.append("sends late")
    late = _number(values.get("members_joined_late"))
    if late > 0:
        out.append(f"{late:,.0f} joined late")
    return out


def check(values: dict) -> str:
    """A row's flags in a few words, "ok" when it has none."""
    return ", ".join(flags(values)) or "ok"
