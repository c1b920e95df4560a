"""Plot helpers shared by the notebooks: one style, one way to show and save a figure, axis labels with units.
The notebooks reach them through experiments.analysis, their one import."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from servers import registry

from . import figures

ROOT = Path(__file__).resolve().parent.parent
FIGURE_DPI = 120

def figure_label(name: str, label: str | None = None) -> str:
    """Return an axis label for figure `name`: `label` (default: its name) with the figure's unit."""
    unit = figures.FIGURES[name].unit
    return f"{label or name.replace('_', ' ')} ({unit})"


def use_style() -> None:
    """Apply the notebooks' matplotlib style: readable projected, gridded, the same size everywhere."""
    import matplotlib as mpl

    mpl.rcParams.update({
        "figure.figsize": (10, 5.2),
        "figure.dpi": FIGURE_DPI,
        "figure.constrained_layout.use": True,  # titles, panels and legends never overlap
        "font.size": 11,
        "axes.titlesize": 11,
        "figure.titlesize": 12,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
    })


def show(fig, name: str, report_dir: str | Path | None = None) -> None:
    """Display `fig` in the notebook, save it as `<report_dir>/<name>.png` when report_dir is set, and close it.

    A relative report_dir is taken from the repository root (the report injects such paths, so executed
    notebooks read the same in every checkout).

    The PNG is rendered here rather than by the notebook's backend, so it is the same in JupyterLab,
    headless (Agg) and in the report; the output names its file so the report can link it.
    """
    import matplotlib.pyplot as plt
    from IPython.display import display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    png = buffer.getvalue()
    metadata = {}
    if report_dir is not None:
        path = (ROOT / report_dir) / f"{name}.png"  # a relative report_dir is the repository's
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
        metadata = {"image/png": {"rtlab_file": path.name}}
    display({"image/png": base64.b64encode(png).decode("ascii"), "text/plain": f"<figure {name}>"},
            raw=True, metadata=metadata)


# How the notebooks name a profile key on an axis or in a table, unit included (a transport's own keys:
# their registry entry's label).
PARAMETER_LABELS = {
    "users": "chat members (users)",
    "rooms": "rooms (count)",
    "messages_per_second": "messages per member per second (msg/s)",
    "message_bytes": "message text (B)",
    "spawn_rate": "members started per second (1/s)",
    "duration_s": "run length (s)",
    "warmup_s": "warm-up (s)",
    # [network] keys (docs/network.md), swept like profile keys
    "loss_percent": "packets dropped at random (%)",
    "rate_mbit": "rate limit (Mbit/s)",
    "delay_ms": "added delay each way (ms)",
    "jitter_ms": "delay jitter (ms)",
}


def parameter_label(key: str) -> str:
    """Return the axis label, with its unit, of profile key `key`."""
    if key in PARAMETER_LABELS:
        return PARAMETER_LABELS[key]
    knob = registry.profile_knobs().get(key)
    return (knob.label or key) if knob else key


def sweep_axis(ax, key: str, values) -> None:
    """Label an x axis of swept `key` and tick it at the swept values; log scale when they span 4x or more."""
    from matplotlib import ticker

    values = sorted({float(v) for v in values})
    if values and values[0] > 0 and values[-1] / values[0] >= 4:
        ax.set_xscale("log")
        ax.set_xlabel(f"{parameter_label(key)}, log scale")
    else:
        ax.set_xlabel(parameter_label(key))
    ax.set_xticks(values)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())


def dodge(values, index: int, count: int, spread: float = 0.3):
    """Return x `values` shifted for the index-th of `count` series drawn at the same x values, so their markers sit
    side by side instead of on top of each other: the series together take `spread` of the smallest gap between
    the values. Say so beside the figure: the shift is only drawn."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    distinct = np.unique(values)
    gap = np.diff(distinct).min() if len(distinct) > 1 else 1.0
    return values + (index - (count - 1) / 2) * spread * gap / max(1, count)


def subplot_grid(n: int, ncols: int = 3, panel=(4.6, 3.6), **kwargs):
    """Return (fig, axes) for n panels, at most `ncols` a row; unused panels are hidden."""
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel[0] * ncols + 0.8, panel[1] * nrows + 1.3), squeeze=False,
                             **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def legend(target, **kwargs) -> None:
    """Draw one legend entry per label for an Axes or a Figure (a figure's below its panels)."""
    from matplotlib.figure import Figure

    axes = target.axes if isinstance(target, Figure) else [target]
    entries: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if isinstance(target, Figure):
        kwargs = {"loc": "outside lower center", "ncols": min(4, len(entries)), **kwargs}
    target.legend(list(entries.values()), list(entries.keys()), **kwargs)


def log_axis(ax, which: str = "x") -> None:
    """Put one axis ("x" or "y") on a log scale labelled in plain numbers (1, 10, 100, not 10^2)."""
    from matplotlib import ticker

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def show_table(table, uuid: str | None = None) -> None:
    """Display a table as HTML without its index, with a plain-text copy instead of its repr (which names a memory
    address), so an executed notebook reads the same every time it runs: a DataFrame as it is (figure_table's are
    written out already), or a pandas Styler; `uuid` gives the HTML a fixed id."""
    from IPython.display import display

    styled = table if hasattr(table, "to_html") and hasattr(table, "data") else table.style.hide(axis="index")
    if uuid is not None:
        styled = styled.set_uuid(uuid)
    display({"text/html": styled.to_html(), "text/plain": styled.data.to_string(index=False)}, raw=True)
