"""The teaching demo: serve one static page that shows one room over every mounted transport, side by side."""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from aiohttp import web

from . import registry
from .config import ServerConfig
from .core import InvalidInput
from .http import json_text, query_value
from .metrics import METER
from .transport import mounted

CLIENT_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_CLIENTS = 1000  # per-client byte ledgers kept; the least recently active is forgotten first
MAX_IDS_PER_ASK = 16

STATIC_DIR = Path(__file__).with_name("static")

# No inline script or style, no third-party origin, no plugins, no framing; connect only back home
# ('self' covers ws:// to the same host in CSP Level 3). Trusted Types with no policy makes every
# string-to-HTML sink (innerHTML and friends) throw, so rendering a message as markup cannot slip in.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The files are tiny and change with the code; always revalidate rather than show a stale page.
    "Cache-Control": "no-cache",
}

# URL path -> (file under static/, content type). A fixed table, plus each mounted transport's pane module
# (its registry entry's `browser` file at /static/transports/<name>.js): nothing else on disk is reachable.
PAGES = {
    "/": ("index.html", "text/html"),
    "/static/demo.js": ("demo.js", "text/javascript"),
    "/static/pane.js": ("pane.js", "text/javascript"),
    "/static/demo.css": ("demo.css", "text/css"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def module_path(name: str) -> str:
    return f"/static/transports/{name}.js"


def transports_json(config: ServerConfig) -> bytes:
    """The panes the page builds: every mounted transport, in the order /healthz lists them, with its label,
    colour and pane module (null: the page shows a pane without a client of its own)."""
    panes = []
    for name in config.transports:
        entry = registry.get(name)
        panes.append({"name": name, "label": entry.label, "colour": entry.colour, "summary": entry.summary,
                      "module": module_path(name) if entry.browser else None})
    return json.dumps({"transports": panes}).encode()


class ClientBytes:
    """Exact TCP payload bytes of one client id, over all its connections (counted by servers.metrics)."""

    __slots__ = ("bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.bytes_in = 0  # received by the server from this client
        self.bytes_out = 0  # sent by the server to this client


class ClientLedgers:
    """Byte ledgers per client id, at most `limit` of them: a page can make up ids, memory cannot grow."""

    def __init__(self, limit: int = MAX_CLIENTS) -> None:
        self._limit = limit
        self._ledgers: OrderedDict[str, ClientBytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ledgers)

    def client_of(self, request: web.Request) -> ClientBytes | None:
        """Return the ledger of the request's `client=` query parameter (made on first use), or None."""
        client = request.query.get("client")
        if client is None or not CLIENT_RE.fullmatch(client):
            return None  # like any unknown parameter, a malformed one is ignored
        ledger = self._ledgers.get(client)
        if ledger is None:
            ledger = self._ledgers[client] = ClientBytes()
            if len(self._ledgers) > self._limit:
                self._ledgers.popitem(last=False)
        else:
            self._ledgers.move_to_end(client)
        return ledger

    def get(self, client: str) -> ClientBytes | None:
        return self._ledgers.get(client)


CLIENT_LEDGERS = web.AppKey("demo_client_ledgers", ClientLedgers)


async def handle_client_bytes(request: web.Request) -> web.Response:
    """Answer `{"exact": bool, "clients": {id: {"bytes_in", "bytes_out"}}}` for `?ids=a,b,c`."""
    raw = query_value(request, "ids") or ""
    ids = raw.split(",") if raw else []
    if len(ids) > MAX_IDS_PER_ASK or not all(CLIENT_RE.fullmatch(i) for i in ids):
        raise InvalidInput(
            f"ids must be 1 to {MAX_IDS_PER_ASK} client ids matching ^[A-Za-z0-9_-]{{1,64}}$, comma-separated"
        )
    ledgers = request.app.get(CLIENT_LEDGERS)
    clients: dict[str, Any] = {}
    if ledgers is not None:
        for client in ids:
            ledger = ledgers.get(client)
            if ledger is not None:
                clients[client] = {"bytes_in": ledger.bytes_in, "bytes_out": ledger.bytes_out}
    return json_text(200, json.dumps({"exact": ledgers is not None, "clients": clients}), headers=SECURITY_HEADERS)


def security_headers(app: web.Application) -> dict[str, str]:
    """SECURITY_HEADERS, the policy's connect-src also naming the origins the mounted transports' panes connect to
    (an HTTP/3 endpoint, on another port and scheme)."""
    sources = [source for transport in mounted(app).values() for source in transport.page_sources()]
    if not sources:
        return SECURITY_HEADERS
    policy = CONTENT_SECURITY_POLICY.replace("connect-src 'self'", " ".join(("connect-src 'self'", *sources)))
    return {**SECURITY_HEADERS, "Content-Security-Policy": policy}


def _handler(body: bytes, content_type: str):
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers=security_headers(request.app))

    return handle


def add_routes(app: web.Application, config: ServerConfig) -> None:
    """Serve the demo page at `/`, its assets under `/static/`, and exact bytes per client id.

    The files are read once, here. With metrics on, every request carrying `client=ID` has its bytes
    counted for that id as well as for its transport; the page's own routes are counted nowhere.
    """
    files = {path: (STATIC_DIR / name, content_type) for path, (name, content_type) in PAGES.items()}
    for name in config.transports:
        browser = registry.get(name).browser
        if browser is not None:
            files[module_path(name)] = (browser, "text/javascript")
    routes = [
        app.router.add_get(path, _handler(file.read_bytes(), content_type), allow_head=False)
        for path, (file, content_type) in files.items()
    ]
    routes.append(app.router.add_get("/demo/transports", _handler(transports_json(config), "application/json"),
                                     allow_head=False))
    routes.append(app.router.add_get("/demo/clients/bytes", handle_client_bytes, allow_head=False))
    meter = app.get(METER)
    if meter is not None:
        ledgers = app[CLIENT_LEDGERS] = ClientLedgers()
        meter.client_of = ledgers.client_of
        meter.exclude(routes)
