"""[network]: parsed, validated and swept; a namespace of the run's own that really drops packets, reads back what
it applied and leaves nothing behind; refused (exit 2) where this machine cannot do it; one short real run."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import REQUIRE_ALL, ROOT, UNIT
from helpers.processes import from_a_terminal

from experiments import network
from experiments.spec import SpecError, load_experiment
from experiments.supervisor import Process

TINY = """
name = "tinynet"
description = "websocket through a lossy loopback"
transports = ["websocket"]

[profile]
users = 6
spawn_rate = 6
rooms = 2
messages_per_second = 1.0
message_bytes = 50
arrival = "poisson"
poll_interval_s = 0.5
long_poll_wait_s = 5
duration_s = 6
warmup_s = 1

[network]
loss_percent = 2
"""
PACKAGES = {"ip": "iproute2", "tc": "iproute2", "nft": "nftables"}


def write(tmp_path, text: str):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def require_netns() -> None:
    """Skip (fail under RTLAB_REQUIRE_ALL=1) without root or ip, tc, nft: conftest.require_binary's pattern, with
    the Debian package each binary comes in."""
    reasons = [f"{name} is not installed (apt-get install {PACKAGES[name]}); .ci/run installs it"
               for name in network.BINARIES if shutil.which(name) is None]
    if not network.has_capabilities(network.CAP_NET_ADMIN, network.CAP_SYS_ADMIN):
        reasons.append("network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN)")
    if reasons:
        if REQUIRE_ALL:
            pytest.fail(f"RTLAB_REQUIRE_ALL=1 but {'; '.join(reasons)}")
        pytest.skip("; ".join(reasons))


def machine_state() -> tuple[str, str]:
    """The machine's own nftables ruleset and loopback qdiscs: what nothing here may touch."""
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10, check=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True, timeout=10,
                            check=True).stdout
    return ruleset, qdiscs


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def name(tag: str) -> str:
    return f"rtlab-{os.getpid()}-{tag}"


# ---- the file ------------------------------------------------------------------------------------------------------


def test_network_table_is_read_into_every_point(tmp_path):
    text = TINY.replace("loss_percent = 2", "loss_percent = 0.5\nrate_mbit = 10\ndelay_ms = 20\njitter_ms = 5")
    experiment = load_experiment(write(tmp_path, text))
    want = {"loss_percent": 0.5, "rate_mbit": 10.0, "delay_ms": 20.0, "jitter_ms": 5.0}
    assert experiment.network == want and experiment.as_dict()["network"] == want
    assert [p.network for p in experiment.points()] == [want]
    assert network.Impairment.from_dict(want).loss_threshold == 50  # hundredths of a per cent


def test_without_network_table_nothing_changes_and_an_empty_one_is_a_bare_namespace(tmp_path):
    plain = load_experiment(write(tmp_path, TINY.replace("[network]\nloss_percent = 2\n", "")))
    assert plain.network is None and plain.points()[0].network is None
    bare = load_experiment(write(tmp_path, TINY.replace("loss_percent = 2\n", "")))
    assert bare.network == {} and bare.points()[0].network == {}


def test_network_keys_are_swept_like_profile_keys(tmp_path):
    text = TINY.replace('transports = ["websocket"]', 'transports = ["websocket", "sse"]').replace(
        "loss_percent = 2", "rate_mbit = 50\nloss_percent = 9\n\n[sweep]\nloss_percent = [0, 1, 3, 5]\nusers = [6, 8]")
    experiment = load_experiment(write(tmp_path, text))
    points = experiment.points()
    assert len(points) == 4 * 2 * 2
    assert experiment.point_keys == ["loss_percent", "users"]
    for point in points:  # the swept value replaces [network]'s, as a swept profile key replaces [profile]'s
        assert point.network == {"rate_mbit": 50.0, "loss_percent": float(point.swept["loss_percent"])}
        assert point.profile.users == point.swept["users"]
        assert "loss_percent" not in point.profile.as_dict()
    assert {p.network["loss_percent"] for p in points} == {0.0, 1.0, 3.0, 5.0}
    assert len({p.slug for p in points}) == len(points)
    assert points[0].slug == "loss_percent=0,users=6/websocket-r1"
    swept_only = load_experiment(write(tmp_path, TINY.replace("[network]\nloss_percent = 2",
                                                              "[sweep]\nloss_percent = [0, 1]")))
    assert [p.network for p in swept_only.points()] == [{"loss_percent": 0.0}, {"loss_percent": 1.0}]


@pytest.mark.parametrize("change, key", [
    ("loss_percent = -1", "network.loss_percent"),
    ("loss_percent = 101", "network.loss_percent"),
    ("loss_percent = 0.005", "network.loss_percent"),  # finer than the rule's hundredths of a per cent
    ('loss_percent = "lots"', "network.loss_percent"),
    ("loss_percent = true", "network.loss_percent"),
    ("loss_percent = nan", "network.loss_percent"),
    ("rate_mbit = 0", "network.rate_mbit"),
    ("rate_mbit = -3", "network.rate_mbit"),
    ("delay_ms = -5", "network.delay_ms"),
    ("delay_ms = 10\njitter_ms = 20", "network.jitter_ms"),
    ("jitter_ms = 5", "network.jitter_ms"),  # jitter needs a delay to vary
    ("corrupt_percent = 1", "network.corrupt_percent"),
    ("loss_percent = 1\n[sweep]\nloss_percent = [1, 200]", "sweep.loss_percent"),
    ("loss_percent = 1\n[sweep]\nloss_percent = [1, 1]", "sweep.loss_percent"),
    ("delay_ms = 5\n[sweep]\njitter_ms = [1, 10]", "sweep.jitter_ms"),
])
def test_bad_network_values_name_the_key(tmp_path, change, key):
    path = write(tmp_path, TINY.replace("loss_percent = 2", change))
    with pytest.raises(SpecError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and key in str(error.value)


def test_network_not_a_table_is_refused(tmp_path):
    path = write(tmp_path, "network = 3\n" + TINY.replace("[network]\nloss_percent = 2", ""))
    with pytest.raises(SpecError, match="network: must be a table"):
        load_experiment(path)


def test_the_rules_and_qdiscs_asked_for():
    assert "drop" not in network.Impairment(loss_percent=0).nft_script()  # loss 0: counted, never dropped
    script = network.Impairment(loss_percent=0.5).nft_script()
    assert "hook input" in script and "numgen random mod 10000 < 50 counter drop" in script
    # The runner's own scrapes come from the observer's address, let through before the loss rule.
    observer = script.index(f"ip saddr {network.OBSERVER_ADDRESS} accept")
    assert observer < script.index(f"ip daddr {network.OBSERVER_ADDRESS} accept") < script.index("numgen")
    assert network.Impairment(loss_percent=1).tc_commands("ns") == []
    (tbf,) = network.Impairment(rate_mbit=8).tc_commands("ns")
    assert tbf[:8] == ["tc", "-n", "ns", "qdisc", "add", "dev", "lo", "root"] and "tbf" in tbf
    assert tbf[tbf.index("rate") + 1] == "8000000bit"
    tbf, netem = network.Impairment(rate_mbit=8, delay_ms=20, jitter_ms=5).tc_commands("ns")
    assert netem[netem.index("parent") + 1] == "1:1" and netem[-4:] == ["netem", "delay", "20ms", "5ms"]


# ---- the namespace -------------------------------------------------------------------------------------------------


def udp_through(count: int, timeout_s: float) -> int:
    """Send `count` datagrams to a socket in this thread's namespace; return how many arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        received = 0
        for i in range(count):
            tx.sendto(b"%06d" % i, rx.getsockname())  # a send never fails: the loss is on arrival, silent
            while True:  # drain as we go, so the receive buffer never overflows (that would be a loss of its own)
                try:
                    rx.recv(64)
                    received += 1
                except BlockingIOError:
                    break
        rx.settimeout(0.1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                rx.recv(64)
                received += 1
            except TimeoutError:
                break
        return received


@pytest.mark.parametrize("loss_percent, low, high", [(30, 0.24, 0.36), (0, 0.0, 0.0)])
def test_the_drop_rule_loses_that_share_of_packets(loss_percent, low, high):
    require_netns()
    sent = 2000
    home = network.current_inode()
    with network.impaired({"loss_percent": float(loss_percent)}, name("udp")) as netns:
        assert network.current_inode() == network.namespace_inode(netns.name) != home
        received = udp_through(sent, 1.0 * UNIT)
        at_end = network.counters(netns.name)
    assert network.current_inode() == home
    lost = sent - received
    assert low <= lost / sent <= high, (lost, sent)  # 30 %: mean 600, sd 20.5; the band is ±5 sd
    assert at_end["packets"] == {"seen": sent, "dropped": lost}  # every missing datagram is one the rule dropped


def test_read_back_names_the_rule_and_the_tbf_qdisc():
    require_netns()
    with network.impaired({"loss_percent": 3.0, "rate_mbit": 20.0}, name("readback")) as netns:
        udp_through(100, 0.5 * UNIT)
    facts = netns.facts
    assert facts["namespace"] == netns.name
    assert "table inet rtlab" in facts["ruleset"] and "numgen random mod 10000 < 300" in facts["ruleset"]
    assert any(line.startswith("qdisc tbf") and "rate 20Mbit" in line for line in facts["qdisc"]), facts["qdisc"]
    assert facts["link"]["mtu"] == network.LO_MTU and facts["link"]["gso_max_segs"] == 1
    assert facts["applied"] == {"loss_percent": 3.0, "rate_mbit": 20.0, "delay_ms": 0.0, "jitter_ms": 0.0}
    assert facts["at_end"]["packets"]["seen"] == 100
    assert any("Sent" in line for line in facts["at_end"]["qdisc_stats"])


def test_teardown_leaves_nothing_behind_even_when_the_body_raises(tmp_path):
    require_netns()
    before = machine_state()
    with network.impaired({"loss_percent": 1.0, "rate_mbit": 5.0}, name("ok")):
        pass
    sleeper = None
    with pytest.raises(RuntimeError, match="the point failed"), network.impaired({"loss_percent": 1.0}, name("raises")):
        # A process left running inside is stopped by the teardown (only the run enters its namespace).
        sleeper = Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log").start()
        raise RuntimeError("the point failed")
    try:
        assert sleeper.wait(5 * UNIT) is not None, "the process left in the namespace still runs"
    finally:
        sleeper.stop()
    assert not [n for n in network.leftovers() if n.startswith(f"rtlab-{os.getpid()}-")]
    assert machine_state() == before  # the machine's own ruleset and loopback qdiscs are as they were


def test_a_namespace_is_entered_from_the_main_thread_only():
    require_netns()
    errors = []

    def enter() -> None:
        try:
            with network.entered("never-made"):
                pass
        except RuntimeError as error:
            errors.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(5 * UNIT)
    assert errors and "main thread" in str(errors[0])


COUNT_TCP = "from experiments.sampler import open_tcp_inodes; print(sorted(open_tcp_inodes()))"


def test_a_child_counts_the_tcp_connections_of_its_namespace_only():
    """The sampler reads /proc/net/tcp, which is per namespace: started inside, it counts the point's connections
    and nothing of the machine's; started from a thread that was running before the main thread entered (and so
    stayed in the machine's namespace), none of them."""
    require_netns()

    def inodes_seen_by_a_child(seen: list) -> None:
        proc = subprocess.run([sys.executable, "-c", COUNT_TCP], capture_output=True, text=True, cwd=ROOT,
                              timeout=20 * UNIT, check=True)
        seen.append(set(json.loads(proc.stdout)))

    inside, outside = [], []
    go = threading.Event()
    thread = threading.Thread(target=lambda: go.wait(30 * UNIT) and inodes_seen_by_a_child(outside))
    thread.start()  # before entering: a thread the main thread starts inside is inside too
    try:
        with network.impaired({"loss_percent": 0.0}, name("tcp")), socket.create_server(("127.0.0.1", 0)) as server, \
                socket.create_connection(server.getsockname(), timeout=5 * UNIT) as client:
            accepted, _ = server.accept()
            with accepted:
                ours = {os.fstat(s.fileno()).st_ino for s in (client, accepted)}
                inodes_seen_by_a_child(inside)
                go.set()
                thread.join(30 * UNIT)
    finally:
        go.set()
        thread.join(30 * UNIT)
    assert inside == [ours]  # both ends of the one connection, and nothing else
    assert len(outside) == 1 and ours.isdisjoint(outside[0])


# ---- refused before anything starts --------------------------------------------------------------------------------


def run_cli(path, out, env=None, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "experiments", "run", str(path), "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60 * UNIT, check=False)


def test_a_delay_without_netem_exits_2_naming_netem(tmp_path):
    require_netns()
    if network.netem_available()[0]:
        pytest.skip("this kernel has netem: a delay would be applied, not refused")
    path = write(tmp_path, TINY.replace("loss_percent = 2", "loss_percent = 2\ndelay_ms = 20"))
    proc = run_cli(path, tmp_path / "out")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "netem" in proc.stderr and "delay_ms" in proc.stderr and str(path) in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not [n for n in network.leftovers() if n.endswith("-probe")]  # the probe's scratch namespace is gone


def test_without_nft_or_root_the_run_exits_2(tmp_path):
    require_netns()
    path = write(tmp_path, TINY)
    bin_dir = tmp_path / "bin"  # ip and tc, but no nft
    bin_dir.mkdir()
    for binary in ("ip", "tc"):
        (bin_dir / binary).symlink_to(shutil.which(binary))
    proc = run_cli(path, tmp_path / "out", env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 2 and "nft" in proc.stderr and "nftables" in proc.stderr, proc.stderr
    setpriv = shutil.which("setpriv")  # util-linux: root without the capabilities a namespace needs
    if setpriv:
        drop = ["--bounding-set=-net_admin,-sys_admin", "--inh-caps=-net_admin,-sys_admin"]
        proc = run_cli(path, tmp_path / "out", prefix=(setpriv, *drop))
        assert proc.returncode == 2 and "needs root" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


# ---- a real run ----------------------------------------------------------------------------------------------------


def test_a_run_with_loss_lives_in_its_namespace_and_records_the_impairment(tmp_path):
    require_netns()
    before = machine_state()
    out = tmp_path / "results"
    runner = Process("runner", [sys.executable, "-m", "experiments", "run", str(write(tmp_path, TINY)), "--quick",
                                "--out", str(out), "--quiet"], tmp_path / "runner.log")
    with runner.start():
        deadline = time.monotonic() + 30 * UNIT
        while time.monotonic() < deadline and next(out.glob("*/websocket-r1/started.json"), None) is None:
            time.sleep(0.1)
        ns_name = f"rtlab-{runner.pid}-1"
        inside = network.namespace_inode(ns_name)
        family = [runner.pid, *(p.pid for p in psutil.Process(runner.pid).children(recursive=True))]
        # The runner's main thread (its scrapes), the server, Locust and the sampler: all inside, none outside.
        assert {network.current_inode(pid) for pid in family} == {inside}, family
        assert inside != network.current_inode()
        code = runner.wait(60 * UNIT)
    assert code == 0, runner.log()
    run = (out / "latest").resolve()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["experiment"]["network"] == {"loss_percent": 2.0}
    (point,) = manifest["points"]
    facts = point["network"]
    assert facts["namespace"] == ns_name and facts["applied"]["loss_percent"] == 2.0
    assert "numgen random mod 10000 < 200" in facts["ruleset"] and facts["qdisc"]
    assert facts["at_end"]["packets"]["seen"] > 100 and facts["at_end"]["tcp"]["out_segments"] > 100
    with open(run / "summary.csv") as f:
        header, row = (line.split(",") for line in f.read().splitlines())
    assert float(dict(zip(header, row))["delivered"]) > 0
    assert ns_name not in network.leftovers()
    assert machine_state() == before


def test_ctrl_c_mid_point_leaves_no_namespace_and_no_process(tmp_path):
    require_netns()
    before = machine_state()
    out = tmp_path / "results"
    spec = write(tmp_path, TINY.replace("duration_s = 6", "duration_s = 30"))
    runner = Process("runner", from_a_terminal([sys.executable, "-m", "experiments", "run", str(spec), "--out", str(out),
                                                "--quiet"]), tmp_path / "runner.log", session=False)
    with runner.start():
        deadline = time.monotonic() + 30 * UNIT
        while time.monotonic() < deadline and next(out.glob("*/websocket-r1/started.json"), None) is None:
            time.sleep(0.1)
        ns_name = f"rtlab-{runner.pid}-1"
        assert ns_name in network.leftovers(), "the run never entered its namespace"
        descendants = [p.pid for p in psutil.Process(runner.pid).children(recursive=True)]
        runner.signal(signal.SIGINT)
        code = runner.wait(30 * UNIT)
    assert code == 130, runner.log()
    assert ns_name not in network.leftovers()
    deadline = time.monotonic() + 5 * UNIT
    while time.monotonic() < deadline and any(map(alive, descendants)):
        time.sleep(0.1)
    assert not [pid for pid in descendants if alive(pid)]
    assert machine_state() == before



def test_quic_under_loss_streams_lose_nothing_and_datagrams_lose_some(tmp_path):
    # The seed's last lesson on QUIC: at 10 % loss each way, a stream per message is retransmitted until it
    # arrives (a gap may close late: out of order, never lost), a datagram's message is sent once and may be lost.
    require_netns()
    text = TINY.replace('transports = ["websocket"]', 'transports = ["webtransport", "webtransport-datagram"]')
    text = text.replace("rooms = 2", "rooms = 1").replace("messages_per_second = 1.0", "messages_per_second = 2.0")
    text = text.replace("loss_percent = 2", "loss_percent = 10")
    out = tmp_path / "results"
    runner = Process("runner", [sys.executable, "-m", "experiments", "run", str(write(tmp_path, text)), "--quick",
                                "--out", str(out), "--quiet"], tmp_path / "runner.log")
    with runner.start():
        code = runner.wait(120 * UNIT)
    assert code == 0, runner.log()
    run = (out / "latest").resolve()
    with open(run / "summary.csv") as f:
        rows = {row["transport"]: row for row in csv.DictReader(f)}
    streams, datagrams = rows["webtransport"], rows["webtransport-datagram"]
    assert float(streams["delivered"]) > 100 and float(datagrams["delivered"]) > 100
    assert float(streams["lost"]) == 0 and float(streams["never_arrived"]) == 0, streams
    assert float(datagrams["lost"]) > 0 and float(datagrams["delivered_ratio"]) < 1, datagrams
