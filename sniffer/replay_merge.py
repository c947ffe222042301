"""`RecordMerger`: the main process of `replay --workers N` feeds its engine the workers' records in frame
order, as one process would have met them (see `replay_workers`). Compiled with the shell: on Kong
traffic every exchange passes through it (callgrind, 30k Kong frames with 2 workers: the main process's
work after start-up ~2 % less than with this loop interpreted).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from reassembly.events import Exchange
from sniffer.capture.exchange_codec import unpack
from sniffer.engine import Engine

__all__ = ["NEVER", "Record", "RecordMerger"]

NEVER: Final = float("-inf")  # a capture time that never triggers the engine's joiner timeouts

# A merge record: (frame number, capture time, [a packed Exchange (exchange_codec.pack), or the end time
# of a plain exchange, ...]); a batch of records is one marshal string.
Record = tuple[int, float, list[Any]]


class RecordMerger:
    """Feeds the main engine the workers' records in frame order (ties: by worker)."""

    def __init__(self, engine: Engine, queues: list[deque[Record]]) -> None:
        self.engine = engine
        self.queues = queues
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
        self._clock = clock

    def close(self) -> None:
        self.merge(1 << 62)
        if self._clock is not None:
            self.engine.advance(self._clock)
            self._clock = None
