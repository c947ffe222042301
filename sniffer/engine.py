"""`Engine`: the stages after capture, wired in data-path order, shared by `replay` and live capture.

frames -> `reassembly.Pipeline` (decode, TCP, HTTP) -> `kong.LegJoiner` (one call from two legs) ->
`moesif.EventBuilder` (identify, mask, encode) -> a sink (`JsonLinesSink` or `MoesifSender`).

The engine is synchronous and never waits on the network: sinks take events without blocking. Time is
capture time throughout, so a replayed file and a live capture of the same packets give the same events.

Load shedding (`sniffer.load_shedding`): with `shed_bodies` set, events are built without bodies
(`metadata.capture.body_shed` says so, `shed_bodies` counts them); `flow_weights` maps the (client,
server) endpoints of flows kept by flow sampling to their weight, which their events carry (a Kong
call's: its upstream leg's flow's, when it has one; see `_emit`).

With several capture workers (`sniffer.capture.workers`) each worker runs its own `Pipeline` and the
engine in the main process is built with `capture=False`: it gets the workers' exchanges through
`feed_exchanges` and runs only the stages after the core.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, Final, Protocol

from reassembly.events import Endpoint, Exchange
from reassembly.pipeline import Pipeline
from reassembly.stats import Stats
from sniffer.config import Config, split_addr
from sniffer.kong.api_call import ApiCall
from sniffer.kong.join import LegJoiner
from sniffer.moesif.event import EventBuilder

__all__ = ["Engine", "EventSink", "make_pipeline", "own_ports"]

# Weights of sampled flows remembered at most (oldest first): bounded like the flow table.
MAX_FLOW_WEIGHTS: Final = 1 << 17
# Joiner timeouts only need checking about once per capture second (its wait is seconds long).
JOIN_ADVANCE_INTERVAL_S: Final = 1.0


def make_pipeline(config: Config, stats: Stats, workers: int = 1) -> Pipeline:
    """The core as the configuration wants it (also what each capture worker runs).

    The budgets over all flows (flows, buffered bytes, HTTP bytes) are the daemon's: with `workers`
    processes splitting the flows between them, each takes its share, so the daemon's memory stays
    what the configuration says whatever the worker count (the flow hash spreads flows evenly)."""
    limits = config.limits()
    if workers > 1:
        limits = replace(
            limits,
            max_flows=max(1, limits.max_flows // workers),
            max_buffer_bytes=max(1, limits.max_buffer_bytes // workers),
            max_http_buffer_bytes=max(1, limits.max_http_buffer_bytes // workers),
        )
    return Pipeline(
        limits, server_ports=frozenset(config.ports), ignored_ports=own_ports(config), stats=stats
    )


def own_ports(config: Config) -> frozenset[int]:
    """The daemon's own HTTP port (metrics, health checks): its scrapes are not API calls. A port the
    operator listed as an API port is kept."""
    if not config.metrics_addr:
        return frozenset()
    _, port = split_addr(config.metrics_addr)
    listed = set(config.ports) | set(config.kong_ports) | set(config.upstream_ports)
    return frozenset() if port in listed else frozenset({port})


class EventSink(Protocol):
    def submit(self, event: dict[str, Any]) -> None: ...


class Engine:
    def __init__(
        self, config: Config, sink: EventSink, stats: Stats | None = None, *, capture: bool = True
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.pipeline = make_pipeline(config, self.stats) if capture else None
        self.joiner = LegJoiner(
            config.kong_ports,
            config.upstream_ports,
            wait_s=config.leg_wait,
            stats=self.stats,
            max_pending=config.max_pending_legs,
            max_pending_bytes=config.max_pending_leg_bytes,
        )
        self.builder = EventBuilder(config)
        self.sink = sink
        self.config = config
        self.shed_bodies = False
        self.flow_weights: dict[tuple[Endpoint, Endpoint], int] = {}
        self._lean_builder: EventBuilder | None = None
        self._next_join_ts = 0.0
        self._last_ts = 0.0
        # Frames fed since stats["packets"] was last brought up to date: once per capture second, at
        # advance, at close and by `sync_stats` (a Counter item per frame cost ~1.5k instructions compiled).
        self._packets = 0

    def feed(self, ts: float, linktype: int, frame: bytes, wire_len: int | None = None) -> None:
        """One captured frame."""
        self._packets += 1
        self._last_ts = ts
        exchanges = self.pipeline.feed(ts, linktype, frame, wire_len)  # type: ignore[union-attr]
        if exchanges:
            if len(exchanges) == 1:  # the usual packet that completes an exchange: _join inlined
                calls = self.joiner.feed(exchanges[0])
                if calls:
                    self._emit(calls)
            else:
                self._join(exchanges)
        if ts >= self._next_join_ts:
            self._next_join_ts = ts + JOIN_ADVANCE_INTERVAL_S
            self.sync_stats()
            self._emit(self.joiner.advance(ts))

    def feed_all(
        self, frames: Iterator[tuple[float, int, bytes, int]], tick: Callable[[int], bool], every: int
    ) -> int:
        """`feed` every frame of `frames` (ts, link type, bytes, wire length); after each `every` frames
        (a power of two) `tick(frames so far)`, and stop when it says so. Returns the count fed.
        A replay's loop, here to be compiled: interpreted, each frame cost a step of the interpreter and
        a call into compiled code that parses its arguments (~3 % of a 1-process replay of wrk traffic)."""
        n = 0
        mask = every - 1
        for ts, linktype, frame, wire_len in frames:
            self.feed(ts, linktype, frame, wire_len)
            n += 1
            if not n & mask and tick(n):
                break
        return n

    def sync_stats(self) -> None:
        """Bring `stats["packets"]` up to date; call before reading the stats (metrics, summaries)."""
        if self._packets:
            self.stats["packets"] += self._packets
            self._packets = 0

    def feed_exchanges(
        self, ts: float, exchanges: list[Exchange], weights: dict[int, int] | None = None
    ) -> None:
        """Exchanges a capture worker's pipeline completed, by capture time `ts` (capture=False);
        `weights`: index in `exchanges` -> weight, for exchanges of flows kept by flow sampling."""
        fw = self.flow_weights
        if weights:
            for i, w in weights.items():
                ex = exchanges[i]
                fw[(ex.client, ex.server)] = w
            while len(fw) > MAX_FLOW_WEIGHTS:
                del fw[next(iter(fw))]
        if fw:  # endpoints reused by a flow kept whole: its events weigh 1 again
            for i, ex in enumerate(exchanges):
                if not weights or i not in weights:
                    fw.pop((ex.client, ex.server), None)
        if exchanges:
            if len(exchanges) == 1:
                calls = self.joiner.feed(exchanges[0])
                if calls:
                    self._emit(calls)
            else:
                self._join(exchanges)
        self._last_ts = max(self._last_ts, ts)
        if ts >= self._next_join_ts:
            self._next_join_ts = ts + JOIN_ADVANCE_INTERVAL_S
            self._emit(self.joiner.advance(ts))

    def advance(self, ts: float) -> None:
        """Capture time passed with no packets (live capture): run the core's and the joiner's timeouts."""
        self.sync_stats()
        if self.pipeline is not None:
            self._join(self.pipeline.advance(ts))
        self._emit(self.joiner.advance(ts))

    def close(self) -> None:
        """End of input: flush every flow, pending leg and event (the sink's owner closes it)."""
        self.sync_stats()
        if self.pipeline is not None:
            self._join(self.pipeline.close(self._last_ts))
        self._emit(self.joiner.close())

    def _join(self, exchanges: list[Exchange]) -> None:
        # The calls of all the exchanges are built in one `_emit`, in the order the joiner gave them.
        feed = self.joiner.feed
        if len(exchanges) == 1:
            calls = feed(exchanges[0])
        else:
            calls = []
            for ex in exchanges:
                calls += feed(ex)
        if calls:
            self._emit(calls)

    def _emit(self, calls: list[ApiCall]) -> None:
        stats = self.stats
        shed = self.shed_bodies
        builder = self._lean() if shed else self.builder
        weights = self.flow_weights
        for call in calls:
            event = builder.build(call)
            if event is None:
                stats["calls_without_request"] += 1
                continue
            stats["events"] += 1
            capture = event["metadata"]["capture"]  # type: ignore[index]  # every event has it
            if "flags" in capture:
                stats["events_partial"] += 1
            if shed:
                n = _bodies(call)
                if n:
                    stats["shed_bodies"] += n
                    capture["body_shed"] = True
            if weights:
                # A Kong call weighs what its upstream leg's flow weighs: Kong's upstream keep-alive
                # connections mostly predate sampling and are kept whole, so the calls of sampled-out
                # client connections still come out, from their upstream leg alone, and the joined
                # calls must not stand for them too (weighing the client's N counted ~1.8x).
                ex = call.upstream_leg or call.primary
                w = weights.get((ex.client, ex.server)) or weights.get((ex.server, ex.client))
                if w:
                    event["weight"] = w
                    capture["sampled_1_in"] = w
                    stats["shed_events_weighted"] += 1
            self.sink.submit(event)

    def _lean(self) -> EventBuilder:
        """A builder that leaves bodies out (made on first need: most daemons never shed)."""
        if self._lean_builder is None:
            self._lean_builder = EventBuilder(
                replace(self.config, disable_capture_request_body=True, disable_capture_response_body=True)
            )
        return self._lean_builder


def _bodies(call: ApiCall) -> int:
    """Bodies the event would have carried: the primary leg's request and response with any body."""
    ex = call.primary
    n = 0
    for msg in (ex.request, ex.response):
        if msg is not None and (msg.body or msg.body_size > 0):
            n += 1
    return n
