"""`TimeMerge`: the exchanges of several live capture sources, handed on in capture-time order.

Live, exchanges that may be Kong legs reach the main process from several sources at once: each capture
worker (its share of the flows, SNIFFER_WORKERS > 1) and the TLS tap (the plaintext client legs of HTTPS
calls). Each source hands over its exchanges in the order it completed them, but the sources run apart:
a worker's batch comes when its ring block retires and its pipe is read, the TLS ring is read every few
tens of milliseconds. The leg joiner pairs a client leg with the best-fitting upstream leg present when
the client leg arrives (`kong.join`). Without request ids (Kong < 3.5), when the right upstream leg is
still on its way from a lagging source and an identical call's (same consumer, same route, overlapping
in time) is already there, the client leg takes that one, and the other call comes out as two partial
events, one of them without its user. Seen in CI with 2 workers and HTTPS through a gateway without
request ids: one of a consumer's two overlapping calls to one route came out as a client leg without its
user plus an upstream leg alone.

So every source says how far it has got: its watermark, a capture time up to which it has handed over
every exchange it completed. The merge holds each exchange until every source has passed its end, then
hands the held exchanges on in end order: the order one process capturing everything would have
completed them in, where an upstream leg (which ends inside its client leg) always comes before its
client leg. Joins then do not depend on which process captured which leg, nor on when it was read.

An exchange's end is capped at its source's watermark when handed over (a bogus future timestamp cannot
hold it back). Bounded: at most `max_held` exchanges wait, and no source holds the others back by more
than `max_lag_s` of capture time behind the newest watermark (a worker busy with a flood, a TLS tap that
stopped being read), and the bodies held stay under `max_held_bytes`; past any of these, the oldest go
on early and `merge_early_held_cap` / `merge_early_source_lag` count them. Sans-IO: watermarks are
the sources' capture times, no clock is read here.
"""

from __future__ import annotations

import heapq
from typing import Final, Protocol

from reassembly.events import Exchange, body_bytes, exchange_end
from reassembly.stats import Stats

__all__ = [
    "DEFAULT_MAX_HELD",
    "DEFAULT_MAX_HELD_BYTES",
    "DEFAULT_MAX_LAG_S",
    "Feed",
    "SourceFeed",
    "TimeMerge",
]

# A source reports at least once per capture worker tick (1 s, its clock then 0.5 s behind the wall) or
# TLS poll (50 ms): 3 s leaves room for a slow tick without letting a stuck source stall the events.
DEFAULT_MAX_LAG_S: Final = 3.0
# A fifth of the joiner's default caps on pending legs (`kong.join`), which the daemon takes from them: a
# leg is held here about a second, where it may wait up to 5 s there.
DEFAULT_MAX_HELD: Final = 4_000
DEFAULT_MAX_HELD_BYTES: Final = 51 << 20


class Feed(Protocol):
    """Where merged exchanges go: `Engine.feed_exchanges` (ts: the merged watermark)."""

    def __call__(
        self, ts: float, exchanges: list[Exchange], weights: dict[int, int] | None = None
    ) -> None: ...


_INF: Final = float("inf")


class SourceFeed:
    """One source's door into a `TimeMerge`, shaped like `Engine.feed_exchanges` (what `TlsSource` and
    the daemon's loops call)."""

    __slots__ = ("index", "merge")

    def __init__(self, merge: TimeMerge, index: int) -> None:
        self.merge = merge
        self.index = index

    def feed_exchanges(
        self, ts: float, exchanges: list[Exchange], weights: dict[int, int] | None = None
    ) -> None:
        self.merge.put(self.index, ts, exchanges, weights)


class TimeMerge:
    """Exchanges from `sources` numbered sources in, in end order out to `feed`. Not thread-safe."""

    def __init__(
        self,
        feed: Feed,
        sources: int,
        *,
        stats: Stats | None = None,
        max_held: int = DEFAULT_MAX_HELD,
        max_held_bytes: int = DEFAULT_MAX_HELD_BYTES,
        max_lag_s: float = DEFAULT_MAX_LAG_S,
    ) -> None:
        self._feed = feed
        self.stats = stats if stats is not None else Stats()
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self._bytes = 0
        self.max_lag_s = max_lag_s
        # None: the source has reported nothing yet (it holds the others back, within max_lag_s).
        self._marks: list[float | None] = [None] * sources
        self._live = [True] * sources
        self._newest = 0.0  # the newest watermark of any source
        self._passed = 0.0  # the watermark last handed to `feed`
        self._seq = 0  # ties in end time: first handed over, first out
        self._held: list[tuple[float, int, Exchange, int]] = []  # (end, seq, exchange, weight or 0)

    def __len__(self) -> int:
        return len(self._held)

    def source(self, index: int) -> SourceFeed:
        """Source `index`'s door, for code that feeds an engine (`feed_exchanges`)."""
        return SourceFeed(self, index)

    def put(
        self,
        source: int,
        watermark: float,
        exchanges: list[Exchange] | None = None,
        weights: dict[int, int] | None = None,
    ) -> None:
        """`source` handed over `exchanges` (`weights`: index -> weight, as `Engine.feed_exchanges`) and
        has handed over everything it completed up to capture time `watermark`."""
        mark = self._marks[source]
        if mark is None or watermark > mark:
            self._marks[source] = mark = watermark
        if mark > self._newest:
            self._newest = mark
        if exchanges:
            held, seq, size = self._held, self._seq, 0
            for i, ex in enumerate(exchanges):
                end = exchange_end(ex)
                seq += 1
                w = weights.get(i, 0) if weights else 0
                heapq.heappush(held, (end if end < mark else mark, seq, ex, w))
                size += body_bytes(ex)
            self._seq = seq
            self._bytes += size
        self._release()

    def retire(self, source: int) -> None:
        """`source` ended (a worker that stopped or died): it no longer holds the others back."""
        if self._live[source]:
            self._live[source] = False
            self._release()

    def flush(self) -> None:
        """Shutdown, after every source's last exchanges: everything held goes on, in end order."""
        self._live = [False] * len(self._live)
        self._release()

    def _low(self) -> tuple[float, float]:
        """(how far every live source has got, inf when none is left; the same raised to `max_lag_s`
        behind the newest watermark, where a source lags further)."""
        low = _INF
        for mark, live in zip(self._marks, self._live, strict=True):
            if live:
                low = min(low, mark if mark is not None else -_INF)
        floor = self._newest - self.max_lag_s
        return low, (floor if low < floor else low)

    def _release(self) -> None:
        held = self._held
        low, upto = self._low()
        group: list[Exchange] = []
        weights: dict[int, int] = {}
        size = early = 0
        while held and held[0][0] <= upto:
            end, _, ex, w = heapq.heappop(held)
            if end > low:
                early += 1  # released because a source lags more than max_lag_s
            if w:
                weights[len(group)] = w
            group.append(ex)
            size += body_bytes(ex)
        while held and (len(held) > self.max_held or self._bytes - size > self.max_held_bytes):
            _, _, ex, w = heapq.heappop(held)
            self.stats["merge_early_held_cap"] += 1
            if w:
                weights[len(group)] = w
            group.append(ex)
            size += body_bytes(ex)
        self._bytes -= size
        if early:
            self.stats["merge_early_source_lag"] += early
        ts = upto if upto != _INF else self._newest
        if ts > self._passed:
            self._passed = ts
        elif not group:
            return
        self._feed(self._passed, group, weights or None)
