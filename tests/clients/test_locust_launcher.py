"""`python -m clients`: the Locust command a profile gives, and refusing a bad profile before anything starts."""

from __future__ import annotations

import subprocess
import sys

from conftest import UNIT

from clients.__main__ import LOCUSTFILE, locust_command, parse_args
from clients.profile import DEFAULT_PROFILE_PATH, load_profile
from servers import registry


def command_for(*argv: str) -> list[str]:
    a = parse_args(list(argv))
    return locust_command(a, load_profile(a.profile), a.host or "http://127.0.0.1:9")


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_run_options_come_from_the_profile():
    profile = load_profile(DEFAULT_PROFILE_PATH)
    command = command_for("--transport", "long-polling", "--host", "http://127.0.0.1:8080")
    assert command[:5] == [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    assert option(command, "--host") == "http://127.0.0.1:8080"
    assert option(command, "--users") == str(profile.users)
    assert option(command, "--spawn-rate") == f"{profile.spawn_rate:g}"
    assert option(command, "--run-time") == f"{profile.duration_s}s"
    assert option(command, "--rtlab-profile") == str(DEFAULT_PROFILE_PATH)
    assert command[-1] == registry.get("long-polling").member_class == "LongPollingMember"


def test_every_transport_has_a_locust_user_named_after_its_client():
    members = {name: registry.get(name).member_class for name in registry.names(None)}
    assert members["websocket"] == "WebSocketMember" and members["sse"] == "SSEMember"
    assert len(set(members.values())) == len(members)


def test_the_web_ui_listens_on_loopback_8089_unless_headless():
    web = command_for("--transport", "websocket", "--host", "http://127.0.0.1:8080")
    assert option(web, "--web-host") == "127.0.0.1" and option(web, "--web-port") == "8089"
    assert "--headless" not in web
    headless = command_for("--transport", "websocket", "--host", "http://127.0.0.1:8080", "--headless")
    assert "--headless" in headless and "--web-port" not in headless


def test_out_puts_locust_csvs_and_rtlab_files_in_one_directory(tmp_path):
    command = command_for("--transport", "short-polling", "--host", "http://127.0.0.1:8080", "--out", str(tmp_path))
    assert option(command, "--csv") == str(tmp_path / "locust")
    assert option(command, "--rtlab-out") == str(tmp_path)


def test_a_bad_profile_is_refused_naming_the_key_before_locust_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(DEFAULT_PROFILE_PATH.read_text().replace("rooms = 5", "rooms = 0"))
    result = subprocess.run(
        [sys.executable, "-m", "clients", "--transport", "websocket", "--serve", "--profile", str(bad), "--headless"],
        check=False, capture_output=True, text=True, timeout=30 * UNIT,
    )
    assert result.returncode == 2
    assert "rooms must be at least 1" in result.stderr
    assert "Starting Locust" not in result.stderr and "rtlab serving" not in result.stderr
