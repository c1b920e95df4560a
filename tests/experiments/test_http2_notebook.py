"""notebooks/08-http2.ipynb against a real run through the proxy (tests/fixtures/run-http2, made from
tests/fixtures/http2-small.toml): both figures, and its sentences computed from the run's own figures."""

from __future__ import annotations

import shutil

import pytest
from conftest import TESTS

from experiments import analysis, notebooks

HTTP2_RUN = TESTS / "fixtures" / "run-http2"  # WebSocket and long polling at HTTP/1.1 and HTTP/2, captured
NOTEBOOK = notebooks.NOTEBOOK_DIR / "08-http2.ipynb"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "run-http2"
    shutil.copytree(HTTP2_RUN, run_dir)
    _, results = notebooks.build_report(run_dir, [NOTEBOOK])
    return run_dir, results[0]


def test_the_notebook_draws_the_run_and_says_what_it_measured(executed):
    run_dir, result = executed
    assert result.error is None, result.error
    assert result.figures == ["08-bytes-per-message.png", "08-latency-and-cpu.png"]
    for name in result.figures:
        assert (run_dir / "report" / name).read_bytes().startswith(PNG_MAGIC)
    text = "".join(o.get("text", "") for c in result.nb.cells for o in c.get("outputs", []))
    points = analysis.load_run(HTTP2_RUN).points
    for transport in ("websocket", "long-polling"):
        h1, h2 = (points[(points.transport == transport) & (points.http.astype(str) == v)].iloc[0] for v in ("1.1", "2"))
        # The sentence for each transport carries the run's own figures: the member's bytes both ways, the proxy's CPU.
        assert (f"- {analysis.label(transport)}: the member paid {h2.bytes_per_delivered_message:,.0f} B against "
                f"{h1.bytes_per_delivered_message:,.0f}") in text
        assert f"the proxy spent {h2.proxy_cpu_us_per_delivered_message:,.1f} µs" in text
        assert h1.proxy_cpu_us_per_delivered_message > 0 and h1.meter_bytes_per_delivered_message > 0
    assert "Messages lost or never arrived, over every point: 0." in text
