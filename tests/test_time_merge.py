"""`TimeMerge`: live sources' exchanges reach the leg joiner in capture-time order, bounded.

The joiner cases are the CI failure's shape: one consumer's two overlapping calls to one route through
a gateway without request ids, the client legs from one source (the TLS tap), the upstream legs from
others (capture workers), one of them late.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from helpers import ListSink
from hypothesis import given, settings
from hypothesis import strategies as st
from test_kong_join import client_leg, upstream_leg

from reassembly.events import Exchange, exchange_end
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.capture.time_merge import TimeMerge
from sniffer.capture.tls import source as source_module
from sniffer.capture.tls.source import TlsSource
from sniffer.capture.tls.streams import TlsStreams
from sniffer.capture.workers import IDLE_LAG_S
from sniffer.config import Config
from sniffer.daemon_loop import DaemonLoop
from sniffer.engine import Engine
from sniffer.kong.api_call import ApiCall, Legs
from sniffer.kong.join import LegJoiner


class Recorder:
    """`Engine.feed_exchanges` as the merge calls it: every call kept."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[Exchange], dict[int, int] | None]] = []

    def __call__(self, ts: float, exchanges: list[Exchange], weights: dict[int, int] | None = None) -> None:
        self.calls.append((ts, list(exchanges), weights))

    @property
    def out(self) -> list[Exchange]:
        return [ex for _, group, _ in self.calls for ex in group]


class JoinerFeed:
    """The engine's joining part: each exchange into a `LegJoiner`, then its clock moved to `ts`."""

    def __init__(self) -> None:
        self.joiner = LegJoiner(frozenset({8444}), frozenset({9000}))
        self.calls: list[ApiCall] = []

    def __call__(self, ts: float, exchanges: list[Exchange], weights: Any = None) -> None:
        for ex in exchanges:
            self.calls += self.joiner.feed(ex)
        self.calls += self.joiner.advance(ts)


def _burst() -> tuple[Exchange, Exchange, Exchange, Exchange]:
    """Two calls of bob's to one route, overlapping: C3/U3 and C7/U7, no request ids. U7 nests in C3 too
    (it started after C3 and ended before C3's response was written), and ended first."""
    c3 = client_leg("bob", 0.000, 0.010, path="/api/orders/106", port=8444, src=("10.77.1.1", 37742))
    u3 = upstream_leg("bob", 0.001, 0.009, path="/api/orders/106", port=8444)
    c7 = client_leg("bob", 0.002, 0.012, path="/api/orders/106", port=8444, src=("10.77.1.1", 37774))
    u7 = upstream_leg("bob", 0.003, 0.008, path="/api/orders/106", port=8444)
    return c3, u3, c7, u7


def test_without_the_merge_a_late_upstream_leg_splits_two_calls_into_partial_events() -> None:
    """The failure, on the joiner alone: C3 arrives while only U7 is there (U3's source lags)."""
    c3, u3, c7, u7 = _burst()
    feed = JoinerFeed()
    for ex in (u7, c3, u3, c7):  # arrival order in the main process
        feed(exchange_end(ex), [ex])
    feed.calls += feed.joiner.close()
    legs = sorted(str(c.legs) for c in feed.calls)
    assert legs == sorted(map(str, [Legs.CLIENT_AND_UPSTREAM, Legs.CLIENT_ONLY, Legs.UPSTREAM_ONLY]))


def test_the_merge_hands_the_legs_on_in_end_order_and_every_call_is_joined() -> None:
    """Same arrivals through the merge (source 0: the worker with U7, 1: the lagging worker with U3,
    2: the TLS tap with the client legs): one joined event per call, each client leg with its own."""
    c3, u3, c7, u7 = _burst()
    feed = JoinerFeed()
    merge = TimeMerge(feed, 3)
    merge.put(0, 0.0085, [u7])
    merge.put(1, 0.0005)  # the lagging worker: nothing yet
    merge.put(2, 0.0105, [c3])
    assert feed.calls == [] and len(merge) == 2  # both held: the lagging worker has not passed them
    merge.put(1, 0.0095, [u3])
    merge.put(2, 0.0125, [c7])
    merge.put(0, 0.02)
    merge.put(1, 0.02)
    assert len(merge) == 0
    assert all(c.legs is Legs.CLIENT_AND_UPSTREAM for c in feed.calls), feed.calls
    joined = {c.client_leg.client[1]: c.upstream_leg for c in feed.calls}  # type: ignore[union-attr]
    assert joined == {37742: u3, 37774: u7}


def test_order_and_watermarks() -> None:
    rec = Recorder()
    merge = TimeMerge(rec, 2)
    a1, a2 = client_leg("bob", 0.0, 1.0), client_leg("bob", 0.0, 3.0)
    b1 = upstream_leg("bob", 0.0, 2.0)
    merge.put(0, 3.0, [a1, a2])
    assert rec.out == []  # source 1 has said nothing yet: it may still hand over something earlier
    merge.put(1, 1.5)
    assert rec.out == [a1] and rec.calls[-1][0] == 1.5
    merge.put(1, 2.5, [b1])
    assert rec.out == [a1, b1] and rec.calls[-1][0] == 2.5
    # Watermarks only move forward; a source that goes back changes nothing.
    merge.put(1, 0.5)
    assert rec.out == [a1, b1]
    merge.retire(1)  # source 1 ended: only source 0 counts
    assert rec.out == [a1, b1, a2] and rec.calls[-1][0] == 3.0


def test_a_future_timestamp_is_capped_at_its_sources_watermark() -> None:
    rec = Recorder()
    merge = TimeMerge(rec, 2)
    bogus = client_leg("bob", 0.0, 1e12)  # a clock gone wrong: it must not be held for ever
    merge.put(0, 5.0, [bogus])
    merge.put(1, 5.0)
    assert rec.out == [bogus]


def test_a_lagging_source_holds_the_others_back_at_most_max_lag_s_and_is_counted() -> None:
    rec, stats = Recorder(), Stats()
    merge = TimeMerge(rec, 2, stats=stats, max_lag_s=3.0)
    legs = [client_leg("bob", t, t + 0.5) for t in range(10)]
    merge.put(1, 0.0)  # then silent (stuck)
    for i, leg in enumerate(legs):
        merge.put(0, i + 0.5, [leg])
    # Released: every leg that ended 3 s or more before the newest watermark (9.5), in end order.
    assert rec.out == legs[:7]
    assert stats["merge_early_source_lag"] == 7
    assert rec.calls[-1][0] == 6.5
    merge.flush()
    assert rec.out == legs and stats["merge_early_source_lag"] == 7  # shutdown is not counted


def test_held_exchanges_and_bytes_are_capped_oldest_first_and_counted() -> None:
    rec, stats = Recorder(), Stats()
    merge = TimeMerge(rec, 2, stats=stats, max_held=2, max_lag_s=100.0)
    legs = [client_leg("bob", t, t + 0.5) for t in range(5)]
    merge.put(0, 10.0, legs[::-1])  # handed over newest first: still out oldest first
    assert rec.out == legs[:3] and len(merge) == 2
    assert stats["merge_early_held_cap"] == 3
    body = client_leg("bob", 20, 20.5)
    assert body.response is not None and len(body.response.body) == 11
    merge = TimeMerge(rec, 2, stats=stats, max_held_bytes=25, max_lag_s=100.0)
    merge.put(0, 30.0, [body, client_leg("bob", 21, 21.5)])
    assert len(merge) == 2
    merge.put(0, 30.0, [client_leg("bob", 22, 22.5)])  # 3 x 11 bytes > 25: the oldest goes
    assert len(merge) == 2 and rec.out[-1] is body and stats["merge_early_held_cap"] == 4


def test_weights_follow_their_exchanges() -> None:
    rec = Recorder()
    merge = TimeMerge(rec, 2, max_lag_s=100.0)
    a, b, c = (client_leg("bob", t, t + 0.5) for t in (0.0, 1.0, 2.0))
    merge.put(0, 5.0, [c, a], {0: 8})  # c weighs 8
    merge.put(1, 5.0, [b])
    ts, group, weights = rec.calls[-1]
    assert group == [a, b, c] and weights == {2: 8} and ts == 5.0


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_exchange_comes_out_once_in_end_order(data: st.DataObject) -> None:
    """Sources that each complete exchanges in end order, interleaved at random, their watermarks moving
    on at random: without a cap hit, the merge's output is every exchange once, sorted by end."""
    n = data.draw(st.integers(1, 4), label="sources")
    rec = Recorder()
    merge = TimeMerge(rec, n, max_lag_s=1e9)
    made: list[list[Exchange]] = []
    for s in range(n):
        ends = sorted(data.draw(st.lists(st.integers(1, 1000), max_size=12), label=f"ends {s}"))
        made.append([client_leg("bob", e / 100 - 0.01, e / 100) for e in ends])
    cursor = [0] * n
    while any(cursor[s] < len(made[s]) for s in range(n)):
        s = data.draw(st.sampled_from([s for s in range(n) if cursor[s] < len(made[s])]))
        k = data.draw(st.integers(1, len(made[s]) - cursor[s]))
        batch = made[s][cursor[s] : cursor[s] + k]
        cursor[s] += k
        # the watermark: at least the batch's last end, at most the next exchange's end
        nxt = exchange_end(made[s][cursor[s]]) if cursor[s] < len(made[s]) else 20.0
        merge.put(s, data.draw(st.floats(exchange_end(batch[-1]), nxt)), batch)
        out = rec.out
        assert [exchange_end(x) for x in out] == sorted(exchange_end(x) for x in out)
    merge.flush()
    out = rec.out
    assert sorted(map(id, out)) == sorted(id(x) for m in made for x in m)
    assert [exchange_end(x) for x in out] == sorted(exchange_end(x) for x in out)


# -- the TLS tap as a source: it reports how far it has read, also when nothing came ----------------------
class _QuietTap:
    """A `TlsTap` with kernel-read addresses whose ring stays empty."""

    kernel_addresses = True

    def read(self, limit: int) -> list[Any]:
        return []

    def refresh(self) -> None:
        pass


class _Engine:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[Exchange]]] = []

    def feed_exchanges(self, ts: float, exchanges: list[Exchange]) -> None:
        self.calls.append((ts, exchanges))


def test_the_tls_source_reports_its_watermark_without_records() -> None:
    streams = TlsStreams(Limits(), Stats(), epoch_offset=1_000.0)
    source = TlsSource(_QuietTap(), streams)  # type: ignore[arg-type]
    engine = _Engine()
    before = streams.capture_time(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    source.poll(engine)
    after = streams.capture_time(time.clock_gettime_ns(time.CLOCK_MONOTONIC))
    # the read began between the two: every record made before then was read
    assert len(engine.calls) == 1 and before <= engine.calls[0][0] <= after and engine.calls[0][1] == []
    wall = time.time()
    source.tick(engine)
    # idle: its records older than IDLE_LAG_S have been read (the daemon reads the ring every 50 ms)
    assert len(engine.calls) == 2 and engine.calls[1][0] >= wall - IDLE_LAG_S


def test_the_tls_source_keeps_its_clock_behind_records_still_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """After a full read (records may be left in the ring) a tick moves neither the clock nor the idle
    timeouts to the wall's time: the waiting records are older."""
    streams = TlsStreams(Limits(), Stats(), epoch_offset=1_000.0)
    source = TlsSource(_QuietTap(), streams)  # type: ignore[arg-type]
    engine = _Engine()
    monkeypatch.setattr(source_module, "MAX_RECORDS_PER_READ", 0)  # every read is a full one
    source.poll(engine)
    source.tick(engine)
    assert [ts for ts, _ in engine.calls] == [streams.last_ts, streams.last_ts]
    monkeypatch.setattr(source_module, "MAX_RECORDS_PER_READ", 1)  # the ring emptied
    source.poll(engine)
    wall = time.time()
    source.tick(engine)
    assert engine.calls[-1][0] >= wall - IDLE_LAG_S > streams.last_ts


def test_the_daemons_merge_takes_its_legs_budget_from_the_joiners() -> None:
    """The memory plan counts the legs' budgets once: the merge holds a fifth, the joiner keeps the rest."""
    env = {"SNIFFER_MAX_PENDING_LEGS": "1000", "SNIFFER_MAX_PENDING_LEG_BYTES": str(10 << 20)}
    config = Config.load(None, env)
    engine = Engine(config, ListSink(), Stats(), capture=False)
    merge = DaemonLoop(config, None, lambda c: None)._merge(engine, 2)
    assert (merge.max_held, engine.joiner.max_pending) == (200, 800)
    assert merge.max_held_bytes + engine.joiner.max_pending_bytes == 10 << 20
