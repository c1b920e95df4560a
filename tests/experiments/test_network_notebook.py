"""notebooks/06-network.ipynb and its loaders against a real loss run (tests/fixtures/run-network, made from
tests/fixtures/network-small.toml) and against the reference run, which sweeps no loss."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, TESTS

from experiments import analysis, notebooks

NETWORK_RUN = TESTS / "fixtures" / "run-network"  # WebSocket and both WebRTC channels at 0 and 5 % loss
NOTEBOOK = notebooks.NOTEBOOK_DIR / "06-network.ipynb"
FIGURES = ["06-drops-vs-asked.png", "06-latency-vs-loss.png", "06-delivered-vs-loss.png"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run() -> analysis.Run:
    return analysis.load_run(NETWORK_RUN)


def test_network_points_are_the_manifests_read_back_and_counters(run):
    network = analysis.network_points(run)
    assert list(network["point"]) == [p["dir"] for p in run.manifest["points"]]
    assert list(network.columns) == [*analysis.ID_COLUMNS, "loss_percent", *analysis.NETWORK_COLUMNS]
    for entry, row in zip(run.manifest["points"], network.itertuples()):
        facts = entry["network"]
        packets, tcp = facts["at_end"]["packets"], facts["at_end"]["tcp"]
        assert row.loss_asked_percent == facts["requested"]["loss_percent"] == row.loss_percent
        assert row.loss_applied_percent == facts["applied"]["loss_percent"]
        assert (row.packets_seen, row.packets_dropped) == (packets["seen"], packets["dropped"])
        assert row.dropped_percent == pytest.approx(100 * packets["dropped"] / packets["seen"])
        assert row.retransmitted_percent == pytest.approx(
            100 * tcp["retransmitted_segments"] / tcp["out_segments"])
        assert row.mtu == 1500
    by_loss = network.set_index("point")
    assert by_loss.loc["loss_percent=0/websocket-r1", "drop_rule"] == "no drop rule"
    assert by_loss.loc["loss_percent=5/websocket-r1", "drop_rule"] == \
        'meta l4proto { tcp, udp } numgen random mod 10000 < 500 counter drop comment "loss"'
    # The kernel dropped about what was asked (a few thousand packets a point: well within ±2 points).
    assert all(abs(r.dropped_percent - r.loss_percent) < 2 for r in network.itertuples())


def test_a_run_without_network_has_no_network_points():
    reference = analysis.load_run(ROOT / "results" / "reference")
    network = analysis.network_points(reference)
    assert network.empty and list(network.columns) == [*analysis.ID_COLUMNS, *analysis.NETWORK_COLUMNS]
    assert analysis.network_text(reference) == ""


def test_network_text_names_the_swept_loss(run):
    assert analysis.network_text(run) == ("each point in a network namespace of its own, {0, 5} % of the TCP and UDP "
                                          "packets dropped at random on arrival (nftables)")
    assert analysis.parameter_label("loss_percent") == "packets dropped at random (%)"
    assert analysis.carrier("websocket") == "tcp" and analysis.carrier("webrtc-unreliable") == "udp"
    assert analysis.carrier("no-such-transport") == ""
    assert [analysis.protocol(t) for t in ("sse", "webrtc", "webtransport-datagram", "no-such-transport")] == [
        "TCP", "SCTP", "QUIC", ""]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """06 executed against the network fixture and against the reference run, as `make report` does."""
    tmp = tmp_path_factory.mktemp("network-notebook")
    kernels = notebooks.write_kernelspec(tmp / "kernels")
    out = {}
    for name, run_dir in [("network", NETWORK_RUN), ("reference", ROOT / "results" / "reference")]:
        report = tmp / name
        out[name] = notebooks.execute(NOTEBOOK, run_dir, report, kernels), report
    return out


def printed(result: notebooks.Executed) -> str:
    return "".join(o.get("text", "") for c in result.nb.cells for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_the_notebook_draws_a_loss_run(executed, run):
    result, report = executed["network"]
    assert result.error is None, result.error
    assert result.figures == FIGURES
    for name in FIGURES:
        png = (report / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
    text = printed(result)
    # What the kernel read back and counted, from the manifest.
    assert "numgen random mod 10000 < 500" in text and "lo MTU 1500" in text
    network = analysis.network_points(run)
    at5 = network[network["loss_percent"] == 5]
    share = 100 * at5["packets_dropped"].sum() / at5["packets_seen"].sum()
    assert f"at 5 % it dropped {share:.2f} % of the {at5['packets_seen'].sum():,.0f} packets it saw" in text
    # The sentences come from the run's figures: whatever lost nothing is named so, the rest with its share.
    points = run.points.set_index(["transport", "loss_percent"])
    clean = [analysis.label(t) for t in run.transports if points.loc[t, "messages_lost"].sum() == 0]
    assert f"Lost nothing at any loss: {', '.join(clean)}." in text
    # Those side by side, by the protocol that resends (TCP, SCTP, QUIC).
    first = next(t for t in run.transports if points.loc[t, "messages_lost"].sum() == 0)
    assert "Delivering everything at 5 % loss, p99 by the protocol that resends: over " \
        f"{analysis.protocol(first)}, {analysis.label(first)} " in text
    for transport in run.transports:
        row = points.loc[(transport, 5)]
        assert f"- {analysis.label(transport)} (over {analysis.protocol(transport)}): delivered " \
               f"{row.delivered_ratio * 100:.1f} % ({row.messages_lost:,.0f} lost)" in text
        if row.messages_lost:
            assert f"Lost messages: {analysis.label(transport)}, {100 * (1 - row.delivered_ratio):.1f} % of its " \
                   "messages at 5 % loss." in text
    tables = [o for c in result.nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert len(tables) == 1 and "packets dropped (%)" in tables[0]["data"]["text/html"]


def test_on_a_run_without_a_loss_sweep_the_report_leaves_it_out_and_names_the_experiment(executed):
    result, report = executed["reference"]
    assert result.error is None, result.error
    assert result.figures == [] and not list(report.glob("*.png"))
    assert result.skipped == "This run has no sweep of packet loss: `make run-experiment EXP=network-loss` measures it."
    assert not [o for c in result.nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]


def test_the_fixture_is_a_real_loss_run():
    manifest = json.loads((NETWORK_RUN / "manifest.json").read_text())
    assert manifest["experiment"]["sweep"] == {"loss_percent": [0, 5]}
    assert manifest["experiment"]["source"] == "tests/fixtures/network-small.toml"
    assert all(p["network"]["at_end"]["packets"]["seen"] > 1000 for p in manifest["points"])
