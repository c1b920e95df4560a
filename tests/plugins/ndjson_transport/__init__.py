"""A transport that exists only in the tests: an NDJSON stream (one JSON message per line down a response that
never ends). Registered through RTLAB_PLUGINS=ndjson_transport (with tests/plugins on PYTHONPATH), it proves
that a transport is one registry entry, one server module, one client module and one pane module, and that
nothing outside them has to change (tests/test_plugin_transport.py)."""

from pathlib import Path

from servers.registry import Knob, Transport, register

register(Transport(
    name="ndjson",
    label="NDJSON stream",
    colour="#882255",
    server="ndjson_transport.server:NdjsonStream",
    client="ndjson_transport.client:NdjsonClient",
    browser=Path(__file__).with_name("pane.js"),
    summary="one long HTTP response; one message JSON per line; sends are ordinary POSTs",
    server_knobs=(
        Knob("ndjson_heartbeat_s", 15.0, "an empty line every so often on an idle stream, s", low=0, low_open=True),
    ),
    max_silence_s=lambda knobs: float(knobs["ndjson_heartbeat_s"]),
))
