"""Short polling: `GET /rooms/{room}/messages?since=ID` answers at once, even when nothing is new."""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from .config import ServerConfig
from .core import InvalidInput, Page, validate_room
from .http import BROKER, CONFIG, int_param, json_text, page_json, seconds_param
from .metrics import tally_of

# Set by the long-polling transport when it is mounted: hold(room, since, limit, wait_s) -> Page.
Holder = Callable[[str, int, int, float], Awaitable[Page]]
POLL_HOLDER = web.AppKey("poll_holder", Holder)
_POLL_ROUTE = web.AppKey("poll_route", bool)


async def handle_poll(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    room = validate_room(request.match_info["room"])
    since = int_param(request, "since", 0, 0, 2**53)
    limit = int_param(request, "limit", config.poll_limit_default, 1, config.limits.page)
    holder = request.app.get(POLL_HOLDER)
    if holder is None:
        if "wait" in request.query:
            raise InvalidInput("this server does short polling and does not hold requests: drop wait")
        page = await request.app[BROKER].since(room, since, limit)
    else:
        wait = seconds_param(request, "wait", config.long_poll_max_wait_s) or 0.0
        page = await holder(room, since, limit, wait)
    tally = tally_of(request)
    tally.polls += 1
    tally.messages_delivered += len(page.messages)
    tally.payload_sent_bytes += sum(len(m.json.encode()) for m in page.messages)
    if not page.messages:
        tally.empty_polls += 1
    return json_text(200, page_json(page))


def poll_route_mounted(app: web.Application) -> bool:
    return bool(app.get(_POLL_ROUTE))


def mount_poll_route(app: web.Application) -> None:
    """Add the poll route once, whichever polling transport asks first."""
    if not app.get(_POLL_ROUTE):
        app[_POLL_ROUTE] = True
        app.router.add_get("/rooms/{room}/messages", handle_poll)


def add_routes(app: web.Application, config: ServerConfig) -> None:
    mount_poll_route(app)
