"""Run every notebook headless against one run; write <run>/report/: the figures as PNG and index.html.

A notebook (or a section of one) whose subject the run did not measure is left out: its metadata says
`{"rtlab": {"needs": "<subject>"}}` (experiments.analysis.SUBJECTS), and the report names the experiment that
measures it in one line instead of showing empty charts.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .analysis import ROOT, SUBJECTS, measures, not_measured, relative_to_root, resolve_run

NOTEBOOK_DIR = ROOT / "notebooks"
CELL_TIMEOUT_S = 300
KERNEL_NAME = "rtlab-python"
PARALLEL_KERNELS = 4


def notebook_paths(directory: Path = NOTEBOOK_DIR) -> list[Path]:
    """Return the report's notebooks in order: `NN-name.ipynb`."""
    return sorted(directory.glob("[0-9][0-9]-*.ipynb"))


def inject_parameters(nb, **parameters) -> None:
    """Add a cell setting `parameters` right after the cell tagged `parameters` (as papermill does)."""
    import nbformat

    source = "# Injected by experiments.notebooks\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell["id"] = "injected-parameters"  # not a random id: an executed notebook is the same every time
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])), 0)
    nb.cells.insert(at, cell)


def write_kernelspec(directory: Path) -> Path:
    """Write a kernelspec that runs this very interpreter (the venv's), whatever else Jupyter has installed.

    MPLBACKEND=Agg: no display is needed; the notebooks render their PNGs themselves (analysis.show).
    """
    spec_dir = directory / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "rtlab (this Python)",
        "language": "python",
        "env": {"MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return directory


@dataclass
class Executed:
    """One notebook after execution: the notebook with its outputs, and the error that stopped it, if any."""

    path: Path
    nb: object
    error: str | None = None
    seconds: float = 0.0
    figures: list[str] = field(default_factory=list)
    skipped: str | None = None  # not executed: the run did not measure its subject (this line says which does)


def needs(item) -> str | None:
    """The subject (experiments.analysis.SUBJECTS) a notebook or a cell needs the run to have measured, if any."""
    subject = (item.get("metadata", {}).get("rtlab") or {}).get("needs")
    if subject is not None and subject not in SUBJECTS:
        raise ValueError(f"unknown rtlab.needs {subject!r}; the subjects are {', '.join(SUBJECTS)}")
    return subject


def for_run(nb, manifest: dict) -> None:
    """Leave out the cells whose subject the run did not measure (a section: its heading and its code)."""
    nb.cells = [cell for cell in nb.cells if needs(cell) is None or measures(manifest, needs(cell))]


def execute(path: Path, run_dir: Path, report_dir: Path | None, kernel_dirs: Path,
            timeout_s: int = CELL_TIMEOUT_S) -> Executed:
    """Execute one notebook with RUN (and REPORT_DIR) injected, the sections whose subject the run did not measure
    left out; return it with its outputs, errors caught. A notebook whose own subject the run did not measure is
    not executed: it comes back `skipped`, saying which experiment measures it."""
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    subject = needs(nb)
    if subject is not None and not measures(manifest, subject):
        return Executed(path, nb, skipped=not_measured(subject))
    for_run(nb, manifest)
    # Paths inside the repository are injected relative to it, so a committed report does not change with
    # the checkout's location; analysis.resolve_run and analysis.show read them from the repository root.
    inject_parameters(nb, RUN=relative_to_root(run_dir),
                      REPORT_DIR=relative_to_root(report_dir) if report_dir else None)
    # Over IPC (Unix sockets in our own temporary folder), not TCP: nothing listens on a port, and the kernel has no
    # reason to warn that its TCP traffic is not encrypted.
    km = AsyncKernelManager(kernel_name=KERNEL_NAME, transport="ipc", ip=str(kernel_dirs / f"{path.stem}-ipc"),
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dirs)]))
    client = NotebookClient(nb, km=km, timeout=timeout_s, record_timing=False,  # no timestamps: stable outputs
                            resources={"metadata": {"path": str(path.parent)}})
    started = time.monotonic()
    error = None
    try:
        client.execute(cleanup_kc=True)  # shuts the kernel down, though the manager is ours
    except CellExecutionError as failure:
        error = str(failure)
    executed = Executed(path, nb, error, time.monotonic() - started)
    executed.figures = [name for cell in nb.cells for name in _figure_files(cell)]
    return executed


def _figure_files(cell) -> list[str]:
    return [
        output.get("metadata", {}).get("image/png", {}).get("rtlab_file")
        for output in cell.get("outputs", [])
        if output.get("metadata", {}).get("image/png", {}).get("rtlab_file")
    ]


def build_report(run: str | Path | None = None, notebooks: list[Path] | None = None,
                 code_html: bool = True) -> tuple[Path, list[Executed]]:
    """Execute every notebook against `run` and write <run>/report/ (PNGs, executed notebooks, index.html).

    Return the index's path and the notebooks; a notebook that failed has `error` set, and the index
    shows where. code_html=False leaves out the nbconvert pages (a report to commit stays small).
    """
    run_dir = resolve_run(run)
    report_dir = run_dir / "report"
    if report_dir.exists():
        shutil.rmtree(report_dir)  # nothing stale: every file in it comes from this execution
    report_dir.mkdir()
    paths = notebooks or notebook_paths()
    with tempfile.TemporaryDirectory(prefix="rtlab-kernel-") as kernels:
        write_kernelspec(Path(kernels))
        # One kernel per notebook, side by side: most of a notebook's time is its kernel starting and importing.
        with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1, PARALLEL_KERNELS))) as pool:
            results = list(pool.map(lambda path: execute(path, run_dir, report_dir, Path(kernels)), paths))
    for result in results:
        if result.skipped:
            continue
        _write_notebook(result.nb, report_dir / result.path.name)
        if code_html:
            _export_nbconvert(report_dir / result.path.name)
    index = report_dir / "index.html"
    index.write_text(render_index(run_dir, results))
    return index, results


def _write_notebook(nb, path: Path) -> None:
    import nbformat

    nbformat.write(nb, path)


def _export_nbconvert(path: Path) -> None:
    """Also write the whole executed notebook, code included, as HTML when nbconvert is installed."""
    try:
        from nbconvert import HTMLExporter
    except ImportError:
        return
    body, _ = HTMLExporter().from_filename(str(path))
    path.with_suffix(".html").write_text(body)


# ---------------------------------------------------------------------------------------------------------------
# index.html: the notebooks' prose and outputs, code left out; PNGs linked, tables inline.

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; } .meta td { padding: 0 1em 0 0; vertical-align: top; }
nav a { margin-right: 1em; } section { border-top: 1px solid #ddd; margin-top: 2em; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
table.dataframe, .output table { border-collapse: collapse; font-size: 13px; margin: 1em 0; }
.output th, .output td { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: right; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 13px; }
pre.error { background: #fdecea; color: #900; } .failed { color: #900; font-weight: bold; }
"""


def _markdown(text: str) -> str:
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # markdown-it-py comes with rich; without it the prose is shown as written
        return f"<pre>{html.escape(text)}</pre>"
    return MarkdownIt("commonmark").enable("table").render(text)


def _markdown_inline(text: str) -> str:
    """One line of markdown (code spans) as HTML, without a paragraph around it."""
    return _markdown(text).strip().removeprefix("<p>").removesuffix("</p>")


def _output_html(output) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{html.escape(output.get('text', ''))}</pre>"
    if kind == "error":
        return f"<pre class='error'>{html.escape(output.get('ename', ''))}: {html.escape(output.get('evalue', ''))}</pre>"
    data = output.get("data", {})
    if "image/png" in data:
        name = output.get("metadata", {}).get("image/png", {}).get("rtlab_file")
        src = name or f"data:image/png;base64,{data['image/png']}"
        alt = html.escape(data.get("text/plain", "figure"))
        return f"<a href='{src}'><img src='{src}' alt='{alt}'></a>" if name else f"<img src='{src}' alt='{alt}'>"
    if "text/html" in data:
        return f"<div class='output'>{data['text/html']}</div>"
    if "text/plain" in data:
        return f"<pre>{html.escape(data['text/plain'])}</pre>"
    return ""


def _title(nb, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return fallback


def render_index(run_dir: Path, results: list[Executed]) -> str:
    """Return the report page: the run's description, then each notebook's prose, figures and tables."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    experiment, machine, pinning = manifest["experiment"], manifest["machine"], manifest["pinning"]
    dirty = " (uncommitted changes)" if manifest.get("git_dirty") else ""
    rows = [
        ("run", run_dir.name + (" (quick)" if manifest.get("quick") else "")),
        ("experiment", f"{experiment['name']}: {experiment.get('description', '')}"),
        ("profile", ", ".join(f"{k} = {v}" for k, v in experiment["profile"].items())),
        ("sweep", ", ".join(f"{k} = {v}" for k, v in experiment["sweep"].items()) or "none"),
        ("machine", f"{machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['platform']}"),
        ("pinning", f"server on CPUs {pinning['server_cpus']}, generator on {pinning['generator_cpus']}"),
        ("measured", f"{manifest.get('started_at')} to {manifest.get('ended_at')}"),
        ("code", f"{manifest.get('git_commit') or 'unknown'}{dirty}"),
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>rtlab report: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head><body>",
        "<h1>rtlab report</h1><table class='meta'>",
        *(f"<tr><td>{k}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows),
        "</table><nav>",
        *(f"<a href='#{r.path.stem}'>{html.escape(_title(r.nb, r.path.stem))}</a>" for r in results if not r.skipped),
        "</nav>",
    ]
    skipped = [r for r in results if r.skipped]
    if skipped:
        parts.append("<p class='meta'>Not measured by this run:</p><ul class='meta'>")
        parts += [f"<li>{html.escape(_title(r.nb, r.path.stem))}. {_markdown_inline(r.skipped)}</li>" for r in skipped]
        parts.append("</ul>")
    for result in results:
        if result.skipped:
            continue
        notebook = result.path.name
        links = [f"<a href='{notebook}'>{notebook}</a>"]
        if (run_dir / "report" / result.path.with_suffix(".html").name).exists():
            links.append(f"<a href='{result.path.stem}.html'>with code</a>")
        parts.append(f"<section id='{result.path.stem}'><p class='meta'>{' · '.join(links)}</p>")
        if result.error:
            parts.append("<p class='failed'>This notebook stopped with an error; what ran is shown.</p>")
        for cell in result.nb.cells:
            if cell.cell_type == "markdown":
                parts.append(_markdown(cell.source))
            elif cell.cell_type == "code":
                parts.extend(_output_html(output) for output in cell.get("outputs", []))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def main(run: str | None = None) -> int:
    """Build the report of `run` (default: results/latest), print its path; 1 when a notebook failed."""
    try:
        index, results = build_report(run)
    except FileNotFoundError as error:
        print(f"python -m experiments report: {error}", file=sys.stderr)
        return 2
    for result in results:
        if result.skipped:
            print(f"{result.path.name}: left out. {result.skipped}")
            continue
        state = "FAILED" if result.error else "ok"
        print(f"{result.path.name}: {state} in {result.seconds:.1f} s, {len(result.figures)} figures")
        if result.error:
            print(result.error, file=sys.stderr)
    print(f"report: {index}")
    return 1 if any(r.error for r in results) else 0
