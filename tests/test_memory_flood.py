"""Every budget hit at once inside a real cgroup memory limit (bench/memory_flood.py, smaller): with the
budgets at their defaults the kernel kills the process; sized by the memory plan, it finishes under it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory_flood import cgroup_unavailable, make_capture, run_once  # noqa: E402

pytestmark = pytest.mark.skipif(cgroup_unavailable() is not None, reason=str(cgroup_unavailable()))

LIMIT = 160 << 20


def test_a_flood_kills_the_default_budgets_and_the_planned_ones_survive(tmp_path: Path) -> None:
    capture = tmp_path / "flood.pcap"
    make_capture(capture, flows=40_000, legs=5_000, holes=1_000)
    defaults = run_once(capture, LIMIT, "off")
    assert defaults["status"] == -9, defaults  # SIGKILL from the cgroup's OOM killer
    planned = run_once(capture, LIMIT, None)
    assert planned["status"] == 0, planned
    assert planned["peak_rss_mb"] < LIMIT / 1e6
    summary = "\n".join(planned["summary"])
    assert "memory plan: limit 160 MiB (/sys/fs/cgroup/" in summary
    for counter in (
        "evict_flows=",
        "cap_http_buffer_",
        "cap_buffer=",
        "evict_leg_client=",
        "dropped_queue_full=",
    ):
        assert counter in summary  # every budget was hit, and said so
    assert os.path.getsize(capture) > 100e6
