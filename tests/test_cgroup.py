"""The cgroup limits the daemon reads (sniffer/cgroup.py): memory for the budgets, CPU for "auto" workers.

Each reader is checked on crafted cgroup trees (v2 and v1, a container's view), and the CPU one also in a
real cgroup made here (root), where a child process sees its quota.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sniffer.cgroup import cgroup_cpu_limit, cgroup_memory_limit
from sniffer.config import Config

ROOT = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _cgroup_tree(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[str, str]:
    (tmp_path / "proc").write_text(proc)
    for rel, text in files.items():
        f = tmp_path / "fs" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text + "\n")
    return str(tmp_path / "proc"), str(tmp_path / "fs")


@pytest.mark.parametrize(
    ("read", "name", "values", "expected"),
    [
        (cgroup_memory_limit, "memory.max", ("max", "536870912", "max"), 512 * MiB),
        (cgroup_cpu_limit, "cpu.max", ("400000 100000", "150000 100000", "max 100000"), 1.5),
    ],
)
def test_cgroup_v2_takes_the_tightest_ancestor(
    tmp_path: Path, read: Callable[[str, str], Any], name: str, values: tuple[str, ...], expected: float
) -> None:
    dirs = ("kubepods", "kubepods/pod1", "kubepods/pod1/ctr")
    proc, root = _cgroup_tree(
        tmp_path, "0::/kubepods/pod1/ctr\n", {f"{d}/{name}": v for d, v in zip(dirs, values, strict=True)}
    )
    assert read(proc, root) == (expected, f"{root}/kubepods/pod1/{name}")


def test_cgroup_v1_in_a_container_reads_the_namespace_root(tmp_path: Path) -> None:
    # /proc/self/cgroup names the host path; inside the container only the mount's root exists.
    proc, root = _cgroup_tree(
        tmp_path,
        "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        {"memory/memory.limit_in_bytes": "268435456"},
    )
    assert cgroup_memory_limit(proc, root) == (256 * MiB, f"{root}/memory/memory.limit_in_bytes")


def test_no_cgroup_limit_is_none(tmp_path: Path) -> None:
    proc, root = _cgroup_tree(
        tmp_path,
        "4:memory:/\n0::/\n",
        {"memory/memory.limit_in_bytes": "9223372036854771712", "memory.max": "max"},
    )
    assert cgroup_memory_limit(proc, root) is None
    assert cgroup_memory_limit(str(tmp_path / "missing"), root) is None


def test_cgroup_v1_cpu_quota_over_period(tmp_path: Path) -> None:
    proc, root = _cgroup_tree(
        tmp_path,
        "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n",
        {"cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(proc, root) == (0.5, f"{root}/cpu/cpu.cfs_quota_us")


def test_no_cgroup_cpu_limit_is_none(tmp_path: Path) -> None:
    proc, root = _cgroup_tree(
        tmp_path,
        "12:cpu,cpuacct:/\n0::/\n",
        {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000", "cpu.max": "max 100000"},
    )
    assert cgroup_cpu_limit(proc, root) is None
    assert cgroup_cpu_limit(str(tmp_path / "missing"), root) is None


@pytest.mark.parametrize(
    ("workers", "cores", "limit", "expected"),
    [
        (None, 8, None, 4),  # one per core, at most MAX_AUTO_WORKERS
        (None, 2, None, 2),
        (None, 8, 2.0, 2),  # a 2-CPU pod on an 8-core node
        (None, 8, 2.5, 2),  # whole CPUs only
        (None, 8, 0.5, 1),  # at least one
        (3, 8, 1.0, 3),  # SNIFFER_WORKERS as given
    ],
)
def test_auto_workers_stay_within_the_cpu_limit(
    monkeypatch: pytest.MonkeyPatch, workers: int | None, cores: int, limit: float | None, expected: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    found = None if limit is None else (limit, "cpu.max")
    assert Config(workers=workers).worker_count(lambda: found) == expected


def _real_cpu_cgroup() -> Path | None:
    """Where a CPU-limited cgroup can be made here: v1's cpu hierarchy, or v2 with the cpu controller."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1
    v2 = Path("/sys/fs/cgroup")
    controllers = v2 / "cgroup.subtree_control"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return v2
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (makes a cgroup)")
@pytest.mark.skipif(_real_cpu_cgroup() is None, reason="no writable cgroup with the cpu controller")
def test_a_process_in_a_cpu_limited_cgroup_sees_its_quota() -> None:
    base = _real_cpu_cgroup()
    assert base is not None
    group = base / f"moesif-sniffer-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if (group / "cpu.max").exists():
            (group / "cpu.max").write_text("150000 100000\n")
        else:
            (group / "cpu.cfs_period_us").write_text("100000\n")
            (group / "cpu.cfs_quota_us").write_text("150000\n")
        procs = group / "cgroup.procs"
        code = (
            "import os; from sniffer.cgroup import cgroup_cpu_limit; from sniffer.config import Config; "
            "print(cgroup_cpu_limit()[0], len(os.sched_getaffinity(0)), Config().worker_count())"
        )

        def enter() -> None:
            procs.write_text(f"{os.getpid()}\n")

        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            preexec_fn=enter,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        limit, cores, workers = out.stdout.split()
        assert float(limit) == 1.5
        assert int(workers) == 1  # whatever the cores: one whole CPU
        assert int(cores) >= 1
    finally:
        group.rmdir()
