"""`python -m servers` as a real process: starts on a free port, serves, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest
from conftest import TRANSPORTS, UNIT


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5 * UNIT) as resp:
        return json.loads(resp.read())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_cli_serves_then_exits_0_on_sigterm(server_process, transport):
    server = server_process(transport)
    assert server.url.startswith("http://127.0.0.1:")  # loopback by default
    assert get_json(f"{server.url}/healthz")["transports"] == [transport]
    req = urllib.request.Request(
        f"{server.url}/rooms/cli/messages", data=b'{"user": "ann", "text": "hi"}', method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5 * UNIT) as resp:
        assert resp.status == 201
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 5 * UNIT


def test_sigterm_closes_websockets_with_1001_answers_held_polls_and_ends_streams(server_process):
    server = server_process("all")

    async def scenario() -> tuple[int | None, dict, bytes, float]:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{server.url}/rooms/bye/ws")
            poll = asyncio.create_task(session.get(f"{server.url}/rooms/bye/messages?since=0&wait=30"))
            stream = await session.get(f"{server.url}/rooms/bye/events?since=0")
            await asyncio.sleep(0.5 * UNIT)  # let the poll be held
            started = time.monotonic()
            server.proc.send_signal(15)
            msg = await ws.receive(timeout=5 * UNIT)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            resp = await asyncio.wait_for(poll, 5 * UNIT)
            page = await resp.json()
            events = await asyncio.wait_for(stream.content.read(), 5 * UNIT)  # ends: a clean chunked end
            await ws.close()
            return ws.close_code, page, events, time.monotonic() - started

    close_code, page, events, elapsed = asyncio.run(scenario())
    assert close_code == 1001
    assert page == {"messages": [], "last_id": 0, "truncated": False}
    assert events == b"retry: 1000\n\n"
    assert elapsed < 5 * UNIT
    assert server.proc.wait(5 * UNIT) == 0


def test_cli_help_lists_the_limits():
    out = subprocess.run([sys.executable, "-m", "servers", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--transport", "--host", "--port", "--history", "--max-body-bytes", "--max-ws-message-bytes",
                 "--long-poll-max-wait", "--ws-send-queue", "--ws-compress", "--sse-heartbeat", "--sse-retry-ms",
                 "--sse-send-queue", "--demo", "--allow-origin", "--allow-host", "--send-rate", "--send-burst",
                 "--max-connections", "--max-connections-per-client", "--request-head-timeout",
                 "--keepalive-timeout"):
        assert flag in out
    options = " ".join(out.split("options:", 1)[1].split())  # each limit's default is shown beside it
    for flag, default in (("--send-rate RATE", "(default: 20.0)"), ("--send-burst N", "(default: 40)"),
                          ("--max-connections N", "(default: 20000)"), ("--request-head-timeout S", "(default: 5.0)")):
        text = options[options.index(flag + " "):]
        assert default in text[: text.index(" --", len(flag))], flag


@pytest.mark.parametrize(
    "args, message",
    [
        (["--transport", "carrier-pigeon"], "invalid choice"),
        (["--transport", "websocket", "--history", "0"], "--history: history must be at least 1"),
        (["--transport", "websocket", "--port", "70000"], "--port: port must be at least 0 and at most 65535"),
        (["--transport", "all", "--request-head-timeout", "30"], "request_head_timeout_s must be more than 0 and at most 10"),
        (["--transport", "sse", "--sse-heartbeat", "0"], "--sse-heartbeat: sse_heartbeat_s must be more than 0"),
        (["--transport", "sse", "--sse-send-queue", "0"], "--sse-send-queue: sse_send_queue must be at least 1"),
        (["--transport", "all", "--ws-send-queue", "x"], "invalid int value"),
    ],
)
def test_cli_rejects_bad_flags(args, message):
    proc = subprocess.run([sys.executable, "-m", "servers", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr


SIGNAL_AS_THE_LOOP_CLOSES = r'''
import os, signal, sys, threading, time
from asyncio import selector_events
from servers.__main__ import main

ready = sys.argv[1]
close_self_pipe = selector_events.BaseSelectorEventLoop._close_self_pipe

def close_then_signal(loop):
    close_self_pipe(loop)
    os.kill(os.getpid(), signal.SIGTERM)  # a second stop request, at the instant asyncio.run closes the loop

selector_events.BaseSelectorEventLoop._close_self_pipe = close_then_signal

def stop_when_ready():
    while not os.path.exists(ready):
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=stop_when_ready, daemon=True).start()
sys.exit(main(["--transport", "websocket", "--port", "0", "--no-access-log", "--ready-file", ready]))
'''


def test_a_second_stop_signal_as_the_loop_closes_prints_nothing_and_exits_0(tmp_path):
    # A stop signal after asyncio.run has closed the loop's self-pipe (the signal wakeup fd) but before its handlers
    # were removed printed "Exception ignored when trying to write to the signal wakeup fd" and a traceback into the
    # server's log (the supervisor sends SIGTERM twice when it stops a group): the server takes its handlers off first.
    result = subprocess.run([sys.executable, "-c", SIGNAL_AS_THE_LOOP_CLOSES, str(tmp_path / "ready.json")],
                            capture_output=True, text=True, timeout=30 * UNIT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "wakeup fd" not in result.stderr, result.stderr
