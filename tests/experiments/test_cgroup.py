"""experiments/cgroup.py: a group made with a CPU limit, read back, entered before a child's first instruction and
removed (also when the block raises); a CPU-bound child held to its limit; v2's file writes on a fake tree; refused
with a reason where no group can be made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, UNIT, require_cgroups

from experiments import cgroup
from experiments.supervisor import Process


TICK_US = 10_000  # a scheduler tick at HZ=100, the coarsest: how far a spinning group may overrun its quota


def name(tag: str) -> str:
    return f"rtlab-{os.getpid()}-test-{tag}"


def burn(group: cgroup.Cgroup, log: Path) -> Process:
    """A child that forks a second one, and both spin: the second shows what the first starts is limited too."""
    code = "import os\nos.fork()\nwhile True: pass\n"
    return Process("burn", [sys.executable, "-c", code], log, cpus=[sorted(os.sched_getaffinity(0))[-1]],
                   cgroup=group).start()


# ---- the machine's own hierarchy ---------------------------------------------------------------------------------


def test_a_group_is_made_with_its_limit_read_back_and_removed_also_when_the_block_raises(tmp_path):
    hierarchy = require_cgroups()
    with cgroup.limited(0.5, name("made")) as group:
        assert all(path.is_dir() for path in group.paths) and len(group.paths) == len(hierarchy.directories)
        assert group.quota_us == 10_000 and group.period_us == cgroup.DEFAULT_PERIOD_US == 20_000
        if hierarchy.version == 1:
            assert group.applied == {"cpu.cfs_period_us": 20_000, "cpu.cfs_quota_us": 10_000,
                                     "cpu.cfs_burst_us": group.applied["cpu.cfs_burst_us"]}
            assert group.applied["cpu.cfs_burst_us"] in (0, None)  # no burst (None: a kernel without the file)
        else:
            assert group.applied["cpu.max"] == "10000 20000"
        assert group.describe()["cpu_limit"] == 0.5 and group.pids() == []
    assert not any(path.exists() for path in group.paths)

    with pytest.raises(RuntimeError, match="the body failed"):
        with cgroup.limited(0.25, name("raised")) as group:
            sleeper = Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log",
                              cgroup=group).start()
            deadline = time.monotonic() + 10 * UNIT
            while sleeper.pid not in group.pids() and time.monotonic() < deadline:
                time.sleep(0.02)
            raise RuntimeError("the body failed")
    # What was still inside was killed by pid, and the group removed.
    assert sleeper.proc.wait(5 * UNIT) == -9
    assert not any(path.exists() for path in group.paths)


def test_a_cpu_bound_child_under_a_0_2_limit_uses_at_most_a_quarter_of_a_cpu(tmp_path):
    require_cgroups()
    with cgroup.limited(0.2, name("burn")) as group:
        process = burn(group, tmp_path / "burn.log")
        try:
            deadline = time.monotonic() + 10 * UNIT
            while len(group.pids()) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert process.pid in group.pids() and len(group.pids()) == 2  # the child it forked is inside too
            time.sleep(0.2)
            # At least 1.5 s, and until the group has had CPU enough for the bound below to say something: on a CPU
            # that others' runs keep busy it gets less than its quota, and may take longer to use that much.
            start = group.stat()
            deadline = time.monotonic() + 15 * UNIT
            while True:
                time.sleep(0.25)
                used = group.stat().minus(start)
                if used["wall_s"] >= 1.5 and used["usage_usec"] >= 40 * group.quota_us or time.monotonic() > deadline:
                    break
            # The periods counted once more, after the usage was read (v1 reads cpu.stat before cpuacct.usage): a
            # pause between the two reads must not count usage whose periods are not counted.
            periods = group.stat().nr_periods - start.nr_periods
        finally:
            process.stop()
    assert not any(path.exists() for path in group.paths)
    share = used["usage_usec"] / 1e6 / used["wall_s"]
    assert share <= 0.25, f"two spinning processes used {share:.2f} CPU under a 0.2 limit: {used}"
    # However busy the CPU (others' runs may leave the group less than its quota), the kernel hands the group at
    # most its quota per period: what it used is within the quotas of the periods counted, plus what it may hold
    # when the window opens (a slice taken from the pool, and the pool) and one scheduler tick of overrun (repaid
    # in the next period). Without a limit no period is counted and this fails; it says something only where the
    # group used many quotas' worth.
    assert used["usage_usec"] >= 40 * group.quota_us, f"the child barely ran in {used['wall_s']:.1f} s: {used}"
    assert used["usage_usec"] <= group.quota_us * (periods + 2) + TICK_US, (periods, used)


def test_a_child_is_inside_its_group_before_its_first_instruction(tmp_path):
    require_cgroups()
    with cgroup.limited(None, name("enter")) as group:  # no limit: the group for its accounting alone
        out = tmp_path / "cgroup.txt"
        code = f"open({str(out)!r}, 'w').write(open('/proc/self/cgroup').read())"
        Process("reader", [sys.executable, "-S", "-c", code], tmp_path / "r.log", cgroup=group).start().wait(10 * UNIT)
        assert group.quota_us is None
        assert group.applied.get("cpu.cfs_quota_us", -1) == -1 and group.applied.get("cpu.max", "max 20000") \
            == "max 20000"
        assert f"/{group.name}" in out.read_text()
        assert group.stat().usage_usec is None or group.stat().usage_usec > 0  # the child's start-up, counted


# ---- refused -----------------------------------------------------------------------------------------------------


def test_without_a_cpu_hierarchy_the_reason_is_said(tmp_path):
    with pytest.raises(cgroup.CgroupUnavailable, match=r"no cgroup hierarchy with the cpu controller under "):
        cgroup.preflight(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("memory io\n")  # a v2 root without the cpu controller
    with pytest.raises(cgroup.CgroupUnavailable, match="cpu.cfs_quota_us"):
        cgroup.find(tmp_path)


# The hierarchies bound read-only in a mount namespace of the child's own, as a container gets them by default; the
# machine's own mounts are untouched.
READ_ONLY = 'for d in "$@"; do mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" || exit 97; done; exec "$0"'
LIMITED = """
name = "limited"
transports = ["websocket"]
[profile]
users = 4
spawn_rate = 4
rooms = 1
messages_per_second = 1.0
message_bytes = 20
arrival = "poisson"
duration_s = 4
warmup_s = 1
[server]
cpu_limit = 0.5
"""


def test_where_groups_are_not_writable_the_run_is_refused_with_why_before_anything_starts(tmp_path):
    hierarchy = require_cgroups()
    if not (shutil.which("unshare") and shutil.which("mount")):
        pytest.skip("needs unshare and mount (util-linux) to make the hierarchy read-only for one process")
    spec, out = tmp_path / "limited.toml", tmp_path / "results"
    spec.write_text(LIMITED)
    before = set(os.listdir(hierarchy.cpu))
    # sh -c SCRIPT ARG0 ARGS...: $0 is the command to exec, "$@" the hierarchies to make read-only.
    script = READ_ONLY.replace('exec "$0"', f'exec "$0" -m experiments run {spec} --out {out}')
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable, *map(str, hierarchy.directories)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60 * UNIT, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "cannot make a cgroup with a CPU limit under" in proc.stderr
    assert "Read-only file system (mounted read-only, as a container's is by default" in proc.stderr
    assert not out.exists() and set(os.listdir(hierarchy.cpu)) == before


def test_a_user_who_may_not_make_groups_is_told_to_run_as_root(fake_v2, monkeypatch):
    def refused(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cgroup, "make_directory", refused)
    with pytest.raises(cgroup.CgroupUnavailable, match=r"rtlab-\d+-probe: Permission denied \(run as root"):
        cgroup.preflight(fake_v2)


# ---- cgroup v2, on a tree that acts as the kernel would ------------------------------------------------------------


@pytest.fixture
def fake_v2(tmp_path, monkeypatch):
    """A v2 root with the cpu controller available but not yet enabled for its children; making a group makes the
    files the kernel would (cpu.max appears only once +cpu is in the parent's subtree_control)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n")

    def make(path: Path) -> None:
        path.mkdir()
        (path / "cgroup.procs").write_text("")
        (path / "cpu.stat").write_text("usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\n"
                                       "throttled_usec 0\nnr_bursts 0\nburst_usec 0\n")
        if "cpu" in (root / "cgroup.subtree_control").read_text().split():
            (path / "cpu.max").write_text("max 100000\n")
            (path / "cpu.max.burst").write_text("1000\n")

    monkeypatch.setattr(cgroup, "make_directory", make)
    monkeypatch.setattr(cgroup, "remove_directory", shutil.rmtree)
    return root


def test_v2_is_chosen_where_mounted_with_cpu_and_its_files_are_written(fake_v2):
    hierarchy = cgroup.find(fake_v2)
    assert hierarchy == cgroup.Hierarchy(2, fake_v2)
    with cgroup.limited(0.25, "rtlab-1-1", root=fake_v2) as group:
        # The controller was off for the root's children: the group asked for it, then set its limit.
        assert (fake_v2 / "cgroup.subtree_control").read_text() == "+cpu"
        assert (group.path / "cpu.max").read_text() == "5000 20000"
        assert group.applied == {"cpu.max": "5000 20000", "cpu.max.burst": None}
        group.add(4242)
        assert (group.path / "cgroup.procs").read_text() == "4242"
        (group.path / "cpu.stat").write_text("usage_usec 250000\nuser_usec 200000\nsystem_usec 50000\nnr_periods 50\n"
                                             "nr_throttled 40\nthrottled_usec 600000\nnr_bursts 0\nburst_usec 0\n")
        stat = group.stat()
        assert (stat.usage_usec, stat.user_usec, stat.system_usec, stat.nr_periods, stat.nr_throttled,
                stat.throttled_usec) == (250_000, 200_000, 50_000, 50, 40, 600_000)
    assert not group.path.exists()


def test_v2_with_the_controller_enabled_writes_no_burst_and_an_unlimited_group(fake_v2):
    (fake_v2 / "cgroup.subtree_control").write_text("cpu memory\n")
    with cgroup.limited(0.5, "rtlab-1-2", 50_000, root=fake_v2) as group:
        assert (fake_v2 / "cgroup.subtree_control").read_text() == "cpu memory\n"  # left as it was
        assert (group.path / "cpu.max").read_text() == "25000 50000"
        assert (group.path / "cpu.max.burst").read_text() == "0"  # the kernel's file: no burst
    with cgroup.limited(None, "rtlab-1-3", root=fake_v2) as group:
        assert (group.path / "cpu.max").read_text() == "max 20000"


def test_a_hybrid_machine_uses_v1_when_its_unified_tree_lacks_cpu(tmp_path):
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    both = tmp_path / "cpu,cpuacct"
    both.mkdir()
    for file in ("cpu.cfs_quota_us", "cpuacct.usage"):
        (both / file).write_text("-1\n")
    (tmp_path / "cpu").symlink_to("cpu,cpuacct")  # co-mounted, as on many v1 machines
    hierarchy = cgroup.find(tmp_path)
    assert hierarchy == cgroup.Hierarchy(1, both.resolve(), both.resolve())
    assert hierarchy.directories == (both.resolve(),)  # one directory per group, not two
