"""`python -m clients`: run Locust for one transport with the run options a load profile gives, optionally
starting the server for it first (experiments.supervisor: start, wait until it listens, run, stop in `finally`)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from pathlib import Path

from experiments.supervisor import Process, ProcessError, start_server

from servers import registry
from servers.fds import raise_fd_limit

from . import HTTP_VERSIONS, locust_user_class
from .profile import DEFAULT_PROFILE_PATH, Profile, ProfileError, load_profile

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SERVER_START_TIMEOUT_S = 15.0  # from spawning the server to its saying it listens
SERVER_STOP_TIMEOUT_S = 10.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m clients",
        description="Load one rtlab transport with Locust, driven by a TOML load profile.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--transport", required=True, choices=list(registry.names(None)))
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="URL of a running server, e.g. http://127.0.0.1:8080")
    where.add_argument("--serve", action="store_true", help="start `python -m servers` for the transport on a free port")
    p.add_argument(
        "--profile",
        default=os.environ.get("RTLAB_PROFILE", str(DEFAULT_PROFILE_PATH)),
        help="TOML load profile (env RTLAB_PROFILE)",
    )
    p.add_argument("--http", choices=HTTP_VERSIONS, default="1.1",
                   help="the HTTP every member speaks (clients/http.py): 1.1, or 2 (h2 over TLS for an https:// host, "
                        "h2c for http://)")
    p.add_argument("--tls-ca", metavar="PEM", help="the certificate that verifies an https:// host (a self-signed one)")
    p.add_argument("--headless", action="store_true", help="run without the web UI and quit after duration_s")
    p.add_argument("--csv", metavar="PREFIX", help="Locust's --csv prefix (rtlab files go beside, same prefix)")
    p.add_argument("--out", metavar="DIR", help="put Locust's CSVs (DIR/locust_*.csv) and rtlab's files in DIR")
    p.add_argument("--web-host", default="127.0.0.1", help="web UI address")
    p.add_argument("--web-port", type=int, default=8089, help="web UI port")
    p.add_argument("locust_args", nargs="*", help="extra Locust arguments, after --")
    return p.parse_args(argv)


def locust_command(a: argparse.Namespace, profile: Profile, host: str) -> list[str]:
    """Return the Locust command line for this run: users, spawn rate and run time from the profile."""
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--host", host,
        "--users", str(profile.users),
        "--spawn-rate", f"{profile.spawn_rate:g}",
        "--run-time", f"{profile.duration_s}s",
        "--rtlab-profile", str(a.profile),
        "--rtlab-http", a.http,
    ]
    if a.tls_ca:
        command += ["--rtlab-tls-ca", a.tls_ca]
    if a.headless:
        command += ["--headless", "--only-summary"]
    else:
        command += ["--web-host", a.web_host, "--web-port", str(a.web_port)]
    csv_prefix = a.csv or (str(Path(a.out) / "locust") if a.out else None)
    if csv_prefix:
        command += ["--csv", csv_prefix]
    if a.out:
        command += ["--rtlab-out", a.out]
    return [*command, *a.locust_args, locust_user_class(a.transport)]


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    raise_fd_limit()  # every member holds a connection or two: Locust and its workers inherit the higher limit
    try:
        profile = load_profile(a.profile)
    except ProfileError as error:
        print(f"python -m clients: {error}", file=sys.stderr)
        return 2
    server = None
    if a.serve:
        # In a session of its own (the supervisor's default): Ctrl-C in the terminal reaches Locust, which then
        # stops its users and writes its summary while the server still serves; the server is stopped after.
        log = Path(a.out) / "server.log" if a.out else Path(tempfile.mkstemp(prefix="rtlab-server-", suffix=".log")[1])
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            server = start_server(["--transport", a.transport, "--host", "127.0.0.1"], log,
                                  timeout_s=SERVER_START_TIMEOUT_S)
        except ProcessError as error:
            print(f"python -m clients: the server did not start: {error}", file=sys.stderr)
            return 1
        print(f"rtlab: {a.transport} server on {server.url} (its log: {log})", file=sys.stderr, flush=True)
    try:
        command = locust_command(a, profile, server.url if server else a.host)
        if not a.headless:
            print(f"rtlab: Locust web UI on http://{a.web_host}:{a.web_port}; Ctrl-C to stop", file=sys.stderr, flush=True)
        # In the foreground, in our session: the terminal's Ctrl-C is Locust's too.
        locust = Process("locust", command, None, session=False, stdin=None).start()
        # A SIGTERM for us (e.g. from the experiment runner) is one for Locust, which then shuts down cleanly.
        signal.signal(signal.SIGTERM, lambda signum, frame: locust.signal(signal.SIGTERM))
        try:
            return locust.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to Locust too; give it the time to write its summary.
            return locust.wait()
    finally:
        if server is not None:
            server.stop(SERVER_STOP_TIMEOUT_S)


if __name__ == "__main__":
    sys.exit(main())
