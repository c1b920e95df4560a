"""Following each instance of the cluster demo (experiments/demo_cluster.py): its `GET /admin/events` (servers/observe.py)
relayed to the pages, and what each instance holds, from its requests' opens and closes."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

PAGE_QUEUE = 2000  # events waiting for one browser; past it the browser is cut off (its EventSource comes back)


class Pages:
    """The browsers following /cluster/events, each with a bounded queue of encoded events."""

    def __init__(self) -> None:
        self.queues: list[asyncio.Queue[bytes | None]] = []

    def send(self, event: dict) -> None:
        if not self.queues:
            return
        data = b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"
        for queue in list(self.queues):
            if queue.qsize() >= PAGE_QUEUE:
                self.queues.remove(queue)  # too slow: cut off, its EventSource reconnects and starts afresh
                queue.put_nowait(None)
            else:
                queue.put_nowait(data)


class Watch:
    """One task per instance reading its event stream; `holding()` says what each holds now, `hello` what each says it
    is. A stream that ends (an instance killed: no close events) closes what that instance held."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.tasks: list[asyncio.Task] = []
        self.open: dict[str, dict[int, dict]] = {}  # instance -> request number -> its open event
        self.hello: dict[str, dict] = {}  # instance -> its hello

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.tasks = []
        self.open.clear()
        self.hello.clear()

    def start(self, name: str, url: str) -> None:
        self.open[name] = {}
        self.tasks.append(asyncio.create_task(self._watch(name, url)))

    async def _watch(self, name: str, url: str) -> None:
        """Follow one instance's /admin/events until it ends (a kill, a stop): relay, and track what it holds."""
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as session:
                async with session.get(f"{url}/admin/events") as resp:
                    async for line in resp.content:
                        self._instance_event(name, json.loads(line))
        except (aiohttp.ClientError, OSError, ValueError):
            pass
        finally:
            # An instance that ended (killed: no close events) holds nothing any more.
            opened = self.open.get(name, {})
            for number, event in list(opened.items()):
                self.pages.send({"event": "close", "instance": name, "n": number, "status": None,
                                 "client": event.get("client"), "t": time.time(), "gone": True})
            opened.clear()

    def _instance_event(self, name: str, event: dict) -> None:
        kind = event.get("event")
        opened = self.open.setdefault(name, {})
        if kind == "open":
            opened[event["n"]] = event
            if not str(event.get("client") or "").startswith("crowd-"):
                self.pages.send(event)
        elif kind == "close":
            began = opened.pop(event["n"], None)
            if began is not None and not str(began.get("client") or "").startswith("crowd-"):
                self.pages.send({**event, "client": began.get("client"), "transport": began.get("transport")})
        elif kind in ("posted", "fanout", "hello", "dropped"):
            if kind == "hello":
                self.hello[name] = event
            self.pages.send(event)

    def holding(self) -> dict:
        """Per instance: members held per transport (open requests other than posts), the page's members by client
        id, and the crowd's count."""
        out = {}
        for name, opened in self.open.items():
            per_transport: dict[str, int] = {}
            clients = []
            crowd = 0
            for event in opened.values():
                if event.get("route", "").startswith("POST"):
                    continue
                per_transport[event["transport"]] = per_transport.get(event["transport"], 0) + 1
                client = event.get("client") or ""
                if client.startswith("crowd-"):
                    crowd += 1
                elif client:
                    clients.append([client, event["transport"]])
            out[name] = {"held": per_transport, "clients": clients, "crowd": crowd}
        return out
