"""Load shedding under CPU pressure: a pure, clock-free level policy and the capture-side flow sampler.

`ShedPolicy` is fed one `Pressure` measurement per daemon tick (about a second) and answers the level to
run at. Levels are data (`LEVELS`): 0 normal; 1 bodies are not captured (events keep their metadata and
say `metadata.capture.body_shed`); 2.. new flows are sampled 1 in 2, 4, 8, 16. Hysteresis: one step up
after `rise_after` pressured ticks in a row, one step down after `calm_after` calm ticks in a row;
anything in between holds the level (so the level does not flap around a threshold).

Pressure is any of: the capture ring's backlog (blocks the kernel released that the walk left for
later, as a fraction of the ring) at or above `high`; kernel drops (the ring was full); the sender's
queue at or above `high` of its size. Calm is all of: backlog at most `low`, no kernel drops, queue at
most `low`.

`FlowSampler` wraps the frame handler of a capture loop. A new flow (a SYN without ACK) seen while the
rate is 1 in N > 1 is kept when a hash of its endpoints falls in 1/N of the space, and the decision is
remembered for the flow's life (both directions hash the same: the endpoints are sorted), so a flow is
never cut in the middle by a change of rate; flows that started before sampling are always kept.
Kept flows' weights (N) are recorded by (client, server) endpoints so that their events carry
`weight` N and Moesif's counts stay right. Decisions expire after the idle timeout and are capped in
number (oldest first), so the sampler's memory is bounded.

Kong: both legs of a call must be kept or neither, yet they are two flows. Kong's connections to its
services (from an address seen serving a Kong proxy port, or to a configured upstream port) are never
sampled: they carry every call, so each call whose client connection was sampled out still comes out,
from its upstream leg alone, and the engine weighs a call by its upstream leg's flow (1), so nothing
is counted twice. What shedding saves on a Kong node is the client legs' work. Kong's addresses are
learnt from SYNs to its proxy ports while sampling and, as sampling begins, from the live flows on them
(`set_rate`): clients keep their connections open, so the first SYN may come long after Kong's first
new connection to a service.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

from reassembly.events import Endpoint
from reassembly.pipeline import Pipeline
from reassembly.stats import Stats
from sniffer.config import Config
from sniffer.kong.classify import MAX_KONG_HOSTS

__all__ = ["LEVELS", "FlowSampler", "Pressure", "ShedLevel", "ShedPolicy"]

Handler = Callable[[float, int, bytes, int], object]
FlowKey = tuple[Endpoint, Endpoint]


@dataclass(frozen=True, slots=True)
class ShedLevel:
    name: str
    bodies: bool  # capture bodies
    sample: int  # keep 1 new flow in `sample`


LEVELS: tuple[ShedLevel, ...] = (
    ShedLevel("normal", True, 1),
    ShedLevel("bodies_shed", False, 1),
    ShedLevel("sample_1_in_2", False, 2),
    ShedLevel("sample_1_in_4", False, 4),
    ShedLevel("sample_1_in_8", False, 8),
    ShedLevel("sample_1_in_16", False, 16),
)


@dataclass(frozen=True, slots=True)
class Pressure:
    """One tick's measurements."""

    ring_backlog: float = 0.0  # largest fraction of a ring left unwalked after a walk, this tick
    kernel_drops: int = 0  # packets the kernel dropped since the last tick
    queue_fill: float = 0.0  # sender queue depth / its size


class ShedPolicy:
    """Level state machine with hysteresis; `observe` returns the new level index when it changed."""

    def __init__(
        self,
        levels: tuple[ShedLevel, ...] = LEVELS,
        *,
        enabled: bool = True,
        high: float = 0.5,
        low: float = 0.125,
        rise_after: int = 1,
        calm_after: int = 10,
    ) -> None:
        self.levels = levels
        self.enabled = enabled
        self.high = high
        self.low = low
        self.rise_after = rise_after
        self.calm_after = calm_after
        self.index = 0
        self.changes = 0
        self._hot = 0
        self._calm = 0

    @property
    def level(self) -> ShedLevel:
        return self.levels[self.index]

    def pressured(self, p: Pressure) -> bool:
        return p.kernel_drops > 0 or p.ring_backlog >= self.high or p.queue_fill >= self.high

    def calm(self, p: Pressure) -> bool:
        return p.kernel_drops == 0 and p.ring_backlog <= self.low and p.queue_fill <= self.low

    def observe(self, p: Pressure) -> int | None:
        if not self.enabled:
            return None
        if self.pressured(p):
            self._calm = 0
            self._hot += 1
            if self._hot >= self.rise_after and self.index < len(self.levels) - 1:
                self._hot = 0
                return self._set(self.index + 1)
        elif self.calm(p):
            self._hot = 0
            self._calm += 1
            if self._calm >= self.calm_after and self.index > 0:
                self._calm = 0
                return self._set(self.index - 1)
        else:
            self._hot = self._calm = 0
        return None

    def _set(self, index: int) -> int:
        self.index = index
        self.changes += 1
        return index


def _ntop(addr: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(addr) == 4 else socket.AF_INET6, addr)


class FlowSampler:
    """Keep 1 new flow in `rate`; remembers each decision for the flow's life (see the module doc)."""

    def __init__(
        self,
        stats: Stats,
        weights: MutableMapping[FlowKey, int],
        *,
        idle_s: float = 120.0,
        max_flows: int = 65_536,
        kong_ports: frozenset[int] = frozenset(),
        upstream_ports: frozenset[int] = frozenset(),
    ) -> None:
        self.stats = stats
        self._kong_ports = kong_ports
        self._upstream_ports = upstream_ports
        # Addresses seen serving a Kong proxy port (SYNs to it), as bytes: Kong's own connections to its
        # services come from them. Bounded, emptied when full.
        self._kong_hosts: set[bytes] = set()
        self.weights = weights  # (client, server) -> N for flows kept at 1 in N > 1
        self.rate = 1
        self._idle_s = idle_s
        self._max = max(1, max_flows)
        # sorted endpoint bytes -> [keep, last capture time, weights key or None]
        self._fates: dict[bytes, list] = {}  # type: ignore[type-arg]

    @classmethod
    def of(cls, config: Config, stats: Stats, weights: MutableMapping[FlowKey, int]) -> FlowSampler:
        """The sampler a capture loop runs with `config` (the daemon's own loop and each capture worker)."""
        return cls(
            stats,
            weights,
            idle_s=config.idle_timeout,
            max_flows=config.max_flows,
            kong_ports=frozenset(config.kong_ports),
            upstream_ports=frozenset(config.upstream_ports),
        )

    def set_rate(self, rate: int, pipeline: Pipeline | None = None) -> None:
        """Keep 1 new flow in `rate` from now on (1: none sampled). As sampling begins, the addresses
        serving `pipeline`'s live flows on the Kong proxy ports are learnt as Kong's (see the module doc)."""
        if rate > 1 >= self.rate and self._kong_ports and pipeline is not None:
            self._learn_kong_hosts(pipeline.server_addresses(self._kong_ports))
        self.rate = rate

    def _learn_kong_hosts(self, addresses: set[bytes]) -> None:
        hosts = self._kong_hosts
        for address in addresses:
            if address not in hosts:
                if len(hosts) >= MAX_KONG_HOSTS:
                    hosts.clear()
                hosts.add(address)

    @property
    def active(self) -> bool:
        """The filter is needed: sampling, or decisions still to honour."""
        return self.rate > 1 or bool(self._fates)

    def __len__(self) -> int:
        return len(self._fates)

    def wrap(self, handle: Handler) -> Handler:
        """`handle` behind the sampling decision (install only while `active`: it costs per packet)."""
        fates = self._fates

        def sampled(ts: float, linktype: int, frame: bytes, wire_len: int) -> object:
            if len(frame) < 40:
                return handle(ts, linktype, frame, wire_len)
            v = frame[0] >> 4
            if v == 4:
                ihl = (frame[0] & 15) * 4
                if frame[9] != 6 or (frame[6] & 0x1F) or frame[7] or len(frame) < ihl + 14:
                    return handle(ts, linktype, frame, wire_len)
                a = frame[12:16] + frame[ihl : ihl + 2]
                b = frame[16:20] + frame[ihl + 2 : ihl + 4]
                flags = frame[ihl + 13]
            elif v == 6:
                if frame[6] != 6 or len(frame) < 54:
                    return handle(ts, linktype, frame, wire_len)
                a = frame[8:24] + frame[40:42]
                b = frame[24:40] + frame[42:44]
                flags = frame[53]
            else:
                return handle(ts, linktype, frame, wire_len)
            key = a + b if a < b else b + a
            fate = fates.get(key)
            syn = flags & 0x12 == 0x02  # SYN without ACK: a new flow
            if syn and fate is not None:  # the endpoints were reused: decide again at today's rate
                self._forget(key)
                fate = None
            if fate is None:
                if self.rate <= 1 or not syn:
                    return handle(ts, linktype, frame, wire_len)
                fate = self._decide(key, a, b, ts)
            fate[1] = ts
            if fate[0]:
                return handle(ts, linktype, frame, wire_len)
            self.stats["shed_packets_sampled_out"] += 1
            return None

        return sampled

    def _decide(self, key: bytes, client: bytes, server: bytes, ts: float) -> list:  # type: ignore[type-arg]
        fates = self._fates
        while len(fates) >= self._max:
            self._forget(next(iter(fates)))
            self.stats["shed_sampler_evictions"] += 1
        if self._kong_ports and self._kong_leg(client, server):
            # Kong's connection to a service: kept whole, unweighted (see the module doc).
            self.stats["shed_flows_kong_upstream"] += 1
            fate = fates[key] = [True, ts, None]
            return fate
        rate = self.rate
        keep = hash(key) % rate == 0
        wkey: FlowKey | None = None
        if keep:
            n = len(client) - 2
            wkey = (
                (_ntop(client[:n]), int.from_bytes(client[n:])),
                (_ntop(server[:n]), int.from_bytes(server[n:])),
            )
            self.weights[wkey] = rate
            self.stats["shed_flows_sampled_in"] += 1
        else:
            self.stats["shed_flows_sampled_out"] += 1
        fate = fates[key] = [keep, ts, wkey]
        return fate

    def _kong_leg(self, client: bytes, server: bytes) -> bool:
        """A new flow from a Kong host to a service (an upstream leg); learns Kong hosts on the way."""
        n = len(client) - 2
        port = int.from_bytes(server[n:])
        if port in self._kong_ports:
            self._learn_kong_hosts({server[:n]})
            return False
        return port in self._upstream_ports or client[:n] in self._kong_hosts

    def _forget(self, key: bytes) -> None:
        fate = self._fates.pop(key)
        if fate[2] is not None:
            self.weights.pop(fate[2], None)

    def expire(self, now_ts: float) -> int:
        """Forget decisions for flows silent longer than the idle timeout; how many were forgotten."""
        cutoff = now_ts - self._idle_s
        old = [k for k, f in self._fates.items() if f[1] < cutoff]
        for k in old:
            self._forget(k)
        return len(old)
