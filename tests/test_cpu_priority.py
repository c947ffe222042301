"""`apply_cpu_priority`: "low" really lowers the process's nice value and scheduling class; "normal"
leaves them alone. Run in child processes: a priority once lowered cannot be raised back without
privileges, and the test process must keep its own."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_normal_changes_nothing() -> None:
    assert _after("normal") == (os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))
