"""Load clients for rtlab: one client class per transport, one Locust load profile for them all.

Importing this package (or `clients.profile`, `clients.schedule`, `clients.completeness`,
`clients.results`) touches neither gevent nor Locust. The client classes themselves (named by each
transport's entry in servers.registry) run under gevent: Locust patches on import; a script calls
`gevent.monkey.patch_all()` first.
"""

from __future__ import annotations

from servers import registry

# The HTTP versions a member may speak (clients/http.py): here, so the launcher can offer them without gevent.
HTTP_VERSIONS = ("1.1", "2")


def client_class(transport: str) -> type:
    """Import and return the client class for `transport` (this imports gevent)."""
    return registry.load(registry.get(transport).client)


def locust_user_class(transport: str) -> str:
    """Return the name of the Locust user class that drives `transport` (clients/locustfile.py makes one each)."""
    return registry.get(transport).member_class
