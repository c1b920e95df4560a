"""Load clients for rtlab: one client class per transport, one Locust load profile for them all.

Importing this package (or `clients.profile`, `clients.schedule`, `clients.completeness`,
`clients.results`) touches neither gevent nor Locust. The client classes themselves
(`clients.short_polling` etc.) run under gevent: Locust patches on import; a script calls
`gevent.monkey.patch_all()` first.
"""

from __future__ import annotations

import importlib

# Adding a transport: one client module, one Locust user class in clients/locustfile.py, one line here.
# Values are "module:ClientClass" and the Locust user class name, so this registry imports nothing.
TRANSPORTS: dict[str, tuple[str, str]] = {
    "short-polling": ("clients.short_polling:ShortPollingClient", "ShortPollingMember"),
    "long-polling": ("clients.long_polling:LongPollingClient", "LongPollingMember"),
    "websocket": ("clients.websocket:WebSocketClient", "WebSocketMember"),
}


def client_class(transport: str) -> type:
    """Import and return the client class for `transport` (this imports gevent)."""
    try:
        target = TRANSPORTS[transport][0]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}") from None
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def locust_user_class(transport: str) -> str:
    """Return the name of the Locust user class that drives `transport`."""
    try:
        return TRANSPORTS[transport][1]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; choose from {', '.join(TRANSPORTS)}") from None
