"""`SNIFFER_CPU_PRIORITY=low|idle`: the daemon yields the CPU to the gateway it watches.

On a node with few cores the daemon competes with Kong for CPU (bench/gateway_cost.py: at saturation a
daemon at normal priority took 62% of nginx's throughput on 2 vCPUs, at nice 19 + SCHED_BATCH 26-46%).
"low" is nice 19 + SCHED_BATCH: the smallest share the fair scheduler gives, but still a share. "idle"
is SCHED_IDLE: the daemon runs only on CPU no other task wants, so the gateway loses (almost) nothing
and the daemon misses whatever it had no CPU for. Either way what is missed is dropped by the kernel
from the capture ring and counted (`moesif_sniffer_kernel_drops_total`), and load shedding reacts to
it. Applied once at start, before the capture workers are forked, so they inherit it.

Stopping needs the CPU too (drain the rings, finish the exchanges, send the last events), and on a busy
node a daemon left at idle priority got it only in scraps: with two busy loops on 2 vCPUs SIGTERM took
3.6-5.1 s to exit instead of 0.5 s, and a pod can be killed before its last batch goes out. So on stop
`restore_normal_priority` puts every thread back to SCHED_OTHER at the nice value it started with.
Leaving SCHED_IDLE, or lowering the nice value, takes CAP_SYS_NICE or an RLIMIT_NICE that allows that
value (sched(7)), and the daemon drops its capabilities after start-up: so while still privileged,
`apply_cpu_priority` raises RLIMIT_NICE to allow exactly the starting value (limits outlive the privilege
drop). That needs CAP_SYS_RESOURCE at start (a privileged container, root on the host) or a runtime
that set the limit (`docker run --ulimit nice=20`); without either the daemon says so at start and stops
at the lowered priority, as before. The capability is dropped with the others after start-up.
"""

from __future__ import annotations

import logging
import os
import resource
from collections.abc import Iterable

__all__ = ["LOW_NICE", "PRIORITIES", "apply_cpu_priority", "restore_normal_priority"]

log = logging.getLogger(__name__)

LOW_NICE = 19
PRIORITIES = ("normal", "low", "idle")
# The nice value the process had before `apply_cpu_priority` lowered it: what stopping goes back to.
_started_nice = 0


def apply_cpu_priority(priority: str) -> None:
    """Priority "normal": leave the process as it is; "low": nice 19 and SCHED_BATCH; "idle": SCHED_IDLE.
    Never fatal: a failure is logged and the daemon runs at the priority it has."""
    if priority not in ("low", "idle"):
        return
    global _started_nice
    _started_nice = os.getpriority(os.PRIO_PROCESS, 0)
    way_back = _allow_way_back(_started_nice)
    try:
        if priority == "low":
            os.setpriority(os.PRIO_PROCESS, 0, LOW_NICE)
            # SCHED_BATCH: the scheduler treats us as CPU-bound and does not let our wake-ups preempt
            # the gateway's threads; the nice value still orders us among SCHED_OTHER/BATCH tasks.
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        else:
            # SCHED_IDLE: below nice 19; any runnable normal task (the gateway, its load) goes first.
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        log.warning("SNIFFER_CPU_PRIORITY=%s: could not lower the priority: %s", priority, exc.strerror)
        return
    if priority == "low":
        log.info("running at low CPU priority (nice %d, SCHED_BATCH)", LOW_NICE)
    else:
        log.info("running at idle CPU priority (SCHED_IDLE: only CPU time no other task wants)")
    if not way_back:
        log.info(
            "once unprivileged, stopping will also wait for spare CPU: RLIMIT_NICE cannot be raised to "
            "allow nice %d again (grant CAP_SYS_RESOURCE, or run with --ulimit nice=%d)",
            _started_nice, 20 - _started_nice,
        )  # fmt: skip


def _allow_way_back(nice: int) -> bool:
    """Raise RLIMIT_NICE so that this process, once unprivileged, may go back to `nice` on stop (a limit
    L allows nice values down to 20 - L, setrlimit(2); raising the hard limit needs CAP_SYS_RESOURCE);
    False when it cannot."""
    want = 20 - nice
    soft, hard = resource.getrlimit(resource.RLIMIT_NICE)
    if soft >= want:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (want, max(hard, want)))
    except (OSError, ValueError):
        return False
    return True


def restore_normal_priority(pids: Iterable[int]) -> int:
    """On stop, after `apply_cpu_priority` lowered it: every thread of the processes `pids` back to
    SCHED_OTHER at the nice value the daemon started with, so it stops promptly on a busy node.
    Returns the threads that could not be restored (0: all were; the daemon then stops at the lowered
    priority, slower, as it did before)."""
    failed = 0
    for pid in pids:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue  # the process has exited
        for tid in tids:
            try:
                # With a pid, both calls act on that one thread (Linux): each thread has its own policy.
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, _started_nice)
            except ProcessLookupError:
                pass  # the thread has exited
            except OSError:
                failed += 1
    return failed
