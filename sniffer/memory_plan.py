"""One memory limit -> budgets whose sum fits in it.

The daemon's memory is what does not scale (one interpreter per process, a capture ring of
SNIFFER_RING_MB per worker and interface) plus its budgets: TCP flows, out-of-order bytes, HTTP bytes,
Kong legs awaiting their partner, the sender's queue. Each budget has its own setting, and their
defaults add up to about 1 GiB: more than the DaemonSet's 512 MiB, so under adversarial traffic (a flood
of connections, lost upstream legs, a Moesif outage, all at once) the kernel would kill the pod before
the budgets bit.

With a limit (SNIFFER_MEMORY_LIMIT, or else the cgroup limit of the container), every budget the user did
not set gets a share of what the limit leaves after the fixed costs and a headroom, and never more than
its default. A budget set explicitly is kept as given, and what it may hold is taken off first.
`bench/memory_flood.py` runs a capture that hits every budget at once inside a real cgroup limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from sniffer.cgroup import cgroup_memory_limit
from sniffer.config import Config, split_interfaces
from sniffer.errors import ConfigError

__all__ = ["NO_LIMIT", "MemoryPlan", "fit_config", "flow_bytes", "plan_budgets", "ring_bytes"]

MiB = 1 << 20
# Idle processes, measured (PSS, `moesif-sniffer run`, 2026-12-07): one worker 55 MiB; two workers
# 22 MiB for the main process and 28 MiB each. Plus each worker's rings (`ring_bytes`), which fill
# under load.
MAIN_PROCESS_BYTES = 32 * MiB
WORKER_BYTES = 24 * MiB
# Left free: allocator fragmentation, batches being gzip'd and sent, the garbage of a busy second.
HEADROOM = 0.15
# What one tracked flow costs beyond the bytes the buffer budgets count, measured on Kong traffic (its
# parser, both directions' state, the two lookup keys, and its share of the tombstones closed flows leave,
# up to two per flow of the cap): 4,000 more idle keep-alive connections, 20 MB more RSS.
FLOW_BYTES = 5 * 1024
# A pending Kong leg beyond its bodies, which the byte cap counts: its exchange (heads, parsed headers,
# ~4.0 KB) and the joiner's leg with its header lists and index entries (~2.6 KB), measured with
# tracemalloc on the bundled Kong demo's client legs (10-15 headers a side).
LEG_BYTES = 6656
# The balanced fanout's map (several workers, SNIFFER_FANOUT=balanced) holds two entries per flow of
# SNIFFER_MAX_FLOWS, allocated up front in the kernel and charged to the cgroup: 11,535,232 bytes for
# 131,072 entries (bpftool's memlock), 88 bytes each.
FANOUT_ENTRY_BYTES = 88
# The smallest budgets worth running with: below this the daemon would drop most of the traffic.
MIN_USABLE_BYTES = 32 * MiB

# What running without a limit means, as the daemon logs it and doctor shows it.
NO_LIMIT = "every budget keeps its default (about 1 GiB when all are full)"

# Shares of what is usable, per budget. Flows and the queue come first: a flow lost is every call on it,
# and the queue is what carries a collector outage. Out-of-order and HTTP bytes are only held across a few
# packets; the Kong legs' share is half their count, half their bodies.
SHARES = {
    "max_flows": 0.35,
    "max_buffer_bytes": 0.15,
    "max_http_buffer_bytes": 0.15,
    "max_pending_legs": 0.075,
    "max_pending_leg_bytes": 0.075,
    "event_queue_bytes": 0.20,
}


@dataclass(frozen=True)
class MemoryPlan:
    limit: int
    source: str  # "SNIFFER_MEMORY_LIMIT" or the cgroup file it came from
    workers: int
    budgets: dict[str, int]  # option name -> planned value (explicitly set options not included)
    kept: tuple[str, ...]  # budget options the user set, kept as given

    def describe(self) -> str:
        parts = [f"memory plan: limit {self.limit / MiB:,.0f} MiB ({self.source}), {self.workers} worker(s):"]
        parts += [f"{name}={value}" for name, value in self.budgets.items()]
        if self.kept:
            parts.append("kept as set: " + ",".join(self.kept))
        return " ".join(parts)


def plan_budgets(
    limit: int,
    workers: int,
    config: Config,
    *,
    given: frozenset[str] = frozenset(),
    source: str = "SNIFFER_MEMORY_LIMIT",
) -> MemoryPlan:
    """The budgets for `limit` bytes and `workers` capture processes.

    The budgets in `given` keep `config`'s values, and what they may hold is taken off first; the others
    share the rest by SHARES, none above its default. Without an application id there is no queue (events
    are written as JSON lines): its share goes to the others. With SNIFFER_TLS=uprobe each flow counts
    twice: the TLS plaintext connections are tracked up to SNIFFER_MAX_FLOWS of their own."""
    fixed = MAIN_PROCESS_BYTES + workers * (WORKER_BYTES + ring_bytes(config))
    usable = int(limit * (1 - HEADROOM)) - fixed
    unit = {name: 1 for name in SHARES}
    unit["max_flows"] = flow_bytes(config, workers)
    unit["max_pending_legs"] = LEG_BYTES
    shares = dict(SHARES)
    if not config.application_id:
        del shares["event_queue_bytes"]
    kept = tuple(name for name in shares if name in given)
    rest = usable - sum(getattr(config, name) * unit[name] for name in kept)
    if rest < MIN_USABLE_BYTES:
        need = (fixed + usable - rest + MIN_USABLE_BYTES) / (1 - HEADROOM)
        what = f"{workers} capture worker(s)" + (
            " and the budgets set (" + ",".join(kept) + ")" if kept else ""
        )
        raise ConfigError(
            f"{source}: {limit / MiB:,.0f} MiB is too little for {what}: at least {need / MiB:,.0f} MiB"
            " (or fewer SNIFFER_WORKERS)"
        )
    defaults = Config()
    weight = sum(part for name, part in shares.items() if name not in given)
    budgets = {
        name: min(
            getattr(defaults, name) or defaults.max_buffer_bytes, int(rest * part / weight) // unit[name]
        )
        for name, part in shares.items()
        if name not in given
    }
    return MemoryPlan(limit, source, workers, budgets, kept)


def flow_bytes(config: Config, workers: int) -> int:
    """What one flow of SNIFFER_MAX_FLOWS may cost: a flow's state (twice with TLS capture, which tracks
    as many plaintext connections), and its two entries in the balanced fanout's map."""
    fanout = 2 * FANOUT_ENTRY_BYTES if workers > 1 and config.fanout == "balanced" else 0
    return FLOW_BYTES * (2 if config.tls == "uprobe" else 1) + fanout


def ring_bytes(config: Config) -> int:
    """The capture rings of one worker: SNIFFER_RING_MB for each interface it captures on (`any` is one
    socket for all)."""
    names = split_interfaces(config.interface)
    return (1 if names is None else len(names)) * config.ring_mb * MiB


def fit_config(
    config: Config,
    given: frozenset[str],
    workers: int,
    detect: Callable[[], tuple[int, str] | None] | None = None,
) -> tuple[Config, MemoryPlan | None]:
    """`config` with its unset budgets sized for SNIFFER_MEMORY_LIMIT, else for the cgroup limit
    (`detect`, default `cgroup_memory_limit`); unchanged (and no plan) when there is no limit."""
    if config.memory_limit == 0:
        return config, None
    if config.memory_limit is not None:
        limit, source = config.memory_limit, "SNIFFER_MEMORY_LIMIT"
    else:
        found = (detect or cgroup_memory_limit)()
        if found is None:
            return config, None
        limit, source = found
    plan = plan_budgets(limit, workers, config, given=given, source=source)
    return replace(config, **plan.budgets), plan
