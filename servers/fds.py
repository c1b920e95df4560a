"""The process's limit on open files: every connection a member holds is a descriptor. Apart from servers.guard so
that `python -m clients` raises it without importing aiohttp (half a second of every Locust run's start)."""

from __future__ import annotations

import contextlib
import resource

FD_RESERVE = 128


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (each connection is a descriptor);
    return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def fd_budget() -> int:
    """Connections this process can hold: its open-file limit less FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 30) if soft == resource.RLIM_INFINITY else max(1, soft - FD_RESERVE)
