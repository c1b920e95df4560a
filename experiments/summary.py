"""One summary row per point and transport, from the raw files of a run; every figure from experiments.figures."""

from __future__ import annotations

from pathlib import Path

from .spec import Point

SUMMARY_COLUMNS = ["sent", "delivered", "lost", "duplicates"]


def summarize_point(point: Point, point_dir: Path, window_mono_s: list[float], swept: dict) -> dict:
    return {"transport": point.transport, "repeat": point.repeat, **point.swept}
