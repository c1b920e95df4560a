"""HTTP plumbing shared by every transport: typed app keys, query parsing, JSON bodies, error mapping."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re

import orjson
from aiohttp import web

from .broker import Broker
from .config import ServerConfig
from .core import ChatError, InvalidInput, Message, Page, RateLimited, TooLarge, Unavailable

log = logging.getLogger("rtlab.server")

BROKER = web.AppKey("broker", Broker)
CONFIG = web.AppKey("config", ServerConfig)
MESSAGES = web.AppKey("messages_resource", web.Resource)
MESSAGES_PATH = "/rooms/{room}/messages"


def messages_resource(app: web.Application) -> web.Resource:
    """The one resource of /rooms/{room}/messages, its POST (the app's) and its GET (polling's) on it: aiohttp tries
    the resources under /rooms one by one in the order they were added, so a path split over two resources costs
    every poll a regular-expression match more (and with --transport all, one per transport added between)."""
    if MESSAGES not in app:
        app[MESSAGES] = app.router.add_resource(MESSAGES_PATH)
    return app[MESSAGES]

_NUMBER_RE = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")

# The one place where domain errors meet HTTP.
_STATUS_FOR = {InvalidInput: 400, TooLarge: 413, Unavailable: 503, RateLimited: 429}


def status_for(error: ChatError) -> int:
    for kind, status in _STATUS_FOR.items():
        if isinstance(error, kind):
            return status
    return 400


def json_text(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_text(status, json.dumps({"error": message}), headers)


def messages_json(messages: tuple[Message, ...]) -> str:
    return "[" + ",".join([m.json for m in messages]) + "]"


def page_json(page: Page) -> str:
    truncated = "true" if page.truncated else "false"
    return f'{{"messages":{messages_json(page.messages)},"last_id":{page.last_id},"truncated":{truncated}}}'


def query_value(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidInput(f"{name} given more than once")
    return values[0] if values else None


def int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """Parse a decimal integer query parameter in [low, high]; absent gives `default`."""
    raw = query_value(request, name)
    if raw is None:
        return default
    if len(raw) <= 15 and raw.isascii() and raw.isdigit():  # [0-9]{1,15}, without a regular expression
        value = int(raw)
        if low <= value <= high:
            return value
    raise InvalidInput(f"{name} must be an integer from {low} to {high}")


def seconds_param(request: web.Request, name: str, cap: float) -> float | None:
    """Parse a non-negative decimal number of seconds; values above `cap` are capped to it."""
    raw = query_value(request, name)
    if raw is None:
        return None
    if not _NUMBER_RE.fullmatch(raw):
        raise InvalidInput(f"{name} must be a non-negative number of seconds")
    value = float(raw)
    if not math.isfinite(value):
        raise InvalidInput(f"{name} must be a non-negative number of seconds")
    return min(value, cap)


async def read_json(request: web.Request) -> object:
    """Read the body (bounded by the app's client_max_size, else 413; by the request timeout, else 408) and
    decode it as JSON. Only application/json is read (else 415): a page on another site can send text/plain or
    a form without asking first (no CORS preflight), but not JSON."""
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(
            reason=f"a request body must be application/json, not {request.content_type or 'unlabelled'}")
    if request.content.is_eof():  # the whole body came with the head (a chat message nearly always does)
        body = await request.read()
    else:
        try:
            async with asyncio.timeout(request.app[CONFIG].request_head_timeout_s):
                body = await request.read()
        except TimeoutError:
            raise web.HTTPRequestTimeout(reason="the request body did not arrive in time") from None
    if not body:
        raise InvalidInput("request body must be a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("request body is not valid UTF-8") from None
    try:
        # orjson: a fifth of json.loads's time, and stricter (no NaN, no integers past 64 bits); nesting past
        # its limit of 1024 is an error too.
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        nested = "depth limit" in str(error)
        raise InvalidInput("request body is nested too deeply" if nested else "request body is not valid JSON") from None


async def error_answer(request: web.Request, error: Exception) -> web.Response:
    """The JSON `{"error": ...}` answer to what a handler raised; never a traceback, never a dead server.
    (servers.app's one middleware calls it; an HTTPException below 400, a redirect, is raised on.)"""
    if isinstance(error, RateLimited):
        return error_response(429, str(error), {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))})
    if isinstance(error, ChatError):
        return error_response(status_for(error), str(error))
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error
        if error.status == 405 and request.method in ("GET", "HEAD") and "GET" not in error.headers.get("Allow", ""):
            # A GET on a path that only takes POST (the messages route without a polling transport) is
            # another transport's route, absent here: 404, as for any route this server does not mount.
            return error_response(404, _describe(request, web.HTTPNotFound()))
        response = error_response(error.status, _describe(request, error), _keep_headers(error))
        if error.status == 408 and request.transport is not None:
            # A body that stopped coming is not waited for (aiohttp would linger, reading it): answer, then close.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.transport.close()
        return response
    if isinstance(error, ConnectionResetError):
        # The client left before its answer was written (a WebSocket handshake it reset, a stream it dropped): nobody
        # to tell, nothing wrong here. aiohttp discards the answer on the closed connection.
        log.debug("%s %s: the client left before the answer (%s)", request.method, request.path, error)
        return error_response(400, "the connection closed before the answer was written")
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=error)
    return error_response(500, "internal server error")


def _describe(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 404:
        transports = ", ".join(request.app[CONFIG].transports)
        return f"no route for {request.method} {request.path} on this server (transports: {transports})"
    if exc.status == 405:
        return f"method {request.method} not allowed on {request.path}; allowed: {exc.headers.get('Allow', '')}"
    if exc.status == 413:
        return f"request body larger than {request.app[CONFIG].max_body_bytes} bytes"
    return exc.reason


def _keep_headers(exc: web.HTTPException) -> dict[str, str] | None:
    return {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
