"""Make docs/demo.png again: the teaching page with every transport after a short conversation, on a free port, in
Debian's Chromium (`python -m experiments demo-screenshot`, `make demo-screenshot`)."""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "demo.png"
ROOM = "lobby"
# The panes share a grid whose columns are at least 300 px wide (servers/static/demo.css): this much width per
# column of panes, so that the panes make two rows, however many transports the server mounts.
COLUMN_PX = 352
HEIGHT_PX = 1100
IDLE_MS = 4000  # after the conversation: long enough for the idle traffic to show (two more short polls)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", default=str(SCREENSHOT), help="where to write the PNG (default: docs/demo.png)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each step may take")
    return parser


def wait_until_live(page, transports: list[str], timeout_ms: float) -> None:
    """Wait until the page shows a pane for each of `transports` (what the server mounts) and each says it is live."""
    page.wait_for_function("n => document.querySelectorAll('.pane').length === n", arg=len(transports),
                           timeout=timeout_ms)
    for transport in transports:
        page.wait_for_selector(f"#pane-{transport}[data-state=live]", timeout=timeout_ms)


def play_scene(page, transports: list[str], timeout_ms: float, idle_ms: float = IDLE_MS) -> None:
    """A short conversation: one message from each pane in turn, each seen by every pane before the next; then
    quiet, so the wire logs show what each transport does while nobody talks."""
    for transport in transports:
        label = page.locator(f"#pane-{transport} .label").text_content()
        text = f"hello from {label}"
        box = page.locator(f"#pane-{transport} form.send input[name=text]")
        box.fill(text)
        box.press("Enter")
        for other in transports:
            page.wait_for_function(
                "([pane, text]) => [...document.querySelectorAll(`#pane-${pane} .messages .text`)]"
                ".some(e => e.textContent === text)", arg=[other, text], timeout=timeout_ms)
    page.wait_for_timeout(idle_ms)
    page.locator("body").click(position={"x": 5, "y": 5})  # no focus ring in the picture


def viewport(panes: int) -> dict[str, int]:
    """A window as wide as two rows of `panes` need."""
    return {"width": 40 + COLUMN_PX * max(1, math.ceil(panes / 2)), "height": HEIGHT_PX}


def take(path: Path, timeout_s: float = 60.0) -> int:
    """Start `python -m servers --transport all` on a free port, open its page in room `lobby`, play the scene and
    save the whole page to `path`; stop the server. Return how many panes the picture shows; raise RuntimeError when
    the page reported an error (nothing is written then)."""
    from .browser import chromium
    from .supervisor import start_server

    # The server's log (WebRTC's last datagrams as the browser closes can make aiortc complain) stays out of the way.
    log = Path(tempfile.mkdtemp(prefix="rtlab-demo-screenshot-")) / "server.log"
    server = start_server(["--transport", "all"], log, timeout_s=timeout_s)
    try:
        with chromium() as browser:
            transports = list(server.ready["transports"])
            context = browser.new_context(viewport=viewport(len(transports)))
            page = context.new_page()
            errors: list[str] = []  # a picture of a broken page is worse than none
            page.on("console", lambda message: message.type == "error" and errors.append(message.text))
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{server.url}/?room={ROOM}")
            wait_until_live(page, transports, timeout_s * 1000)
            play_scene(page, transports, timeout_s * 1000)
            if errors:
                raise RuntimeError(f"the demo page reported errors: {errors}; see {log}")
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
            context.close()
    finally:
        server.stop()
    return len(transports)


def run(a: argparse.Namespace) -> int:
    panes = take(Path(a.out), a.timeout)
    print(f"wrote {a.out}: the demo page with {panes} panes")
    return 0
