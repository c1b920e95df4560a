"""Kernel-level bytes for TCP ports: a packet capture that sums IP packet sizes and TCP payloads.

    sudo python -m experiments.tcpcount --port 8080 --interface lo --out tcp.json   # until SIGINT/SIGTERM

The server counts TCP payload bytes at its connections (/metrics). This counts what the kernel
put on the interface for the same port, headers, handshakes and bare ACKs included, so the two can
be reported side by side, and the payload sums cross-check each other; for a server that has no meter
of its own (a peer on uvicorn, daphne or websockets) it is the only count. It needs CAP_NET_RAW (an
AF_PACKET socket, Linux only). On loopback every packet passes the capture twice (out, then in);
only the outgoing copy is counted.

A classic BPF filter in the kernel hands over only the outgoing copies of TCP packets of the asked ports,
and only their first SNAP_BYTES (the headers), so the Python loop sees each counted packet once and
nothing else. `--exclude-host` leaves out every packet to or from one IPv4 address: the experiment
runner's own requests (/metrics, /healthz) come from one, so that the capture counts what the members
moved, as the server's meter does. The runner (experiments/capture.py) sends SIGUSR1 at the measured
window's edges: each writes a snapshot of the counts so far as one JSON line to `--marks`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

ETH_P_ALL = 0x0003
ETH_HEADER = 14  # loopback frames carry a (zeroed) Ethernet header too
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
SNAP_BYTES = 14 + 60 + 60  # Ethernet, the longest IPv4 header, the longest TCP header


@dataclass
class Direction:
    packets: int = 0
    ip_bytes: int = 0  # IP header + TCP header + payload: what crossed the interface, less link framing
    payload_bytes: int = 0  # TCP payload alone, each byte once: comparable with rtlab_wire_*_bytes_total
    retransmitted_bytes: int = 0  # payload sent again (sequence numbers seen already): on the wire, not in the above
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
    parsed = parse_segment(frame)
    return None if parsed is None else parsed[:5]


def parse_segment(frame: bytes) -> tuple[int, int, int, int, int, int, bytes] | None:
    """parse_tcp's fields, then the sequence number and the source address (a flow is source address and ports)."""
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
    src, dst, seq = struct.unpack_from("!HHI", tcp, 0)
    tcp_header = (tcp[12] >> 4) * 4
    source = bytes(ip[12:16]) if version == 4 else bytes(ip[8:24])
    return src, dst, ip_length, ip_length - header - tcp_header, tcp[13], seq, source


def bpf_program(ports: list[int], exclude_host: str | None = None) -> bytes:
    """A classic BPF filter (struct sock_fprog's instructions) that keeps the first SNAP_BYTES of outgoing
    IPv4/IPv6 TCP packets from or to `ports` (not fragments, not to or from `exclude_host`), drops the rest."""
    code: list[tuple] = []  # (opcode, jump-true label, jump-false label, k); labels resolved below

    def op(opcode: int, k: int = 0, jt: str | None = None, jf: str | None = None, label: str | None = None) -> None:
        code.append((label, opcode, jt, jf, k))

    ld_w_abs, ld_h_abs, ld_b_abs, ldx_msh = 0x20, 0x28, 0x30, 0xB1
    ld_h_ind, jeq, jset, ret = 0x48, 0x15, 0x45, 0x06
    op(ld_w_abs, 0xFFFFF000 + 4)  # SKF_AD_OFF + SKF_AD_PKTTYPE
    op(jeq, PACKET_OUTGOING, None, "drop")
    op(ld_h_abs, 12)  # ethertype
    op(jeq, 0x0800, None, "v6")
    op(ld_b_abs, ETH_HEADER + 9)
    op(jeq, socket.IPPROTO_TCP, None, "drop")
    if exclude_host:
        host = struct.unpack("!I", socket.inet_aton(exclude_host))[0]
        for offset in (12, 16):
            op(ld_w_abs, ETH_HEADER + offset)
            op(jeq, host, "drop", None)
    op(ld_h_abs, ETH_HEADER + 6)
    op(jset, 0x1FFF, "drop", None)  # a later fragment has no TCP header
    op(ldx_msh, ETH_HEADER)  # X = the IPv4 header's length
    for offset in (0, 2):
        op(ld_h_ind, ETH_HEADER + offset)
        for port in ports:
            op(jeq, port, "keep", None)
    op(ret, 0, label="drop")
    op(ld_h_abs, 12, label="v6")
    op(jeq, 0x86DD, None, "drop_v6")
    op(ld_b_abs, ETH_HEADER + 6)
    op(jeq, socket.IPPROTO_TCP, None, "drop_v6")
    for offset in (40, 42):
        op(ld_h_abs, ETH_HEADER + offset)
        for port in ports:
            op(jeq, port, "keep", None)
    op(ret, 0, label="drop_v6")
    op(ret, SNAP_BYTES, label="keep")
    where = {label: i for i, (label, *_) in enumerate(code) if label}
    out = bytearray()
    for i, (_, opcode, jt, jf, k) in enumerate(code):
        offsets = [where[target] - i - 1 if target else 0 for target in (jt, jf)]
        if any(not 0 <= o < 256 for o in offsets):
            raise ValueError("too many ports for one filter")
        out += struct.pack("HBBI", opcode, offsets[0], offsets[1], k & 0xFFFFFFFF)
    return bytes(out)


def attach_filter(sock: socket.socket, program: bytes) -> None:
    import ctypes

    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class PortCapture:
    """Count the packets of TCP ports on one interface, in a background thread, until stop().

    `counts` (and snapshot(), stop()) are the first port's; `all_counts` every port's."""

    def __init__(self, port: int | list[int], interface: str = "lo", exclude_host: str | None = None) -> None:
        ports = [port] if isinstance(port, int) else list(port)
        self.all_counts = {p: PortCounts(p) for p in ports}
        self.counts = self.all_counts[ports[0]]
        self._dropped = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            attach_filter(self._sock, bpf_program(ports, exclude_host))
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
            self._sock.bind((interface, 0))
            # What arrived before the filter was attached (between socket() and setsockopt) is unfiltered: drain it.
            self._sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    self._sock.recv(1)
            self._read_drops()
            self._dropped = 0
        except BaseException:
            self._sock.close()
            raise
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"tcpcount-{ports[0]}", daemon=True)

    def start(self) -> PortCapture:
        self._thread.start()
        return self

    def snapshot(self) -> PortCounts:
        return self.snapshots()[self.counts.port]

    def snapshots(self) -> dict[int, PortCounts]:
        with self._lock:
            return {port: PortCounts(port, Direction(**asdict(c.to_server)), Direction(**asdict(c.from_server)),
                                     self._dropped)
                    for port, c in self.all_counts.items()}

    def stop(self) -> PortCounts:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        return self.snapshot()

    def _run(self) -> None:
        counts = self.all_counts
        highest: dict[tuple[bytes, int, int], int] = {}  # flow -> the sequence number after its highest byte seen
        drain_until = None
        while True:
            if self._stop.is_set():  # what is queued already is counted: read on until the queue is empty (bounded)
                drain_until = drain_until or time.monotonic() + 2.0
                if time.monotonic() > drain_until:
                    break
            try:
                frame, address = self._sock.recvfrom(SNAP_BYTES)
            except TimeoutError:
                self._read_drops()
                if self._stop.is_set():
                    break
                continue
            except OSError:
                return
            if address[2] != PACKET_OUTGOING:
                continue
            parsed = parse_segment(frame)
            if parsed is None:
                continue
            src, dst, ip_length, payload, flags, seq, source = parsed
            if dst in counts:
                direction = counts[dst].to_server
            elif src in counts:
                direction = counts[src].from_server
            else:
                continue
            # Each payload byte once: past the highest sequence number this flow sent (modulo 2**32), or a retransmission.
            flow = (source, src, dst)
            end = (seq + payload + (flags & 0x02 != 0)) & 0xFFFFFFFF
            high = highest.get(flow)
            if high is None or flags & 0x02:
                new = payload
                highest[flow] = end
            else:
                ahead = (end - high) & 0xFFFFFFFF
                new = min(payload, ahead) if 0 < ahead < 0x80000000 else 0
                if new:
                    highest[flow] = end
            with self._lock:
                direction.packets += 1
                direction.ip_bytes += ip_length
                direction.payload_bytes += new
                direction.retransmitted_bytes += payload - new
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
            self._dropped += drops  # the kernel resets the statistics on every read: the sums are low by this much


def document(capture: PortCapture, counts: dict[int, PortCounts] | None = None) -> dict:
    """The JSON the command writes: the first port's counts at the top level (as with one port), every port's
    under "ports"."""
    counts = counts or capture.snapshots()
    first = counts[capture.counts.port]
    return {**first.as_dict(), "ports": {str(port): c.as_dict() for port, c in counts.items()}}


def control(capture: PortCapture, marks: dict[str, dict], done: threading.Event) -> None:
    """Commands on stdin, one a line: 'mark NAME' (the counts so far, with the monotonic time), 'stop'."""
    for line in sys.stdin:
        command, _, name = line.strip().partition(" ")
        if command == "mark":
            marks[name] = {"t_mono_s": time.monotonic(), **document(capture)}
        elif command == "stop":
            break
    done.set()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.tcpcount", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True, action="append", help="a TCP port to count (repeatable)")
    p.add_argument("--interface", default="lo")
    p.add_argument("--exclude-host", default=None, help="leave out packets to or from this IPv4 address")
    p.add_argument("--out", default="-", help="JSON file for the counts ('-' for stdout)")
    p.add_argument("--control", action="store_true",
                   help="read commands from stdin: 'mark NAME' keeps the counts so far under \"marks\"; 'stop' or "
                        "the end of input stops; once counting, print 'ready' on stdout")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: on a signal)")
    a = p.parse_args(argv)
    try:
        capture = PortCapture(a.port, a.interface, a.exclude_host).start()
    except PermissionError:
        print("tcpcount: an AF_PACKET socket needs CAP_NET_RAW (run as root)", file=sys.stderr)
        return 1
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"tcpcount: counting port {a.port} on {a.interface}", file=sys.stderr, flush=True)
    marks: dict[str, dict] = {}
    if a.control:
        threading.Thread(target=control, args=(capture, marks, done), daemon=True).start()
        print("ready", flush=True)
    done.wait(a.duration)
    capture.stop()
    text = json.dumps({**document(capture), **({"marks": marks} if a.control else {})}, indent=2)
    if a.out == "-":
        print(text)
    else:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
