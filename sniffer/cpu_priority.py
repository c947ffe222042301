"""`SNIFFER_CPU_PRIORITY=low`: the daemon yields the CPU to the gateway it watches.

On a node with few cores the daemon competes with Kong for CPU (bench/gateway_cost.py: at saturation a
daemon at normal priority took 62% of nginx's throughput on 2 vCPUs, at nice 19 + SCHED_BATCH 26-46%).
At low priority the gateway wins; what the daemon then has no time for is dropped by the kernel from the
capture ring and counted (`moesif_sniffer_kernel_drops_total`), and load shedding reacts to it. Applied
once at start, before the capture workers are forked, so they inherit it.
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOW_NICE", "apply_cpu_priority"]

log = logging.getLogger(__name__)

LOW_NICE = 19


def apply_cpu_priority(priority: str) -> None:
    """"normal": leave the process as it is; "low": nice 19 and SCHED_BATCH (never fatal: logged)."""
    if priority != "low":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, LOW_NICE)
        # SCHED_BATCH: the scheduler treats us as CPU-bound and does not let our wake-ups preempt the
        # gateway's threads; the nice value still orders us among SCHED_OTHER/BATCH tasks.
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except OSError as exc:
        log.warning("SNIFFER_CPU_PRIORITY=low: could not lower the priority: %s", exc.strerror)
        return
    log.info("running at low CPU priority (nice %d, SCHED_BATCH)", LOW_NICE)
