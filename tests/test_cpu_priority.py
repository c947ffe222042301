"""`apply_cpu_priority`: "low" really lowers the process's nice value and scheduling class, "idle" puts
it in SCHED_IDLE, "normal" leaves them alone; and the daemon run with SNIFFER_CPU_PRIORITY=idle has
every process (main and forked capture workers) in SCHED_IDLE and still turns every call into its
event. The probes run in child processes: a priority once lowered cannot be raised back without
privileges, and the test process must keep its own."""

from __future__ import annotations

import ast
import os
import re
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
    # Stopping went back to normal priority where the daemon could raise its RLIMIT_NICE at start (it
    # then dropped the capability with the others); where not, it says so at start and at stop.
    if _can_raise_rlimits():
        assert "stopping at normal CPU priority" in log_text, log_text
    else:
        assert "once unprivileged, stopping will also wait for spare CPU" in log_text, log_text
        assert re.search(r"stopping at idle CPU priority: \d+ threads could not be raised back", log_text)


CAP_SYS_RESOURCE = 24


def _can_raise_rlimits() -> bool:
    """Root with CAP_SYS_RESOURCE (absent on some VMs and containers: then limits only go down)."""
    status = Path("/proc/self/status").read_text()
    eff = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    return bool(eff >> CAP_SYS_RESOURCE & 1)


STOP_PROBE = """
import os, sys, threading, time
from sniffer import cpu_priority
from sniffer.privileges import drop_privileges
if sys.argv[2] == "no-rlimit":
    cpu_priority._allow_way_back = lambda nice: False
cpu_priority.apply_cpu_priority(sys.argv[1])
threading.Thread(target=time.sleep, args=(5,), daemon=True).start()  # inherits the lowered priority
if sys.argv[3] == "drop":
    drop_privileges("nobody")
failed = cpu_priority.restore_normal_priority([os.getpid()])
tids = sorted(int(t) for t in os.listdir("/proc/self/task"))
print(failed, os.getuid(), [(os.sched_getscheduler(t), os.getpriority(os.PRIO_PROCESS, t)) for t in tids])
"""


def _stop_probe(priority: str, rlimit: str, drop: str) -> tuple[int, int, list[tuple[int, int]]]:
    done = subprocess.run(
        [sys.executable, "-c", STOP_PROBE, priority, rlimit, drop],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    failed, uid, threads = done.stdout.split(" ", 2)
    return int(failed), int(uid), ast.literal_eval(threads)


STARTING = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
# Where the way back is refused: from "low" SCHED_OTHER is allowed (like SCHED_BATCH), nice 0 is not.
REFUSED = {"low": (os.SCHED_OTHER, 19), "idle": (os.SCHED_IDLE, STARTING[1])}


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority back needs root (CAP_SYS_NICE)")
@pytest.mark.parametrize("priority", ["low", "idle"])
def test_stop_returns_every_thread_to_the_starting_priority(priority: str) -> None:
    """Privileged (as with SNIFFER_TLS=uprobe, which keeps its privileges): every thread goes back."""
    failed, uid, threads = _stop_probe(priority, "no-rlimit", "keep")
    assert (failed, uid, threads) == (0, 0, [STARTING, STARTING])


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs root")
@pytest.mark.parametrize("priority", ["low", "idle"])
def test_after_the_privilege_drop_the_way_back_is_the_rlimit_raised_at_start(priority: str) -> None:
    """Unprivileged by the time it stops, the daemon goes back only by the RLIMIT_NICE it raised while
    root; without it the kernel refuses, each thread counted, and the threads stay lowered."""
    failed, uid, threads = _stop_probe(priority, "no-rlimit", "drop")
    assert uid != 0 and failed == 2 and threads == [REFUSED[priority]] * 2
    if not _can_raise_rlimits():
        pytest.skip("this machine's root lacks CAP_SYS_RESOURCE: RLIMIT_NICE cannot be raised here")
    failed, uid, threads = _stop_probe(priority, "rlimit", "drop")
    assert (failed, threads) == (0, [STARTING, STARTING]) and uid != 0
