"""Start the test-only server scripts under the one supervisor (experiments.supervisor)."""

from __future__ import annotations

import sys
from pathlib import Path

from experiments.supervisor import ServerProcess, launch_server

HELPERS = Path(__file__).resolve().parent


def dropping_server(transport: str, log_path: Path, timeout_s: float, drop_id: int = 3) -> ServerProcess:
    """Start tests/helpers/dropping_server.py: a server that never shows message `drop_id` of any room."""
    return launch_server(["--transport", transport, "--drop-id", str(drop_id)], log_path,
                         entry=[sys.executable, str(HELPERS / "dropping_server.py")]).wait(timeout_s)
