"""`python -m clients`: run Locust for one transport with the run options a load profile gives, optionally
starting the server for it first (start, wait for its URL, run, stop in `finally`)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from servers import registry

from . import locust_user_class
from .profile import DEFAULT_PROFILE_PATH, Profile, ProfileError, load_profile

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
SERVER_START_TIMEOUT_S = 15.0  # from spawning the server to its URL line
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
    ]
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


class Server:
    """`python -m servers` for one transport on a free loopback port, stopped with SIGTERM."""

    def __init__(self, transport: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "servers", "--transport", transport, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            # Its own session: Ctrl-C in the terminal reaches Locust, which then stops its users and
            # writes its summary while the server still serves; the server is stopped after that.
            start_new_session=True,
        )
        self.url: str | None = None
        self._seen: list[str] = []
        self._listening = threading.Event()
        # One reader for the server's whole life: it finds the URL line, then relays the rest, so
        # the server never blocks on a full pipe.
        threading.Thread(target=self._read, daemon=True).start()
        if not self._listening.wait(SERVER_START_TIMEOUT_S) or self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self._seen))

    def _read(self) -> None:
        for line in self.proc.stdout:
            if self.url is not None:
                sys.stderr.write(f"[server] {line}")
                continue
            sys.stderr.write(line)
            self._seen.append(line)
            match = re.search(r" on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                self._listening.set()
        self._listening.set()  # the server exited: stop waiting

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        profile = load_profile(a.profile)
    except ProfileError as error:
        print(f"python -m clients: {error}", file=sys.stderr)
        return 2
    try:
        server = Server(a.transport) if a.serve else None
    except RuntimeError as error:
        print(f"python -m clients: {error}", file=sys.stderr)
        return 1
    try:
        command = locust_command(a, profile, server.url if server else a.host)
        if not a.headless:
            print(f"rtlab: Locust web UI on http://{a.web_host}:{a.web_port}; Ctrl-C to stop", file=sys.stderr, flush=True)
        locust = subprocess.Popen(command)
        # A SIGTERM for us (e.g. from the experiment runner) is one for Locust, which then shuts down cleanly.
        signal.signal(signal.SIGTERM, lambda signum, frame: locust.send_signal(signal.SIGTERM))
        try:
            return locust.wait()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to Locust too; give it the time to write its summary.
            return locust.wait()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
