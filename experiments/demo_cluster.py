"""`python -m experiments demo-cluster` (`make demo-cluster`): the seed notes' second half, live in a browser.

One page server on 127.0.0.1 supervises a real cluster (experiments.cluster: three instances behind HAProxy, Redis
where the architecture needs it) and serves the teaching page through HAProxy's own frontend, so the page and the
rooms share one origin: every path under /rooms/ goes to the instances, every other path to this server. It
watches each instance (`GET /admin/events`, servers.observe) and relays what they hold and what happens to each
message to the page; it switches architectures (sticky, pubsub, naive: the cluster is rebuilt), drains, kills and
restarts instances, restarts Redis, and runs a small bounded crowd of WebSocket members in the room. Ctrl-C (or
SIGTERM) stops the crowd and every process of the cluster; nothing is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

from servers import registry
from servers.demo import SECURITY_HEADERS, STATIC_DIR, module_path
from servers.guard import OriginPolicy
from servers.http import error_response, json_text

from .cluster import MODES, Cluster
from .crowd import MAX_CROWD, MAX_CROWD_RATE, Crowd
from .watch import Pages, Watch
from .redis_server import ClusterError
from .supervisor import free_port

ROOM = "demo"  # the room pane.js joins by default
INSTANCES = 3
MAX_PAGES = 8  # browsers following the events at once
HEARTBEAT_S = 15.0
EXPLAIN = {
    "sticky": "HAProxy hashes the room: every member of a room reaches the same instance (sticky connections); "
              "each instance keeps its rooms in its own memory.",
    "pubsub": "HAProxy spreads members round robin; an instance relays every message through Redis Pub/Sub to the "
              "others, and Redis keeps the ids and the history.",
    "naive": "HAProxy spreads members round robin, and each instance keeps the room in its own memory: "
             "the architecture the seed notes call \u201cnot possible\u201d.",
}
# URL path -> file under servers/static, content type: the cluster page and what it shares with the single demo.
FILES = {
    "/": ("cluster.html", "text/html"),
    "/static/cluster.js": ("cluster.js", "text/javascript"),
    "/static/cluster.css": ("cluster.css", "text/css"),
    "/static/demo.css": ("demo.css", "text/css"),
    "/static/pane.js": ("pane.js", "text/javascript"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


def member_transports() -> list[str]:
    """The transports the page shows a member of: rtlab's own with a browser module, over TCP (through HAProxy)."""
    return [t.name for t in registry.transports(registry.PRODUCT) if t.browser is not None and t.carrier == "tcp"]


class ClusterDemo:
    """The page server's state: the cluster of the current architecture, its watchers, the crowd, the pages."""

    def __init__(self, front_port: int, directory: Path, mode: str = "pubsub", instances: int = INSTANCES,
                 python: str = sys.executable, redis_binary: str = "redis-server", haproxy_binary: str = "haproxy",
                 startup_timeout_s: float = 30.0) -> None:
        self.front_port = front_port
        self.directory = directory
        self.mode = mode
        self.instances = instances
        self.options = {"python": python, "redis_binary": redis_binary, "haproxy_binary": haproxy_binary,
                        "startup_timeout_s": startup_timeout_s}
        self.page_port = 0
        self.generation = 0
        self.cluster: Cluster | None = None
        self.busy = asyncio.Lock()
        self.pages = Pages()
        self.watch = Watch(self.pages)  # each instance's /admin/events
        self.crowd: Crowd | None = None
        self.crowd_wanted = (0, 0.0)
        self.last_action: dict | None = None
        self.policy = OriginPolicy()
        self._ticker: asyncio.Task | None = None
        self.closing = False
        self._holding_sent: dict | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    # ---- the cluster ----

    async def build(self, mode: str) -> None:
        """Stop the cluster (and the crowd) if any, start one in `mode` on the same front port, watch it."""
        await self._teardown()
        self.mode = mode
        self.generation += 1
        cluster = Cluster("all", self.instances, mode, self.directory / f"{self.generation}-{mode}",
                          port=self.front_port, page_port=self.page_port, **self.options)
        self.cluster = await asyncio.to_thread(cluster.start)
        for instance in cluster.instances:
            self.watch.start(instance.name, instance.url)
        size, rate = self.crowd_wanted
        if size:
            await self.set_crowd(size, rate)
        self.pages.send(self.state())

    async def _teardown(self) -> None:
        if self.crowd is not None:
            await self.crowd.stop()
            self.crowd = None
        await self.watch.stop()
        if self.cluster is not None:
            cluster, self.cluster = self.cluster, None
            await asyncio.to_thread(cluster.stop)

    async def stop(self) -> None:
        """Stop the crowd, the watchers and the cluster; a change under way (a switch) finishes first, or the cluster it
        is starting would be left running."""
        self.closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        async with self.busy:
            await self._teardown()

    async def _tick(self) -> None:
        """Every 250 ms: what each instance holds, when it changed; every second: the crowd's figures, HAProxy's view."""
        beat = 0
        while True:
            await asyncio.sleep(0.25)
            beat += 1
            holding = self.watch.holding()
            if holding != self._holding_sent:
                self._holding_sent = holding
                self.pages.send({"event": "holding", "instances": holding})
            if beat % 4 == 0:
                if self.crowd is not None:
                    self.pages.send({"event": "crowd", **self.crowd.stats()})
                self.pages.send({"event": "states", "states": await self._states()})

    async def _states(self) -> dict:
        cluster = self.cluster
        if cluster is None or cluster.haproxy is None:
            return {}
        try:
            states = await asyncio.to_thread(cluster.states)
        except (OSError, ClusterError):
            return {}
        return {name: state.split()[0] if state else "?" for name, state in states.items()}

    def state(self) -> dict:
        cluster = self.cluster
        return {
            "event": "state", "generation": self.generation, "mode": self.mode, "room": ROOM,
            "explain": EXPLAIN[self.mode], "modes": list(MODES),
            "balance": cluster.balance if cluster else None, "broker": cluster.broker if cluster else None,
            "instances": [{"name": i.name, "pid": i.pid, "alive": i.process.alive, "drained": i.drained,
                           "killed": i.killed} for i in cluster.instances] if cluster else [],
            "redis": {"pid": cluster.redis.pid} if cluster and cluster.redis else None,
            "haproxy": {"pid": cluster.haproxy.pid} if cluster and cluster.haproxy else None,
            "crowd": self.crowd.stats() if self.crowd else {"size": 0, "rate": 0},
            "limits": {"crowd": MAX_CROWD, "rate": MAX_CROWD_RATE},
            "action": self.last_action, "transports": member_transports(), "hello": self.watch.hello,
        }

    # ---- actions ----

    async def act(self, what: str, index: int | None = None) -> dict:
        cluster = self.cluster
        if cluster is None:
            raise ClusterError("the cluster is not running")
        if what in ("drain", "kill", "restart") and not (index is not None and 0 <= index < len(cluster.instances)):
            raise ValueError(f"no instance {index}")
        started = time.time()
        if what == "drain":
            result = await asyncio.to_thread(cluster.drain, index)
        elif what == "kill":
            result = await asyncio.to_thread(cluster.kill, index)
        elif what == "restart":
            result = await asyncio.to_thread(cluster.restart_instance, index)
            instance = cluster.instances[index]
            self.watch.start(instance.name, instance.url)
        elif what == "restart-redis":
            result = await asyncio.to_thread(cluster.restart_redis, 0.5)
        else:
            raise ValueError(f"unknown action {what!r}")
        result = {k: v for k, v in result.items() if k not in ("t_mono_s",)}
        self.last_action = {"action": what, "t": started, "took_ms": round((time.time() - started) * 1000), **result}
        self.pages.send({"event": "action", **self.last_action})
        self.pages.send(self.state())
        return self.last_action

    async def set_crowd(self, size: int, rate: float) -> None:
        if self.crowd is not None:
            await self.crowd.stop()
            self.crowd = None
        self.crowd_wanted = (size, rate)
        if size and self.cluster is not None:
            self.crowd = Crowd(self.url, ROOM, size, rate)
            await self.crowd.start()

    # ---- the page server ----

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=4096)
        for path, (name, content_type) in FILES.items():
            app.router.add_get(path, _file(STATIC_DIR / name, content_type), allow_head=False)
        for name in member_transports():
            app.router.add_get(module_path(name), _file(registry.get(name).browser, "text/javascript"),
                               allow_head=False)
        app.router.add_get("/cluster/transports", _static(transports_json(), "application/json"), allow_head=False)
        app.router.add_get("/cluster/state", self.handle_state, allow_head=False)
        app.router.add_get("/cluster/events", self.handle_events, allow_head=False)
        app.router.add_post("/cluster/mode", self.handle_mode)
        app.router.add_post("/cluster/action", self.handle_action)
        app.router.add_post("/cluster/crowd", self.handle_crowd)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler):
        problem = self.policy.problem(request)  # a foreign Origin or an unknown Host name: 403, as the servers do
        if problem is not None:
            return error_response(403, problem)
        return await handler(request)

    async def handle_state(self, request: web.Request) -> web.Response:
        body = self.state()
        body["pids"] = self.cluster.pids() if self.cluster else {}
        return json_text(200, json.dumps(body), headers=SECURITY_HEADERS)

    async def handle_events(self, request: web.Request) -> web.StreamResponse:
        if len(self.pages.queues) >= MAX_PAGES:
            return error_response(503, f"at most {MAX_PAGES} pages follow the cluster at once")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.pages.queues.append(queue)
        self.pages.send(self.state())  # (every page: cheap, and the new one starts from it)
        holding = self.watch.holding()
        queue.put_nowait(b"data: " + json.dumps({"event": "holding", "instances": holding}).encode() + b"\n\n")
        try:
            await response.write(b"retry: 1000\n\n")
            while True:
                try:
                    data = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    data = b": alive\n\n"
                if data is None:
                    break
                await response.write(data)
        finally:
            with contextlib.suppress(ValueError):
                self.pages.queues.remove(queue)
        return response

    async def _read_json(self, request: web.Request) -> dict:
        if request.content_type != "application/json":
            raise web.HTTPUnsupportedMediaType(text='{"error": "send JSON"}', content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text='{"error": "a JSON object, please"}', content_type="application/json")
        return body

    async def _exclusive(self, work) -> web.Response:
        if self.busy.locked():
            return error_response(409, "another change to the cluster is under way")
        async with self.busy:
            try:
                result = await work()
            except (ClusterError, ValueError) as error:
                return error_response(400 if isinstance(error, ValueError) else 500, str(error))
        return json_text(200, json.dumps(result or {"status": "ok"}))

    async def handle_mode(self, request: web.Request) -> web.Response:
        mode = (await self._read_json(request)).get("mode")
        if mode not in MODES:
            return error_response(400, f"mode must be one of {', '.join(MODES)}")

        async def switch() -> dict:
            # Answered first: the switch stops HAProxy, through which this very request came.
            asyncio.get_running_loop().create_task(self._switch(mode))
            return {"status": "switching", "mode": mode, "generation": self.generation + 1}

        return await self._exclusive(switch)

    async def _switch(self, mode: str) -> None:
        async with self.busy:
            if self.closing:
                return
            await asyncio.sleep(0.1)  # let the answer leave
            try:
                await self.build(mode)
            except ClusterError as error:
                print(f"demo-cluster: {error}", file=sys.stderr)

    async def handle_action(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        index = body.get("instance")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            return error_response(400, "instance must be an index")
        return await self._exclusive(lambda: self.act(str(body.get("action")), index))

    async def handle_crowd(self, request: web.Request) -> web.Response:
        body = await self._read_json(request)
        size, rate = body.get("members", 0), body.get("rate", 1.0)
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_CROWD:
            return error_response(400, f"members must be an integer from 0 to {MAX_CROWD}")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= MAX_CROWD_RATE:
            return error_response(400, f"rate must be a number from 0 to {MAX_CROWD_RATE:g} messages a second")

        async def crowd() -> dict:
            await self.set_crowd(size, float(rate))
            self.pages.send(self.state())
            return {"members": size, "rate": rate}

        return await self._exclusive(crowd)

    async def serve(self, ready_file: str | None = None) -> None:
        """Start the page server and the cluster; serve until SIGINT or SIGTERM; stop everything."""
        runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await runner.setup()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.page_port = site._server.sockets[0].getsockname()[1]
            await self.build(self.mode)
            self._ticker = asyncio.create_task(self._tick())
            print(f"rtlab demo-cluster: open {self.url}/ in a browser ({self.mode}; Ctrl-C stops everything)",
                  flush=True)
            if ready_file:
                from servers.__main__ import write_ready_file

                write_ready_file(ready_file, {"url": self.url, "port": self.front_port, "pid": os.getpid(),
                                              "pids": self.cluster.pids()})
            await stop.wait()
        finally:
            for queue in self.pages.queues:
                queue.put_nowait(None)
            await self.stop()
            await runner.cleanup()


def transports_json() -> bytes:
    """The member panes' transports, as the single demo's /demo/transports gives them."""
    return json.dumps({"transports": [
        {"name": name, "label": registry.get(name).label, "colour": registry.get(name).colour,
         "summary": registry.get(name).summary, "module": module_path(name)} for name in member_transports()]}).encode()


def _file(path: Path, content_type: str):
    return _static(Path(path).read_bytes(), content_type)


def _static(body: bytes, content_type: str):
    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS)

    return handle


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--port", type=int, default=8080, help="the page's port (HAProxy's frontend); 0: a free one")
    parser.add_argument("--mode", choices=list(MODES), default="pubsub", help="the architecture to start with")
    parser.add_argument("--ready-file", metavar="PATH", help="once serving, write {url, port, pid, pids} here as JSON")
    parser.add_argument("--screenshot", metavar="PNG",
                        help="instead of serving: start it all on a free port, play a short scene in headless Chromium "
                             "(a crowd of 30, two messages, a drain), save the page to PNG, stop everything")
    return parser


def screenshot(path: Path, timeout_s: float = 60.0) -> None:
    """Make docs/demo-cluster.png: this command on a free port, driven by Debian's Chromium (experiments.browser)."""
    from .browser import chromium
    from .supervisor import launch_server

    server = launch_server([], None, label="demo-cluster", entry=[sys.executable, "-m", "experiments", "demo-cluster"])
    try:
        url = server.wait(timeout_s).url
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{url}/")
            page.wait_for_selector("body[data-ready=true]", timeout=timeout_s * 1000)
            page.select_option("#crowd-size", "30")
            page.select_option("#crowd-rate", "1")
            page.click("#crowd-apply")
            page.wait_for_selector("#crowd-stats[data-connected='30']", timeout=timeout_s * 1000)
            for member, text in (("websocket-1", "hello, everyone on every server"),
                                 ("short-polling", "I ask every 2 s; any server answers")):
                page.fill(f"#pane-{member} form.send input[name=text]", text)
                page.press(f"#pane-{member} form.send input[name=text]", "Enter")
                page.wait_for_timeout(1500)
            held = page.get_attribute("#pane-websocket-1", "data-held-by") or "server-1"
            page.locator(".instance").nth(int(held.split(",")[0].split("-")[1]) - 1).locator("button.drain").click()
            page.wait_for_selector("#pane-websocket-1 .where:text-matches('back on')", timeout=timeout_s * 1000)
            page.wait_for_timeout(2500)
            page.locator("body").click(position={"x": 5, "y": 5})  # no focus ring in the picture
            page.screenshot(path=str(path), full_page=True)
    finally:
        server.process.signal(signal.SIGINT)  # as Ctrl-C: it stops the cluster itself
        server.process.wait(30)
        server.process.stop()


def run(a: argparse.Namespace) -> int:
    if a.screenshot:
        screenshot(Path(a.screenshot))
        print(f"wrote {a.screenshot}")
        return 0
    port = a.port or free_port()
    with tempfile.TemporaryDirectory(prefix="rtlab-demo-cluster-") as directory:
        demo = ClusterDemo(port, Path(directory), a.mode)
        try:
            asyncio.run(demo.serve(a.ready_file))
        except ClusterError as error:
            print(f"rtlab demo-cluster: {error}", file=sys.stderr)
            return 1
    return 0
