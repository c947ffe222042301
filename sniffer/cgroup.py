"""The limits of the cgroup this process runs in (a container's, a pod's): memory and CPU.

The memory limit sizes the budgets (`sniffer.memory_plan`); the CPU limit caps how many capture workers
"auto" starts (`Config.worker_count`): a pod limited to 2 CPUs on a 32-core node sees 32 cores in its
affinity mask, and five busy processes sharing a 2-CPU quota are throttled in turns (whole CFS periods
without CPU, while the rings fill and overflow).

cgroup v2 (`memory.max`, `cpu.max`) or v1 (`memory/memory.limit_in_bytes`, `cpu/cpu.cfs_quota_us` over
`cpu.cfs_period_us`). The limit is the tightest of the process's cgroup and its ancestors. In a container
the cgroup namespace makes the mount's root the container's own cgroup, while /proc/self/cgroup may
still name the host path: every existing directory on the way is read.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

__all__ = ["cgroup_cpu_limit", "cgroup_memory_limit"]

_N = TypeVar("_N", int, float)

# A cgroup v1 "no limit" is the largest page-aligned 64-bit value; anything this large means none.
_UNLIMITED_FROM = 1 << 60


def _directories(proc_cgroup: str, root: str, controller: str) -> list[Path]:
    """The cgroup directories to read for `controller`, the process's own first, then its ancestors up
    to the mount's root: v2's unified hierarchy, and v1's hierarchy of that controller."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    found: list[Path] = []
    for line in lines:
        hier, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hier == "0" and controllers == "":
            base = Path(root)
        elif controller in controllers.split(","):
            base = Path(root) / controller  # v1 mounts "cpu,cpuacct" with a "cpu" link to it
        else:
            continue
        parts = [p for p in path.split("/") if p]
        found.extend(base.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1))
    return found


def _read(file: Path) -> str | None:
    try:
        return file.read_text().strip()
    except OSError:
        return None


def cgroup_memory_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> tuple[int, str] | None:
    """(limit in bytes, file it came from), the tightest; None when there is none."""
    return _tightest(_memory_max(d) for d in _directories(proc_cgroup, root, "memory"))


def cgroup_cpu_limit(
    proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup"
) -> tuple[float, str] | None:
    """(CPUs the quota allows per period, file it came from), the tightest; None when there is none."""
    return _tightest(_cpu_max(d / "cpu.max") or _cfs_quota(d) for d in _directories(proc_cgroup, root, "cpu"))


def _tightest(limits: Iterable[tuple[_N, str] | None]) -> tuple[_N, str] | None:
    best: tuple[_N, str] | None = None
    for limit in limits:
        if limit is not None and (best is None or limit[0] < best[0]):
            best = limit
    return best


def _memory_max(d: Path) -> tuple[int, str] | None:
    """v2: memory.max ("max": none); v1: memory.limit_in_bytes (a huge value: none)."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        text = _read(d / name)
        if text is not None and text.isdigit() and int(text) < _UNLIMITED_FROM:
            return int(text), str(d / name)
    return None


def _cpu_max(file: Path) -> tuple[float, str] | None:
    """v2: "$QUOTA $PERIOD" in microseconds, or "max $PERIOD"."""
    text = _read(file)
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    if not (quota.isdigit() and period.isdigit() and int(period) > 0):
        return None
    return int(quota) / int(period), str(file)


def _cfs_quota(d: Path) -> tuple[float, str] | None:
    """v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us."""
    quota, period = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
    if quota is None or period is None or not (quota.isdigit() and period.isdigit() and int(period) > 0):
        return None
    return int(quota) / int(period), str(d / "cpu.cfs_quota_us")
