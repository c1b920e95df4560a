"""Network impairment for a point: a network namespace of the run's own (loopback only) where the point's server,
Locust and sampler run, packets are lost (nftables), the rate is limited (tbf) and, where the kernel has netem,
delayed; all of it removed in `finally`.

    with impaired({"loss_percent": 3.0}, f"rtlab-{os.getpid()}-1") as netns:
        ...  # this (main) thread is inside the namespace: processes it starts and its HTTP requests are too
    netns.facts  # what the kernel said was applied, and the drop counters at the end

Nothing here touches the machine's own interfaces: every command names the namespace (`ip -n`, `tc -n`,
`ip netns exec`), and the namespace has only its own loopback, so no packet leaves it. docs/network.md says what
each key means on loopback (the loss is per packet, once per direction; the rate is shared by both directions).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from .spec import Experiment, SpecError
from .supervisor import signals_deferred

BINARIES = ("ip", "tc", "nft")  # Debian: iproute2 (ip, tc), nftables (nft)
TABLE = "rtlab"  # `table inet rtlab`: rtlab's own, in the namespace only
LOSS_MODULUS = 10_000  # the drop rule draws a random number mod this: loss in hundredths of a per cent
# The runner's own requests come from this loopback address, which the loss rule lets through (the observer is
# not the network under test); every other packet, Locust's and the server's, meets the rule.
OBSERVER_ADDRESS = "127.0.0.2"
# The namespace's loopback is given an Ethernet-sized MTU and one segment per packet (no GSO super-packets), so a
# packet the rule drops is one segment of at most 1500 bytes, as on a real link, not 64 KiB of a TCP burst.
LO_MTU = 1500
TBF_QUEUE_MS = 100  # how long a packet may wait in the rate limiter's queue before it is dropped (tbf latency)
TBF_MIN_BURST_BYTES = 2 * (LO_MTU + 14)  # the bucket holds at least two full frames
COMMAND_TIMEOUT_S = 10.0
LEFTOVER_WAIT_S = 5.0
NETNS_DIR = "/run/netns"  # where `ip netns add` mounts a named namespace
CLONE_NEWNET = 0x40000000
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21  # linux/capability.h: impair the network; create and enter a namespace


class NetworkUnavailable(SpecError):
    """This machine cannot give the experiment the [network] it asks for; nothing was started."""


class NetworkError(RuntimeError):
    """Setting up or reading back a point's namespace failed; the namespace was removed."""


@dataclass(frozen=True)
class Impairment:
    """A point's [network] (experiments/spec.py validated it): what the namespace is asked to do."""

    loss_percent: float = 0.0
    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> Impairment:
        return cls(**data)

    @property
    def loss_threshold(self) -> int:
        """N of the drop rule `numgen random mod 10000 < N`: packets dropped per 10 000."""
        return round(self.loss_percent * LOSS_MODULUS / 100)

    @property
    def needs_netem(self) -> bool:
        return self.delay_ms > 0 or self.jitter_ms > 0

    def nft_script(self) -> str:
        """The `table inet rtlab` for `nft -f -`: count every TCP and UDP packet arriving at a socket, drop N in
        10 000. The input hook, not output: a packet dropped on output fails the sender's send (EPERM), so TCP would
        know at once and UDP senders would see errors; dropped on input, it is lost silently, as on a real link."""
        # The observer's own requests (/healthz, /metrics from OBSERVER_ADDRESS) are not the network under test:
        # a scrape held up by a lost SYN would shift the measured window, or miss its end.
        rules = [f'ip saddr {OBSERVER_ADDRESS} accept comment "observer"',
                 f'ip daddr {OBSERVER_ADDRESS} accept comment "observer"',
                 'meta l4proto { tcp, udp } counter comment "seen"']
        if self.loss_threshold > 0:
            rules.append(f"meta l4proto {{ tcp, udp }} numgen random mod {LOSS_MODULUS} < {self.loss_threshold} "
                         'counter drop comment "loss"')
        body = "\n".join(f"    {rule}" for rule in rules)
        return (f"table inet {TABLE} {{\n  chain in {{\n    type filter hook input priority 0; policy accept;\n"
                f"{body}\n  }}\n}}\n")

    def tc_commands(self, namespace: str) -> list[list[str]]:
        """The `tc` commands that shape the namespace's loopback: tbf for the rate, netem (under it) for delay."""
        commands = []
        parent = ["root", "handle", "1:"]
        if self.rate_mbit is not None:
            rate_bytes_s = self.rate_mbit * 1e6 / 8
            burst = max(TBF_MIN_BURST_BYTES, round(rate_bytes_s * 0.004))  # 4 ms at the rate, as tc-tbf(8) advises
            commands.append(["tc", "-n", namespace, "qdisc", "add", "dev", "lo", *parent, "tbf",
                             "rate", f"{round(self.rate_mbit * 1e6)}bit", "burst", str(burst),
                             "latency", f"{TBF_QUEUE_MS}ms"])
            parent = ["parent", "1:1", "handle", "10:"]
        if self.needs_netem:
            delay = ["delay", f"{self.delay_ms:g}ms", *([f"{self.jitter_ms:g}ms"] if self.jitter_ms else [])]
            commands.append(["tc", "-n", namespace, "qdisc", "add", "dev", "lo", *parent, "netem", *delay])
        return commands


@dataclass
class Namespace:
    """A point's namespace while it exists; `facts` is what goes into the manifest."""

    name: str
    impairment: Impairment
    facts: dict = field(default_factory=dict)


# ---- can this machine do it? ---------------------------------------------------------------------------------------


def preflight(experiment: Experiment) -> None:
    """Raise NetworkUnavailable (a SpecError: exit 2) when the experiment has a [network] this machine cannot give
    it: not root, `ip`/`tc`/`nft` missing, or a delay asked for on a kernel without netem. Call before starting."""
    if experiment.network is None:
        return
    problem = unavailable(Impairment.from_dict(point.network) for point in experiment.points())
    if problem:
        raise NetworkUnavailable(f"{experiment.source}: [network]: {problem}; nothing was started")


def unavailable(impairments: Iterable[Impairment]) -> str | None:
    """Why these impairments cannot be applied here, or None when they can."""
    if not has_capabilities(CAP_NET_ADMIN, CAP_SYS_ADMIN):
        return ("needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a network namespace for each point and "
                "impair it")
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (f"needs {', '.join(missing)} on PATH (Debian: apt-get install iproute2 nftables; .ci/run installs "
                "them)")
    if any(i.needs_netem for i in impairments):
        netem, error = netem_available()
        if not netem:
            return (f"delay_ms and jitter_ms need tc's netem qdisc (sch_netem), which this kernel does not have "
                    f"(tc qdisc add ... netem: {error}); rtlab will not fake a delay any other way: drop delay_ms "
                    "and jitter_ms, or run on a kernel with netem")
    return None


def has_capabilities(*caps: int) -> bool:
    """Whether this process holds every one of `caps` in its effective set (/proc/self/status CapEff)."""
    try:
        with open("/proc/self/status") as f:
            effective = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return False
    return all(effective >> cap & 1 for cap in caps)


@functools.cache
def netem_available() -> tuple[bool, str]:
    """Whether a netem qdisc can be added, tried in a scratch namespace (never on the machine's own loopback);
    (False, tc's error) when not."""
    name = f"rtlab-{os.getpid()}-probe"
    _unname_stale(name)
    _run(["ip", "netns", "add", name])
    try:
        proc = _run(["tc", "-n", name, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
        return proc.returncode == 0, (proc.stderr.strip() or f"exit {proc.returncode}")
    finally:
        _run(["ip", "netns", "del", name], check=False)


# ---- the namespace -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def impaired(network: dict[str, float] | None, name: str) -> Iterator[Namespace | None]:
    """Create namespace `name` with `network`'s impairment, enter it on this (the main) thread, and yield it; on the
    way out, however it is left, return to the original namespace, read the counters, stop what still runs inside
    and delete the namespace. With `network` None, do nothing and yield None.

    Start the point's processes inside the block (they inherit the namespace) and stop them before it ends."""
    if network is None:
        yield None
        return
    netns = Namespace(name, Impairment.from_dict(network))
    _unname_stale(name)
    _run(["ip", "netns", "add", name])
    try:
        _apply(netns)
        netns.facts.update(read_back(name))
        _check(netns)
        with entered(name):
            yield netns
    finally:
        with signals_deferred():  # a second Ctrl-C must not leave the namespace behind
            with contextlib.suppress(NetworkError, OSError, subprocess.SubprocessError, ValueError, LookupError):
                netns.facts["at_end"] = counters(name)
            _delete(name)


def _unname_stale(name: str) -> None:
    """Remove the name `name` when a run that was SIGKILLed with this pid left it (nothing of ours is inside)."""
    if os.path.exists(os.path.join(NETNS_DIR, name)):
        _run(["ip", "netns", "del", name], check=False)


def _apply(netns: Namespace) -> None:
    name, impairment = netns.name, netns.impairment
    _run(["ip", "-n", name, "link", "set", "lo", "mtu", str(LO_MTU), "gso_max_size", str(LO_MTU),
          "gso_max_segs", "1", "up"])
    _run(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin=impairment.nft_script())
    for command in impairment.tc_commands(name):
        _run(command)


def read_back(name: str) -> dict:
    """What namespace `name`'s kernel says is in force: lo's link settings, its qdiscs and the nftables ruleset."""
    link = json.loads(_run(["ip", "-n", name, "-d", "-j", "link", "show", "lo"]).stdout)[0]
    return {
        "namespace": name,
        "link": {key: link.get(key) for key in ("ifname", "operstate", "mtu", "gso_max_size", "gso_max_segs")},
        "qdisc": _run(["tc", "-n", name, "qdisc", "show", "dev", "lo"]).stdout.strip().splitlines(),
        "ruleset": _run(["ip", "netns", "exec", name, "nft", "list", "ruleset"]).stdout.strip(),
    }


def _check(netns: Namespace) -> None:
    """Refuse to run a point whose namespace does not read back as asked (a kernel that took a rule differently)."""
    impairment, facts = netns.impairment, netns.facts
    netns.facts["requested"] = asdict(impairment)
    qdiscs = " ".join(facts["qdisc"])
    problems = []
    if facts["link"]["mtu"] != LO_MTU or facts["link"]["gso_max_segs"] != 1:
        problems.append(f"lo is {facts['link']}")
    wanted = f"numgen random mod {LOSS_MODULUS} < {impairment.loss_threshold}"
    if impairment.loss_threshold > 0 and wanted not in facts["ruleset"]:
        problems.append(f"no rule `{wanted}` in the ruleset")
    if impairment.rate_mbit is not None and "qdisc tbf" not in qdiscs:
        problems.append("no tbf qdisc on lo")
    if impairment.needs_netem and "qdisc netem" not in qdiscs:
        problems.append("no netem qdisc on lo")
    if problems:
        raise NetworkError(f"namespace {netns.name} does not read back as asked: {'; '.join(problems)}")
    netns.facts["applied"] = {
        "loss_percent": impairment.loss_threshold * 100 / LOSS_MODULUS,
        "rate_mbit": impairment.rate_mbit,
        "delay_ms": impairment.delay_ms if impairment.needs_netem else 0.0,
        "jitter_ms": impairment.jitter_ms if impairment.needs_netem else 0.0,
    }


def counters(name: str) -> dict:
    """The drop rule's counters (TCP and UDP packets seen, dropped), TCP's segment counters and lo's qdisc
    statistics, read now."""
    ruleset = json.loads(_run(["ip", "netns", "exec", name, "nft", "-j", "list", "table", "inet", TABLE]).stdout)
    packets = {"seen": 0, "dropped": 0}
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if not rule:
            continue
        counter = next((e["counter"] for e in rule.get("expr", []) if "counter" in e), None)
        if counter is not None and rule.get("comment") in ("seen", "loss"):
            packets["seen" if rule.get("comment") == "seen" else "dropped"] = counter["packets"]
    stats = _run(["tc", "-n", name, "-s", "qdisc", "show", "dev", "lo"]).stdout.strip()
    return {"packets": packets, "tcp": tcp_counters(name), "qdisc_stats": stats.splitlines()}


def tcp_counters(name: str) -> dict[str, int]:
    """The namespace's TCP segment counters (/proc/net/snmp, per namespace): sent, received, retransmitted."""
    lines = [line.split() for line in _run(["ip", "netns", "exec", name, "cat", "/proc/net/snmp"]).stdout.splitlines()
             if line.startswith("Tcp:")]
    tcp = dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))
    return {"out_segments": tcp["OutSegs"], "in_segments": tcp["InSegs"], "retransmitted_segments": tcp["RetransSegs"]}


def _delete(name: str) -> None:
    """Stop whatever still runs in namespace `name` (only this run enters it) and delete it."""
    pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in map(int, pids):
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    while pids and time.monotonic() < deadline:  # bounded: SIGKILLed processes go at once (zombies do not count)
        time.sleep(0.05)
        pids = [p for p in _run(["ip", "netns", "pids", name], check=False).stdout.split() if _alive(int(p))]
    _run(["ip", "netns", "del", name], check=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


# ---- entering it ---------------------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"setns: {os.strerror(error)}")


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Move this thread into namespace `name` and back. Only the main thread: it is the one that starts the point's
    processes (they inherit its namespace) and makes the runner's requests. Threads already running stay in the
    machine's namespace; a thread or process the main thread starts inside is inside."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("enter a point's network namespace from the main thread only")
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def current_inode(pid: int | str = "thread-self") -> int:
    """The inode of a process's network namespace (`thread-self`: this thread's): equal inodes, one namespace."""
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def namespace_inode(name: str) -> int:
    return os.stat(os.path.join(NETNS_DIR, name)).st_ino


def leftovers(prefix: str = "rtlab-") -> list[str]:
    """Named namespaces whose name starts with `prefix` (for checking that nothing was left behind)."""
    with contextlib.suppress(FileNotFoundError):
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    return []


# ---- helpers -------------------------------------------------------------------------------------------------------


def _run(command: list[str], check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run one short `ip`/`tc`/`nft` command in a session of its own (so a Ctrl-C meant for the runner does not cut
    a teardown short); raise NetworkError with its stderr when it fails and `check`."""
    try:
        proc = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              start_new_session=True, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        if not check:
            return subprocess.CompletedProcess(command, -1, "", str(error))
        raise NetworkError(f"{' '.join(command)}: {error}") from None
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(command)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc

