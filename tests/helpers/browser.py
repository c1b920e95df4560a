"""Debian's Chromium (never a downloaded browser), the way every browser test launches it."""

CHROMIUM = "/usr/bin/chromium"
# What the machine's closed network needs: no background connections, no component updates, no QUIC.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
