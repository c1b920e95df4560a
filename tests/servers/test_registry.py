"""The transport registry: what an entry must hold, how knobs check values, and plugins from outside the tree."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TESTS

from servers import registry
from servers.registry import Knob, Transport

PLUGINS = TESTS / "plugins"


def entry(**changes) -> Transport:
    fields = {"name": "pigeon", "label": "Carrier pigeon", "colour": "#000000", "server": "a.b:C",
              "client": "d.e:PigeonClient"}
    return Transport(**(fields | changes))


@pytest.mark.parametrize("changes, message", [
    ({"name": "Bad Name"}, "must match"),
    ({"name": "websocket"}, "registered already"),
    ({"name": "all"}, "registered already"),
    ({"colour": "red"}, "colour must be #RRGGBB"),
    ({"server": "no-colon"}, "'module:attribute'"),
    ({"browser": Path("/nonexistent/pane.js")}, "does not exist"),
    ({"server_knobs": (Knob("ws_send_queue", 1, "taken"),)}, "belongs to another transport"),
    ({"profile_knobs": (Knob("Bad-Knob", 1, "x"),)}, "knob name"),
    ({"profile_knobs": (Knob("pigeon_speed", 0, "x", low=1),)}, "at least 1"),
])
def test_a_bad_entry_is_refused_naming_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        registry.register(entry(**changes))
    assert "pigeon" not in registry.names(None)


def test_knobs_check_type_and_bounds_and_say_their_flags():
    seconds = Knob("pigeon_rest_s", 1.0, "x", low=0, low_open=True, high=10, flag="--rest")
    assert seconds.check(2) == 2 and seconds.check(2.5) == 2.5  # a number keeps the type it was written with
    for bad, why in ((0, "more than 0"), (11, "at most 10"), (True, "finite number"), ("3", "finite number"),
                     (float("nan"), "finite number")):
        with pytest.raises(ValueError, match=why):
            seconds.check(bad)
    count = Knob("pigeon_count", 3, "x", low=1)
    with pytest.raises(ValueError, match="an integer"):
        count.check(2.5)
    assert Knob("pigeon_fast", False, "x").cli_args(True) == ["--pigeon-fast"]
    assert Knob("pigeon_fast", False, "x").cli_args(False) == ["--no-pigeon-fast"]
    assert seconds.cli_args(2.5) == ["--rest", "2.5"] and count.cli_flag == "--pigeon-count"


def test_rtlabs_own_transports_and_their_parts():
    assert registry.names() == ("short-polling", "long-polling", "websocket", "sse", "webrtc", "webrtc-unreliable",
                                "webtransport", "webtransport-datagram")
    assert registry.expand("all") == registry.names() and registry.expand("sse") == ("sse",)
    with pytest.raises(registry.UnknownTransport, match="choose from short-polling"):
        registry.get("carrier-pigeon")
    for transport in registry.transports():
        if transport.group == registry.PRODUCT:  # the demo shows rtlab's own; a peer has no pane
            assert transport.browser is not None and transport.browser.is_file()
        if transport.process:  # a peer of another stack: its module exists (importing it configures its framework)
            assert importlib.util.find_spec(transport.process.split(":")[0]) is not None
        else:
            assert registry.load(transport.server).__name__
        # The client module exists (not imported here: clients import gevent, which this process keeps out).
        assert importlib.util.find_spec(transport.client.split(":")[0]) is not None
    assert len({t.colour for t in registry.transports()}) == len(registry.transports())
    assert registry.get("short-polling").theory_latency_ms({"poll_interval_s": 2.0}) == 1000.0


def test_a_plugin_named_in_the_environment_is_registered_in_a_child_process():
    env = os.environ | {"RTLAB_PLUGINS": "ndjson_transport", "PYTHONPATH": str(PLUGINS)}
    code = "from servers import registry; print(registry.names(), registry.get('ndjson').member_class)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    own = ("'short-polling', 'long-polling', 'websocket', 'sse', 'webrtc', 'webrtc-unreliable', 'webtransport', "
           "'webtransport-datagram'")
    assert out.strip() == f"({own}, 'ndjson') NdjsonMember"
    missing = subprocess.run([sys.executable, "-c", code], env=os.environ | {"RTLAB_PLUGINS": "no_such_plugin"},
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "no_such_plugin" in missing.stderr
