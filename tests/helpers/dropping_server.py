"""A test server whose broker loses one message per room, so the clients' completeness check has a gap to find."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from servers import registry
from servers.__main__ import write_ready_file
from servers.app import start_server
from servers.broker import MemoryBroker
from servers.config import ServerConfig
from servers.core import ChatCore, Message, Page


class DroppingBroker(MemoryBroker):
    """Stores every message but never shows the one with id `drop_id` in any room: not in fan-out,
    not in polls, not in history. Receivers see ids ..., drop_id - 1, drop_id + 1, ..."""

    name = "memory-dropping"

    def __init__(self, core: ChatCore, drop_id: int) -> None:
        super().__init__(core)
        self.drop_id = drop_id

    def publish(self, message: Message) -> None:
        if message.id != self.drop_id:
            super().publish(message)

    async def since(self, room: str, after_id: int, limit: int) -> Page:
        page = await super().since(room, after_id, limit)
        return Page(tuple(m for m in page.messages if m.id != self.drop_id), page.last_id, page.truncated)

    async def history(self, room: str, before: int | None, limit: int) -> tuple[Message, ...]:
        return tuple(m for m in await super().history(room, before, limit) if m.id != self.drop_id)


async def serve(transport: str, drop_id: int, port: int, ready_file: str | None) -> None:
    config = ServerConfig(transports=(transport,), port=port)
    server = await start_server(config, DroppingBroker(ChatCore(config.limits), drop_id))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"rtlab serving {transport} (dropping id {drop_id}) on {server.url}", flush=True)
    if ready_file:
        write_ready_file(ready_file, {"url": server.url, "port": server.port, "transports": [transport]})
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--transport", required=True, choices=registry.names(None))
    p.add_argument("--drop-id", type=int, default=3)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--ready-file")
    a = p.parse_args(argv)
    asyncio.run(serve(a.transport, a.drop_id, a.port, a.ready_file))
    return 0


if __name__ == "__main__":
    sys.exit(main())
