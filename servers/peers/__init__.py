"""Peers: other ways of serving the same chat, run beside rtlab's own under the identical load, so a reader can
tell the transport's cost from rtlab's (docs/peers.md). The floors are what an expert writes in about forty
lines of aiohttp (the yardstick); the Socket.IO peers are python-socketio as its users write it."""
