"""Django Channels: the chat room as Channels' tutorial writes it (an AsyncWebsocketConsumer that joins the room's
group in connect(), group_send()s what it receives, and sends each group event on in chat_message()), on the
in-memory channel layer, served by daphne as Channels' docs serve it (`daphne` first in INSTALLED_APPS; `daphne
project.asgi:application` in production), speaking rtlab's wire contract (docs/api.md). The plain HTTP routes
(history, /metrics, /healthz) are ordinary async Django views under ProtocolTypeRouter's "http". Channels' docs
call the in-memory layer fit for testing and one process, which is what this is: Redis's layer would add a
server. A peer: no limits, DEBUG off, never on a network."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from urllib.parse import parse_qs

import django
from django.conf import settings

from .process import METRICS_CONTENT_TYPE, Counts, Rooms, health

NAME = "channels-websocket"
PACKAGES = ("channels", "daphne", "django", "twisted", "autobahn")

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["127.0.0.1", "localhost", "[::1]"],
    INSTALLED_APPS=["daphne", "channels"],
    ROOT_URLCONF=__name__,
    ASGI_APPLICATION=f"{__name__}.application",
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}},
    USE_TZ=True,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402  (after settings, as in asgi.py)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402

rooms = Rooms()
counts = Counts(NAME)


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room_name = self.scope["url_route"]["kwargs"]["room_name"]
        self.room_group_name = f"chat_{self.room_name}"

        # Join room group
        await self.channel_layer.group_add(self.room_group_name, self.channel_name)
        await self.accept()
        # rtlab's contract: catch up from since=, then the group brings every later message.
        log = rooms.log[self.room_name]
        self.joined_at = len(log)
        since = parse_qs(self.scope["query_string"].decode()).get("since")
        for text in log[int(since[0]) if since else len(log):self.joined_at]:
            await self.send(text_data='{"type":"message",' + text[1:])
            counts.delivered += 1

    async def disconnect(self, close_code):
        # Leave room group
        await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

    # Receive message from WebSocket
    async def receive(self, text_data=None, bytes_data=None):
        text = rooms.add(self.room_name, json.loads(text_data))
        counts.accepted += 1
        # Send message to room group
        await self.channel_layer.group_send(
            self.room_group_name, {"type": "chat.message", "id": len(rooms.log[self.room_name]), "message": text}
        )

    # Receive message from room group
    async def chat_message(self, event):
        if event["id"] <= self.joined_at:  # sent by the catch-up already
            return
        # Send message to WebSocket
        await self.send(text_data='{"type":"message",' + event["message"][1:])
        counts.delivered += 1


async def history(request, room):
    return HttpResponse(rooms.newest(room), content_type="application/json")


async def metrics(request):
    return HttpResponse(counts.page(), content_type=METRICS_CONTENT_TYPE)


async def healthz(request):
    # autobahn (daphne's WebSocket) accepts no permessage-deflate unless told to; daphne does not tell it.
    return HttpResponse(health(NAME, PACKAGES, {"websocket_permessage_deflate": False, "http": False},
                               channel_layer="channels.layers.InMemoryChannelLayer", served_by="daphne",
                               ping_interval_s=20, ping_timeout_s=30),
                        content_type="application/json")


urlpatterns = [
    path("rooms/<str:room>/history", history),
    path("metrics", metrics),
    path("healthz", healthz),
]
websocket_urlpatterns = [
    re_path(r"^rooms/(?P<room_name>[A-Za-z0-9_-]+)/ws$", ChatConsumer.as_asgi()),
]
application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": AllowedHostsOriginValidator(URLRouter(websocket_urlpatterns)),
})


def serve(sock: socket.socket, ready: Callable[[], None]) -> None:
    """daphne as its command line runs it (`daphne --fd N module:application`), on our socket."""
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server

    Server(application, endpoints=build_endpoint_description_strings(file_descriptor=sock.fileno()),
           ready_callable=ready, signal_handlers=True).run()
