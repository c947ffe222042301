"""`apply_cpu_priority`: "low" really lowers the process's nice value and scheduling class, "idle" puts
it in SCHED_IDLE, "normal" leaves them alone; and the daemon run with SNIFFER_CPU_PRIORITY=idle has
every process (main and forked capture workers) in SCHED_IDLE and still turns every call into its
event. The probes run in child processes: a priority once lowered cannot be raised back without
privileges, and the test process must keep its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_daemon import curl, http_server, running_daemon

PROBE = """
import os, sys
from sniffer.cpu_priority import apply_cpu_priority
apply_cpu_priority(sys.argv[1])
print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
"""


def _after(priority: str) -> tuple[int, int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, priority], capture_output=True, text=True, check=True, timeout=30
    )
    nice, policy = done.stdout.split()
    return int(nice), int(policy)


def test_low_is_nice_19_and_sched_batch() -> None:
    assert _after("low") == (19, os.SCHED_BATCH)


def test_idle_is_sched_idle_and_keeps_the_nice_value() -> None:
    assert _after("idle") == (os.getpriority(os.PRIO_PROCESS, 0), os.SCHED_IDLE)


def test_normal_changes_nothing() -> None:
    assert _after("normal") == (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))


@pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (CAP_NET_RAW)")
@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_idle_cpu_priority_reaches_every_process_and_keeps_every_call(tmp_path: Path) -> None:
    with (
        http_server() as port,
        running_daemon(tmp_path, port, SNIFFER_WORKERS="2", SNIFFER_CPU_PRIORITY="idle") as d,
    ):
        pids = [d.proc.pid]
        children = subprocess.run(["pgrep", "-P", str(pids[0])], capture_output=True, text=True).stdout
        pids += [int(p) for p in children.split()]
        policies = {p: os.sched_getscheduler(p) for p in pids}
        n = 20
        for i in range(n):
            curl(f"http://127.0.0.1:{port}/idle/{i}")
        deadline = time.monotonic() + 10
        while f"moesif_sniffer_exchanges_total {float(n)}" not in (metrics := d.get("/metrics")[1]):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert d.stop() == 0
        events = d.events()
        log_text = d.err.read_text()
    assert len(pids) == 3
    assert set(policies.values()) == {os.SCHED_IDLE}, policies
    assert sorted(e["request"]["uri"] for e in events) == sorted(
        f"http://127.0.0.1:{port}/idle/{i}" for i in range(n)
    )
    assert "running at idle CPU priority" in log_text, log_text
