"""`SNIFFER_CPU_PRIORITY=low|idle`: the daemon yields the CPU to the gateway it watches.

On a node with few cores the daemon competes with Kong for CPU (bench/gateway_cost.py: at saturation a
daemon at normal priority took 62% of nginx's throughput on 2 vCPUs, at nice 19 + SCHED_BATCH 26-46%).
"low" is nice 19 + SCHED_BATCH: the smallest share the fair scheduler gives, but still a share. "idle"
is SCHED_IDLE: the daemon runs only on CPU no other task wants, so the gateway loses (almost) nothing
and the daemon misses whatever it had no CPU for. Either way what is missed is dropped by the kernel
from the capture ring and counted (`moesif_sniffer_kernel_drops_total`), and load shedding reacts to
it. Applied once at start, before the capture workers are forked, so they inherit it.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOW_NICE", "PRIORITIES", "apply_cpu_priority"]

log = logging.getLogger(__name__)

LOW_NICE = 19
PRIORITIES = ("normal", "low", "idle")


def apply_cpu_priority(priority: str) -> None:
    """Priority "normal": leave the process as it is; "low": nice 19 and SCHED_BATCH; "idle": SCHED_IDLE.
    Never fatal: a failure is logged and the daemon runs at the priority it has."""
    if priority not in ("low", "idle"):
        return
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
