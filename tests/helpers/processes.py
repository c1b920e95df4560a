"""Start the test-only server scripts under the one supervisor (experiments.supervisor)."""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.supervisor import ServerProcess, launch_server

HELPERS = Path(__file__).resolve().parent


def from_a_terminal(command: list[str]) -> list[str]:
    """`command` as a terminal starts it, Ctrl-C (SIGINT) at its default: for a test that plays the user's Ctrl-C.

    A suite started in the background (`make test &`, a CI job, nohup) runs with SIGINT ignored, as POSIX shells start
    `cmd &`; every child inherits that, and Python then never turns SIGINT into KeyboardInterrupt: the Ctrl-C would
    never arrive. A shim puts SIGINT back to its default and execs the command (the same pid)."""
    shim = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", shim, *command]


def dropping_server(transport: str, log_path: Path, timeout_s: float, drop_id: int = 3) -> ServerProcess:
    """Start tests/helpers/dropping_server.py: a server that never shows message `drop_id` of any room."""
    return launch_server(["--transport", transport, "--drop-id", str(drop_id)], log_path,
                         entry=[sys.executable, str(HELPERS / "dropping_server.py")]).wait(timeout_s)
