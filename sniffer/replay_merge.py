"""`RecordMerger`: the main process of `replay --workers N` feeds its engine the workers' records in frame
order, as one process would have met them (see `replay_workers`). Compiled with the shell: on Kong
traffic every exchange passes through it (callgrind, 30k Kong frames with 2 workers: the main process's
work after start-up ~2 % less than with this loop interpreted).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from typing import Any, Final

from reassembly.events import Exchange
from sniffer.capture.exchange_codec import unpack
from sniffer.engine import Engine

__all__ = ["NEVER", "PlainEnds", "Record", "RecordMerger"]

NEVER: Final = float("-inf")  # a capture time that never triggers the engine's joiner timeouts

# A merge record: (frame number, capture time, [a packed Exchange (exchange_codec.pack), or the end time
# of a plain exchange, ...]); a batch of records is one marshal string.
Record = tuple[int, float, list[Any]]


class PlainEnds:
    """One worker's frames that completed only plain exchanges, in frame order: (frame number, their
    latest end). On most traffic that is nearly every frame that completes an exchange, and all the merge
    needs of them is the joiner's clock when a leg comes: so they travel as two arrays a batch, not as a
    record each (on the 1M-frame wrk capture with 2 workers, a record each cost the main process ~0.3 s
    of CPU to load and merge, 5 % of the replay's). Consumed from the front."""

    __slots__ = ("_at", "_chunks")

    def __init__(self) -> None:
        self._chunks: deque[tuple[array[int], array[float]]] = deque()
        self._at = 0  # the first unconsumed entry of the first chunk

    def add(self, frames: bytes, ends: bytes) -> None:
        """A batch's entries (`array("q")` and `array("d")` bytes, frame numbers ascending)."""
        if frames:
            f, e = array("q"), array("d")
            f.frombytes(frames)
            e.frombytes(ends)
            self._chunks.append((f, e))

    def take(self, frame: int, inclusive: bool) -> float | None:
        """The latest end of the entries before `frame` (and at it, `inclusive`), consumed; None: none."""
        latest: float | None = None
        chunks = self._chunks
        while chunks:
            frames, ends = chunks[0]
            at = self._at
            if frames[at] > frame or (frames[at] == frame and not inclusive):
                break
            stop = bisect_right(frames, frame, at) if inclusive else bisect_left(frames, frame, at)
            m = max(ends[at:stop])
            if latest is None or m > latest:
                latest = m
            if stop < len(frames):
                self._at = stop
                break
            chunks.popleft()
            self._at = 0
        return latest


class RecordMerger:
    """Feeds the main engine the workers' records in frame order (ties: by worker), with the plain ends
    of `plain` (one `PlainEnds` per worker) where one process's joiner would have met them."""

    def __init__(self, engine: Engine, queues: list[deque[Record]], plain: list[PlainEnds]) -> None:
        self.engine = engine
        self.queues = queues
        self.plain = plain
        # The latest end of plain exchanges not yet passed to the joiner: between two exchanges fed to
        # it, moving its clock once to the latest gives the same state and the same calls as moving it
        # at each (expiring is monotonic), for a fraction of the cost.
        self._clock: float | None = None

    def merge(self, upto: int) -> None:
        """Every queued record numbered `upto` or less; after the last record of a frame, the joiner's
        timeouts run if one process would run them there."""
        engine = self.engine  # its methods called on it: native calls, not bound methods'
        queues = self.queues
        clock = self._clock
        pending_ts: float | None = None
        frame = -1
        while True:
            best = -1
            low = upto + 1
            for w, q in enumerate(queues):
                if q and q[0][0] < low:
                    best, low = w, q[0][0]
            if low != frame and pending_ts is not None:
                # the end of frame `frame`: one process's joiner-timeout check
                engine.feed_exchanges(pending_ts, [])
                pending_ts = None
            if best < 0:
                break
            frame, pending_ts, items = queues[best].popleft()
            if items:
                # The joiner's clock takes the plain ends of every frame before this one (of this frame:
                # those of workers merged before this one, and this one's own) before a leg comes.
                for w, plain in enumerate(self.plain):
                    latest = plain.take(frame, w <= best)
                    if latest is not None and (clock is None or latest > clock):
                        clock = latest
            group: list[Exchange] = []
            for item in items:
                if type(item) is float:
                    if group:
                        engine.feed_exchanges(NEVER, group)
                        group = []
                    if clock is None or item > clock:
                        clock = item
                else:
                    if clock is not None and not group:
                        engine.advance(clock)  # the plain exchanges' ends, as one process's joiner saw
                        clock = None
                    group.append(item if type(item) is Exchange else unpack(item))
            if group:
                engine.feed_exchanges(NEVER, group)
        for plain in self.plain:  # every worker has passed `upto`: its plain ends up to it are all here
            latest = plain.take(upto, True)
            if latest is not None and (clock is None or latest > clock):
                clock = latest
        self._clock = clock

    def close(self) -> None:
        self.merge(1 << 62)
        if self._clock is not None:
            self.engine.advance(self._clock)
            self._clock = None
