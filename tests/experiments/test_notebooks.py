"""Every notebook runs headless against the fixture run with no cell error and writes its figures."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import nbformat
import pytest
from conftest import TESTS

from experiments import notebooks

FIXTURE = TESTS / "fixtures" / "run-small"
# The figures each notebook saves for the fixture run (a users sweep over every transport).
EXPECTED_FIGURES = {
    "01-latency": ["01-latency-cdf", "01-latency-vs-users"],
    "02-bandwidth": ["02-bytes-per-message", "02-latency-vs-bandwidth"],
    "03-resources": ["03-cpu-over-time", "03-memory-connections", "03-cpu-per-message", "03-event-loop-lag"],
    "04-capacity": ["04-capacity"],
    "05-scaling": [],  # left out: no cluster (tests/experiments/test_experiment_scaling.py draws a run that has one)
    "06-network": [],  # left out: no loss swept (tests/experiments/test_network_notebook.py draws a run that does)
    "07-peers": [],  # left out: no peers (tests/experiments/test_peers_run.py draws a run that has)
    "08-http2": [],  # left out: no HTTP version swept (tests/experiments/test_http2_notebook.py draws a run that does)
    "09-soak": [],  # left out: no soak (tests/experiments/test_soak.py draws a run that is one)
}
LEFT_OUT = {"05-scaling": "EXP=scaling", "06-network": "EXP=network-loss", "07-peers": "EXP=peers",
            "08-http2": "EXP=http2", "09-soak": "EXP=soak"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_the_notebooks_are_the_expected_ones():
    assert [p.stem for p in notebooks.notebook_paths()] == list(EXPECTED_FIGURES)


@pytest.mark.parametrize("path", notebooks.notebook_paths(), ids=lambda p: p.stem)
def test_notebooks_only_load_and_plot(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(cell.source for cell in nb.cells if cell.cell_type == "code")
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
    assert "analysis.load_run(RUN)" in code
    # Raw files are read by experiments.analysis, figures computed by experiments.figures: never here.
    for forbidden in ("read_csv", "open(", "read_histogram", "parse_metrics", "RunData", "metrics_before", ".hdr"):
        assert forbidden not in code, f"{path.name} does {forbidden}"
    # Stored without outputs: what a reader sees comes from a run, never from a stale copy.
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run-small"
    shutil.copytree(FIXTURE, run_dir)
    # What the kernels print goes where our stderr goes: catch it (as a terminal would show it).
    printed = run_dir.parent / "stderr.txt"
    saved = os.dup(2)
    with open(printed, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            index, results = notebooks.build_report(run_dir)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return run_dir, index, results, printed.read_text()


def test_every_notebook_runs_without_a_cell_error(report):
    _, _, results, _ = report
    assert [r.path.stem for r in results] == list(EXPECTED_FIGURES)
    for result in results:
        assert result.error is None, f"{result.path.name}:\n{result.error}"
        errors = [o for c in result.nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors


def test_each_notebook_writes_its_figures_as_png(report):
    run_dir, _, results, _ = report
    for result in results:
        assert result.figures == [f"{name}.png" for name in EXPECTED_FIGURES[result.path.stem]]
        for name in result.figures:
            png = (run_dir / "report" / name).read_bytes()
            assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name


def test_the_report_page_shows_every_figure_and_the_run(report):
    run_dir, index, _, _ = report
    assert index == run_dir / "report" / "index.html"
    page = index.read_text()
    linked = set(re.findall(r"<img src='([^']+\.png)'", page))
    assert linked == {f"{name}.png" for names in EXPECTED_FIGURES.values() for name in names}
    assert "AMD EPYC" in page and "small" in page
    assert "<table" in page  # the notebooks' tables, inline
    for stem in EXPECTED_FIGURES:
        assert (run_dir / "report" / f"{stem}.ipynb").exists() == (stem not in LEFT_OUT)


def test_a_section_appears_only_when_the_run_measured_its_subject(report):
    run_dir, index, results, _ = report
    page = index.read_text()
    for stem, experiment in LEFT_OUT.items():
        assert f"id='{stem}'" not in page  # no heading without content
        assert f"`make run-experiment {experiment}`" in next(r.skipped for r in results if r.path.stem == stem)
        assert f"<code>make run-experiment {experiment}</code>" in page  # one line naming the experiment instead
    assert "id='04-capacity'" in page  # the fixture sweeps users: its capacity is shown
    assert "Fixed and marginal cost" not in page  # a section of 03: the fixture does not sweep the message rate


def test_the_report_prints_no_alarming_kernel_warning(report):
    *_, printed = report
    assert "without encryption" not in printed and "WARNING" not in printed, printed


def test_the_reports_tables_are_in_the_units_people_read(report):
    run_dir, index, _, _ = report
    page = index.read_text()
    assert "server peak RSS (MB)" in page and "(bool)" not in page  # flags read yes/no, not 0.0
    assert not re.search(r"<td[^>]*>\s*\d{1,3}(,\d{3}){2,}\.\d+\s*</td>", page)  # no 49,377,280.0: bytes are MB


def test_the_run_parameter_is_injected_after_the_parameters_cell():
    nb = nbformat.read(notebooks.notebook_paths()[0], as_version=4)
    notebooks.inject_parameters(nb, RUN="/some/run", REPORT_DIR=None)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "parameters" in t)
    assert "injected-parameters" in tags[at + 1]
    assert "RUN = '/some/run'" in nb.cells[at + 1].source and "REPORT_DIR = None" in nb.cells[at + 1].source


def test_a_run_without_a_sweep_gets_every_figure_but_the_sweep_curve(tmp_path):
    """The shape of the baseline and the reference run: one point per transport."""
    run_dir = tmp_path / "run-one-point"
    shutil.copytree(FIXTURE, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["experiment"]["sweep"] = {}
    manifest["points"] = [dict(p, swept={}) for p in manifest["points"] if p["swept"]["users"] == 10]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with open(FIXTURE / "summary.csv", newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["users"] == "10"]
    with open(run_dir / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in rows[0] if c != "users"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    index, results = notebooks.build_report(run_dir)
    for result in results:
        assert result.error is None, f"{result.path.name}:\n{result.error}"
        expected = [n for n in EXPECTED_FIGURES[result.path.stem] if not n.startswith(("01-latency-vs", "04-"))]
        assert result.figures == [f"{name}.png" for name in expected]
    assert "<code>make run-experiment EXP=capacity</code>" in index.read_text()  # a baseline has no capacity to show
