"""The cyclic garbage collector's settings for the long-running commands (`run`, `replay`).

What the daemon holds is mostly long-lived and acyclic: flows and their parsers, pending Kong legs, memo
tables. CPython's default thresholds (700, 10, 10) start a young collection every 700 new container
objects and walk older generations every 7,000 and 70,000; with tens of thousands of open connections
(a gateway's keep-alive clients) those walks cost more than the packets. Measured live on Kong traffic
(`bench/live.py --traffic kong` frames, 1M at a fixed rate, ~50,000 connections left open, 2 vCPUs),
kernel drops of 1M frames with the defaults, then with `THRESHOLDS` (runs alternated; this VM's speed
varies by tens of percent from run to run): one worker at 60k frames/s 107,678 and 262,644, then 64,659
and 102,959; two workers at 50k 46,495 and 52,899, then 28,446, 0, 0 and 142,139. In a two-worker main
process py-spy had put 16 % of the time on the line after a batch was decoded (with the collector
paused), where the deferred collections ran.

The heap built at start-up (modules, configuration) is frozen out of every collection, which also
spares forked capture workers copying the pages a collection would touch. Cyclic garbage is still
collected, but late: what survives a young collection waits for a full one, which these thresholds make
rare. So the per-connection objects must be freed by reference counting alone: a closed parser unlinks
its readers (a flood of evicted connections held 305 MB instead of 122 before it did;
tests/test_http_connection.py checks that a closed connection leaves no cycle).
"""

from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "tune_collector"]

THRESHOLDS = (50_000, 20, 100)


def tune_collector() -> None:
    """Freeze what exists now and raise the thresholds (call once the command's modules are loaded)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
