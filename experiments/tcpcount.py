"""Kernel-level bytes for one TCP port: a packet capture that sums IP packet sizes and TCP payloads.

    sudo python -m experiments.tcpcount --port 8080 --interface lo --out tcp.json   # until SIGINT/SIGTERM

The server counts TCP payload bytes at its connections (/metrics). This counts what the kernel
put on the interface for the same port, headers, handshakes and bare ACKs included, so the two can
be reported side by side, and the payload sums cross-check each other. It needs CAP_NET_RAW (an
AF_PACKET socket, Linux only). On loopback every packet passes the capture twice (out, then in);
only the outgoing copy is counted.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import threading
from dataclasses import asdict, dataclass, field

ETH_P_ALL = 0x0003
ETH_HEADER = 14  # loopback frames carry a (zeroed) Ethernet header too
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6


@dataclass
class Direction:
    packets: int = 0
    ip_bytes: int = 0  # IP header + TCP header + payload: what crossed the interface, less link framing
    payload_bytes: int = 0  # TCP payload alone: comparable with rtlab_wire_*_bytes_total
    bare_acks: int = 0  # no payload, no SYN/FIN/RST: pure acknowledgements
    syn: int = 0
    fin: int = 0

    @property
    def header_bytes(self) -> int:
        return self.ip_bytes - self.payload_bytes


@dataclass
class PortCounts:
    port: int
    to_server: Direction = field(default_factory=Direction)
    from_server: Direction = field(default_factory=Direction)
    dropped: int = 0  # packets the kernel dropped because the capture fell behind: then the sums are low

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("to_server", "from_server"):
            out[name]["header_bytes"] = getattr(self, name).header_bytes
        return out


def parse_tcp(frame: bytes) -> tuple[int, int, int, int, int] | None:
    """Return (src port, dst port, IP length, payload length, TCP flags) of an IPv4/IPv6 TCP frame, else None."""
    ip = memoryview(frame)[ETH_HEADER:]
    if len(ip) < 20:
        return None
    version = ip[0] >> 4
    if version == 4:
        header = (ip[0] & 0x0F) * 4
        if ip[9] != socket.IPPROTO_TCP:
            return None
        ip_length = struct.unpack_from("!H", ip, 2)[0]
    elif version == 6:
        header = 40
        if ip[6] != socket.IPPROTO_TCP:  # extension headers are not followed: not used on loopback TCP
            return None
        ip_length = 40 + struct.unpack_from("!H", ip, 4)[0]
    else:
        return None
    tcp = ip[header:]
    if len(tcp) < 20:
        return None
    src, dst = struct.unpack_from("!HH", tcp, 0)
    tcp_header = (tcp[12] >> 4) * 4
    return src, dst, ip_length, ip_length - header - tcp_header, tcp[13]


class PortCapture:
    """Count the packets of one TCP port on one interface, in a background thread, until stop()."""

    def __init__(self, port: int, interface: str = "lo") -> None:
        self.counts = PortCounts(port)
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
        self._sock.bind((interface, 0))
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"tcpcount-{port}", daemon=True)

    def start(self) -> PortCapture:
        self._thread.start()
        return self

    def snapshot(self) -> PortCounts:
        with self._lock:
            return PortCounts(
                self.counts.port, Direction(**asdict(self.counts.to_server)),
                Direction(**asdict(self.counts.from_server)), self.counts.dropped,
            )

    def stop(self) -> PortCounts:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return self.snapshot()

    def _run(self) -> None:
        port = self.counts.port
        while not self._stop.is_set():
            try:
                frame, address = self._sock.recvfrom(262144)
            except TimeoutError:
                self._read_drops()
                continue
            except OSError:
                return
            if address[2] != PACKET_OUTGOING:
                continue
            parsed = parse_tcp(frame)
            if parsed is None:
                continue
            src, dst, ip_length, payload, flags = parsed
            if dst == port:
                direction = self.counts.to_server
            elif src == port:
                direction = self.counts.from_server
            else:
                continue
            with self._lock:
                direction.packets += 1
                direction.ip_bytes += ip_length
                direction.payload_bytes += payload
                direction.syn += bool(flags & 0x02)
                direction.fin += bool(flags & 0x01)
                direction.bare_acks += payload == 0 and not flags & 0x07
        self._read_drops()

    def _read_drops(self) -> None:
        try:
            _, drops = struct.unpack("II", self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
        except OSError:
            return
        with self._lock:
            self.counts.dropped += drops  # the kernel resets the statistics on every read


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.tcpcount", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--interface", default="lo")
    p.add_argument("--out", default="-", help="JSON file for the counts ('-' for stdout)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: on a signal)")
    a = p.parse_args(argv)
    try:
        capture = PortCapture(a.port, a.interface).start()
    except PermissionError:
        print("tcpcount: an AF_PACKET socket needs CAP_NET_RAW (run as root)", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"tcpcount: counting port {a.port} on {a.interface}", file=sys.stderr, flush=True)
    done.wait(a.duration)
    text = json.dumps(capture.stop().as_dict(), indent=2)
    if a.out == "-":
        print(text)
    else:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
