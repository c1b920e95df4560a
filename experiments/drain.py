"""`python -m experiments drain`: drain one instance by hand: out of HAProxy (its runtime API, when given),
WebSockets closed with 1012, held polls answered, event streams ended."""

from __future__ import annotations

import argparse
import json
import sys

from .cluster import drain_instance
from .haproxy import HAProxy
from .redis_server import ClusterError


def add_drain_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", required=True, help="the instance itself (not the balancer), e.g. http://127.0.0.1:8081")
    parser.add_argument("--grace", type=float, default=0.0,
                        help="seconds between leaving the health check (503) and closing the members; "
                             "longer than the balancer needs to notice (0.4 s with the generated haproxy.cfg)")
    parser.add_argument("--haproxy-admin", metavar="HOST:PORT",
                        help="HAProxy's runtime API: set the server to drain there first (then no grace is needed)")
    parser.add_argument("--server", help="the instance's server name in HAProxy (with --haproxy-admin), e.g. server-1")
    return parser


def drain_command(argv: list[str] | None = None) -> int:
    """`python -m experiments drain --url URL [--grace S] [--haproxy-admin HOST:PORT --server NAME]`."""
    p = add_drain_arguments(argparse.ArgumentParser(
        prog="python -m experiments drain",
        description="Drain one rtlab instance: out of the balancer, WebSockets closed with 1012, held polls answered.",
    ))
    a = p.parse_args(argv)
    return run_drain(a)


def run_drain(a: argparse.Namespace) -> int:
    """Run a drain from parsed arguments (add_drain_arguments); print the instance's answer as JSON."""
    try:
        if a.haproxy_admin:
            if not a.server:
                print("python -m experiments drain: --haproxy-admin needs --server", file=sys.stderr)
                return 2
            host, _, port = a.haproxy_admin.rpartition(":")
            proxy = HAProxy.__new__(HAProxy)  # only its runtime API is used
            proxy.admin_port = int(port)
            if host not in ("127.0.0.1", "localhost", ""):
                print("python -m experiments drain: the runtime API is reached on 127.0.0.1 only", file=sys.stderr)
                return 2
            proxy.set_state(a.server, "drain")
        print(json.dumps(drain_instance(a.url, a.grace)))
    except (ClusterError, OSError) as error:
        print(f"python -m experiments drain: {error}", file=sys.stderr)
        return 1
    return 0
