"""CPU limits for a point's server: a cgroup of its own with a CFS bandwidth limit (cgroup v2 `cpu.max` where a v2
hierarchy has the cpu controller, else v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), its own CPU accounting
(`cpu.stat`), removed when the point ends.

    with cgroup.limited(0.25, f"rtlab-{os.getpid()}-3") as group:   # 0.25 of one CPU, 20 ms periods, no burst
        server = start_server(..., cgroup=group)   # moved in before it runs its own code: its children inherit it
        before = group.stat(); ...; after = group.stat()

Nothing here touches a cgroup it did not make: groups are made directly under the hierarchy's root (named
`rtlab-<pid>-<n>`), and on the way out what is still inside (only processes the runner put there, and theirs) is
killed by pid before the group is removed. `root` is where the hierarchies are mounted (/sys/fs/cgroup on every
distribution); tests point it elsewhere. docs/metrics.md says what the limit does to what is measured.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .spec import SpecError
from .supervisor import signals_deferred

DEFAULT_ROOT = Path("/sys/fs/cgroup")
DEFAULT_PERIOD_US = 20_000  # CFS periods of 20 ms: a throttled server waits at most period - quota
MIN_QUOTA_US = 1_000  # the kernel refuses a quota under 1 ms
MIN_PERIOD_US, MAX_PERIOD_US = 1_000, 1_000_000  # the periods the kernel accepts
EMPTY_WAIT_S = 5.0
STAT_FILE = "cgroup.json"  # in a point's folder: the group as applied and its counters at the window's two ends  # how long a group may take to empty once its processes were stopped or killed


class CgroupUnavailable(SpecError):
    """This machine cannot give the server a cgroup with a CPU limit; nothing was started."""


class CgroupError(RuntimeError):
    """Making, limiting or reading a group failed, or it did not read back as asked; the group was removed."""


# The kernel makes a group's files when its directory is made and removes them with it; a test of the v2 writes on a
# plain directory tree replaces these two with ones that do the same.
def make_directory(path: Path) -> None:
    os.mkdir(path)


def remove_directory(path: Path) -> None:
    os.rmdir(path)


@dataclass(frozen=True)
class Hierarchy:
    """Where groups with the cpu controller are made."""

    version: int  # 2: the unified hierarchy; 1: the v1 cpu controller's own
    cpu: Path  # the hierarchy's root directory: groups are made in it
    cpuacct: Path | None = None  # v1: the cpuacct hierarchy that counts a group's CPU time (cpu's own when co-mounted)

    @property
    def directories(self) -> tuple[Path, ...]:
        """Every hierarchy a group is made in: one on v2, cpu (and cpuacct when mounted apart) on v1."""
        if self.cpuacct is None or self.cpuacct == self.cpu:
            return (self.cpu,)
        return (self.cpu, self.cpuacct)


def _read(path: Path) -> str:
    return path.read_text().strip()


def _write(path: Path, value: str) -> None:
    """Write `value` to a control file (a kernel file: opened without creating it in a real hierarchy)."""
    with open(path, "w") as f:
        f.write(value)


def find(root: str | os.PathLike = DEFAULT_ROOT) -> Hierarchy:
    """Return the hierarchy to limit CPU with under `root`: cgroup v2 where it has the cpu controller (`root` itself
    the unified mount, or `root/unified` on a hybrid machine), else the v1 cpu controller (`root/cpu`, which may be
    `cpu,cpuacct` co-mounted). Raise CgroupUnavailable saying why when there is neither."""
    root = Path(root)
    for unified in (root, root / "unified"):
        controllers = unified / "cgroup.controllers"
        with contextlib.suppress(OSError):
            if "cpu" in _read(controllers).split():
                return Hierarchy(2, unified)
    for name in ("cpu", "cpu,cpuacct"):
        cpu = root / name
        if (cpu / "cpu.cfs_quota_us").exists():
            cpu = cpu.resolve()
            cpuacct = next((d.resolve() for d in (cpu, root / "cpuacct", root / "cpu,cpuacct")
                            if (d / "cpuacct.usage").exists()), None)
            return Hierarchy(1, cpu, cpuacct)
    raise CgroupUnavailable(
        f"no cgroup hierarchy with the cpu controller under {root}: neither cgroup v2 with `cpu` in "
        f"cgroup.controllers nor a v1 `cpu` mount with cpu.cfs_quota_us (the kernel needs CONFIG_CFS_BANDWIDTH)")


def quota_us(cpus: float, period_us: int) -> int:
    """The CFS quota that gives `cpus` (a fraction of one CPU, or several) per `period_us`."""
    return round(cpus * period_us)


@dataclass(frozen=True)
class CpuStat:
    """A group's cpu.stat (and on v1 its cpuacct usage) at one moment: counters since the group was made."""

    usage_usec: int | None  # the group's CPU time, every process and thread in it; None: not counted (v1, no cpuacct)
    user_usec: int | None
    system_usec: int | None
    nr_periods: int  # CFS periods in which the group was runnable
    nr_throttled: int  # of those, periods in which it used up its quota and was throttled
    throttled_usec: int  # how long it waited throttled, in all
    t_mono_s: float = field(default_factory=time.monotonic)

    def minus(self, start: CpuStat) -> dict[str, float | None]:
        """What happened between `start` and this reading: each counter's increase, and the wall time."""
        def delta(name: str) -> float | None:
            a, b = getattr(start, name), getattr(self, name)
            return None if a is None or b is None else b - a

        return {**{name: delta(name) for name in ("usage_usec", "user_usec", "system_usec", "nr_periods",
                                                  "nr_throttled", "throttled_usec")},
                "wall_s": self.t_mono_s - start.t_mono_s}

    def as_dict(self) -> dict:
        return asdict(self)


def _keyed(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in text.splitlines() if line.strip())}


@dataclass
class Cgroup:
    """One group made by `limited`: its directories, what it was asked, and what the kernel said it applied."""

    name: str
    hierarchy: Hierarchy
    cpus: float | None  # the limit in CPUs; None: no limit (a group for the accounting alone)
    period_us: int
    applied: dict = field(default_factory=dict)  # read back from the kernel after writing

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(d / self.name for d in self.hierarchy.directories)

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def quota_us(self) -> int | None:
        return None if self.cpus is None else quota_us(self.cpus, self.period_us)

    # ---- made, limited, removed ------------------------------------------------------------------------------------

    def make(self) -> None:
        for path in self.paths:
            if path.exists():  # a run SIGKILLed with this pid left it: nothing of ours is inside any more
                self._empty(path)
                remove_directory(path)
            make_directory(path)
        if self.hierarchy.version == 2:
            self._make_v2()
        else:
            self._make_v1()

    def _make_v2(self) -> None:
        parent = self.hierarchy.cpu
        if not (self.path / "cpu.max").exists():
            # The cpu controller is not enabled for the root's children yet: enable it (the root may have
            # processes of its own; a container's namespace root may refuse, and then the run is refused).
            _write(parent / "cgroup.subtree_control", "+cpu")
        quota = "max" if self.quota_us is None else str(self.quota_us)
        _write(self.path / "cpu.max", f"{quota} {self.period_us}")
        burst = self.path / "cpu.max.burst"
        if burst.exists():
            _write(burst, "0")
        self.applied = {"cpu.max": _read(self.path / "cpu.max"),
                        "cpu.max.burst": _read(burst) if burst.exists() else None}
        want = f"{quota} {self.period_us}"
        if self.applied["cpu.max"] != want:
            raise CgroupError(f"{self.path}/cpu.max reads {self.applied['cpu.max']!r}, not {want!r}")

    def _make_v1(self) -> None:
        path = self.path
        _write(path / "cpu.cfs_period_us", str(self.period_us))
        _write(path / "cpu.cfs_quota_us", "-1" if self.quota_us is None else str(self.quota_us))
        burst = path / "cpu.cfs_burst_us"
        if burst.exists():
            _write(burst, "0")
        self.applied = {name: int(_read(path / name)) for name in ("cpu.cfs_period_us", "cpu.cfs_quota_us")}
        self.applied["cpu.cfs_burst_us"] = int(_read(burst)) if burst.exists() else None
        want = {"cpu.cfs_period_us": self.period_us, "cpu.cfs_quota_us": self.quota_us or -1}
        if any(self.applied[k] != v for k, v in want.items()):
            raise CgroupError(f"{path} reads {self.applied}, not {want}")

    def remove(self) -> None:
        """Wait (bounded) for the group to empty, kill by pid what is still inside, and remove its directories."""
        for path in self.paths:
            if path.exists():
                self._empty(path)
                deadline = time.monotonic() + EMPTY_WAIT_S
                while True:  # an exiting task can keep the group busy for a moment
                    try:
                        remove_directory(path)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.02)

    @staticmethod
    def _empty(path: Path) -> None:
        pids = _pids(path)
        deadline = time.monotonic() + EMPTY_WAIT_S
        while pids and time.monotonic() < deadline:
            for pid in pids:
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
            pids = _pids(path)

    # ---- processes -------------------------------------------------------------------------------------------------

    def enter(self) -> None:
        """Move the calling process into the group: call it in a child between fork and exec (the supervisor's
        preexec), so the program and everything it starts run limited from their first instruction."""
        self.add(os.getpid())

    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into the group, in every hierarchy it was made in."""
        for path in self.paths:
            _write(path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return _pids(self.path)

    # ---- accounting ------------------------------------------------------------------------------------------------

    def stat(self) -> CpuStat:
        """The group's counters now: v2 cpu.stat; v1 cpu.stat (throttling, ns) with cpuacct's usage (ns)."""
        now = time.monotonic()
        cpu = _keyed(_read(self.path / "cpu.stat"))
        if self.hierarchy.version == 2:
            return CpuStat(cpu["usage_usec"], cpu.get("user_usec"), cpu.get("system_usec"), cpu.get("nr_periods", 0),
                           cpu.get("nr_throttled", 0), cpu.get("throttled_usec", 0), now)
        usage = user = system = None
        if self.hierarchy.cpuacct is not None:
            acct = self.hierarchy.cpuacct / self.name
            usage = int(_read(acct / "cpuacct.usage")) // 1000
            if (acct / "cpuacct.usage_user").exists():
                user = int(_read(acct / "cpuacct.usage_user")) // 1000
                system = int(_read(acct / "cpuacct.usage_sys")) // 1000
        return CpuStat(usage, user, system, cpu["nr_periods"], cpu["nr_throttled"], cpu["throttled_time"] // 1000, now)

    def describe(self) -> dict:
        """What the manifest records: the group, its limit as asked and as the kernel applied it."""
        return {"name": self.name, "version": self.hierarchy.version, "cpu_limit": self.cpus,
                "period_us": self.period_us, "quota_us": self.quota_us, "burst_us": 0, "applied": self.applied}


def _pids(path: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(p) for p in _read(path / "cgroup.procs").split()]
    return []


@contextlib.contextmanager
def limited(cpus: float | None, name: str, period_us: int = DEFAULT_PERIOD_US,
            root: str | os.PathLike = DEFAULT_ROOT) -> Iterator[Cgroup]:
    """Make group `name` limited to `cpus` CPUs per `period_us` with no burst (None: no limit, the accounting alone)
    and yield it; however the block is left, kill what is still inside and remove the group.

    Stop the processes started in it before the block ends; what is left is SIGKILLed by pid."""
    group = Cgroup(name, find(root), cpus, period_us)
    try:
        try:
            group.make()
        except OSError as error:
            raise CgroupError(f"{error.filename or group.path}: {error.strerror or error}") from error
        yield group
    finally:
        with signals_deferred():  # a second Ctrl-C must not leave the group behind
            group.remove()


def preflight(root: str | os.PathLike = DEFAULT_ROOT, period_us: int = DEFAULT_PERIOD_US) -> Hierarchy:
    """Make and remove a limited probe group; raise CgroupUnavailable (a SpecError: exit 2) saying why when this
    machine cannot. Call before anything starts."""
    hierarchy = find(root)
    try:
        with limited(MIN_QUOTA_US / period_us, f"rtlab-{os.getpid()}-probe", period_us, root):
            pass
    except (OSError, CgroupError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        cause = error if isinstance(error, OSError) else error.__cause__
        hint = {errno.EACCES: " (run as root, or give this user a cgroup of its own to make groups in)",
                errno.EPERM: " (run as root, or give this user a cgroup of its own to make groups in)",
                errno.EROFS: " (mounted read-only, as a container's is by default: run where it is writable)",
                }.get(getattr(cause, "errno", None), "")
        raise CgroupUnavailable(f"cannot make a cgroup with a CPU limit under {hierarchy.cpu} (cgroup "
                                f"v{hierarchy.version}): {why}{hint}") from None
    return hierarchy
