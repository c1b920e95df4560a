"""Draining: `POST /admin/drain`, loopback only, takes this instance out of rotation and hands its members on."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from dataclasses import dataclass

from aiohttp import web

from .config import ServerConfig
from .http import CONFIG, error_response, json_text, seconds_param
from .transport import CLOSE_SERVICE_RESTART, mounted

MAX_GRACE_S = 60.0


@dataclass
class DrainState:
    draining: bool = False
    started_at: float | None = None  # unix seconds
    result: dict | None = None  # the answer of the drain, once done


DRAIN = web.AppKey("drain", DrainState)


def is_loopback(request: web.Request) -> bool:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return False
    try:
        return ipaddress.ip_address(peer[0]).is_loopback
    except ValueError:  # a Unix socket path
        return False


async def handle_drain(request: web.Request) -> web.Response:
    """Drain this instance: /healthz answers 503 at once (the balancer's check takes it out of rotation),
    then, after `grace` seconds (default 0), every transport closes its members (servers.transport:
    WebSockets closed with 1012, held long polls answered, event streams ended) and serves no new ones:
    long polls that still arrive are answered at once, WebSocket upgrades and streams refused with 503.

    The caller orders this after the balancer stopped routing here: either it set the server to drain
    in HAProxy itself (experiments.cluster does, through the runtime API) and passes no grace, or it
    passes a grace longer than the health check needs (fall x inter) to notice the 503.
    """
    if not is_loopback(request):
        return error_response(403, "the admin routes answer only on the loopback interface")
    grace_s = seconds_param(request, "grace", MAX_GRACE_S) or 0.0
    state = request.app[DRAIN]
    if state.draining:
        if state.result is not None:
            return json_text(200, json.dumps(state.result))
        return error_response(409, "a drain is already in progress")
    state.draining = True
    state.started_at = time.time()
    if grace_s:
        await asyncio.sleep(grace_s)
    app = request.app
    closed: dict[str, int] = {}
    for transport in mounted(app).values():
        for what, count in (await transport.close_members(
                CLOSE_SERVICE_RESTART, "service restart: reconnect and resume after the last id seen")).items():
            closed[what] = closed.get(what, 0) + count
    state.result = {
        "status": "drained",
        "instance": app[CONFIG].instance,
        "grace_s": grace_s,
        **closed,
        "started_at": state.started_at,
        "finished_at": time.time(),
    }
    return json_text(200, json.dumps(state.result))


def draining(app: web.Application) -> bool:
    state = app.get(DRAIN)
    return bool(state and state.draining)


def add_routes(app: web.Application, config: ServerConfig) -> None:
    app[DRAIN] = DrainState()
    app.router.add_post("/admin/drain", handle_drain)
