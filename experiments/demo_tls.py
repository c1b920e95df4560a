"""`make demo TLS=1`: the teaching page over HTTPS, through HAProxy, as production serves aiohttp.

    python -m experiments demo-tls --port 8443 --http 2     # HTTP=1.1 for ALPN http/1.1 only

The server (every transport, on a free port, the proxy's origin allowed) speaks HTTP/1.1 to HAProxy, which
terminates TLS with a certificate made at start (ECDSA P-256, days, never written into the repository) and speaks
HTTP/2 (or HTTP/1.1 only) to the browser; its log, printed as it goes, names each request's protocol
(`HTTP/2.0 GET /rooms/demo/ws`). docs/demo.md's step "Over HTTP/2" uses it to show a browser's six connections per
origin over HTTP/1.1, and their absence over h2.
"""

from __future__ import annotations

import base64
import contextlib
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .haproxy import HTTP_ARMS, HAProxy, http_unavailable, proxy_idle_s
from .supervisor import ServerProcess, free_port, start_server


@dataclass
class TlsDemo:
    url: str  # https://127.0.0.1:PORT/: the page
    http: str  # the arm: "1.1" or "2"
    proxy: HAProxy
    server: ServerProcess

    @property
    def spki_sha256_b64(self) -> str:
        """The certificate's public key hash, for Chromium's --ignore-certificate-errors-spki-list."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization

        cert = x509.load_pem_x509_certificate(self.proxy.ca_path.read_bytes())
        spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
        digest = hashes.Hash(hashes.SHA256())
        digest.update(spki)
        return base64.b64encode(digest.finalize()).decode()


@contextlib.contextmanager
def tls_demo(directory: Path, http: str = "2", port: int | None = None, binary: str = "haproxy",
             log_requests: bool = True) -> Iterator[TlsDemo]:
    """The server behind HAProxy's TLS front for `http` ("1.1" or "2"), on `port` (default: a free one)."""
    arm = HTTP_ARMS[http]
    if not arm.tls:
        raise ValueError("the demo is served over TLS: http must be 1.1 or 2")
    port = port or free_port()
    origin = f"https://127.0.0.1:{port}"
    directory.mkdir(parents=True, exist_ok=True)
    # The page's Origin is the proxy's https one; the server sees http from the proxy: allow the page's own.
    server = start_server(["--transport", "all", "--host", "127.0.0.1", "--allow-origin", origin,
                           "--allow-origin", f"https://localhost:{port}"], directory / "server.log")
    proxy = None
    try:
        proxy = HAProxy(directory, [("server-1", server.port)], "roundrobin", binary=binary, port=port, arm=arm,
                        idle_s=proxy_idle_s("all"), log_requests=log_requests).start()
        yield TlsDemo(f"{origin}/", http, proxy, server)
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=8443, help="the HTTPS port on 127.0.0.1 (default 8443)")
    parser.add_argument("--http", choices=("1.1", "2"), default="2",
                        help="what the proxy offers the browser: 2 (ALPN h2) or 1.1 (ALPN http/1.1 only)")


def follow(path: Path, stop: threading.Event) -> None:
    """Print what HAProxy logs (one line per request, its protocol in it) as it comes."""
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        while not stop.is_set():
            line = f.readline()
            if line:
                print(f"proxy: {line.rstrip()}", flush=True)
            else:
                time.sleep(0.2)


def run(a) -> int:
    problem = http_unavailable([a.http])
    if problem:
        print(f"python -m experiments demo-tls: {problem}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rtlab-demo-tls-") as directory, \
            tls_demo(Path(directory), a.http, a.port) as demo:
        print(f"rtlab demo over HTTPS, HTTP/{a.http} to the browser: open {demo.url}\n"
              f"  the certificate was made for this run: accept the browser's warning, or start Chromium with\n"
              f"  --ignore-certificate-errors-spki-list={demo.spki_sha256_b64}\n"
              f"  each request's protocol is in the proxy's log below; Ctrl-C stops everything", flush=True)
        stop = threading.Event()
        threading.Thread(target=follow, args=(demo.proxy.directory / "haproxy.log", stop), daemon=True).start()
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
        try:
            while demo.proxy.process.alive and demo.server.process.alive:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
    return 0
