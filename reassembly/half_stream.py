"""One direction of a TCP connection: sequence-numbered segments in, ordered stream events out.

A `HalfStream` turns segments into `StreamData` / `StreamGap` events in stream-offset order. Policies:

- In-order data is delivered as is (the caller's fast path does it without calling in here at all).
- Out-of-order data is kept in a sorted list of non-overlapping chunks. Overlaps are trimmed: the FIRST
  copy of a byte wins. Overlapping bytes that differ are counted in "conflict_bytes": against buffered
  chunks always, against delivered bytes as far as the last delivered segment (kept by reference only,
  when small) reaches.
- A hole becomes a gap, never invented bytes, at the first of: the peer ACKs past it (`on_ack`), it
  outlives the reorder timeout (`on_timeout`), a buffer cap is hit (per direction
  `max_flow_buffer_bytes`, or all streams' `max_buffer_bytes`: skip to the earliest buffered byte), or
  the flow ends (`flush`).
- Buffered pieces are budgeted by count too: each costs ~100 bytes of bookkeeping whatever its size, so
  one-byte segments around one-byte holes would otherwise hold ~100x the byte budget in memory. A
  direction holds at most max(MIN_CHUNKS, max_flow_buffer_bytes // CHUNK_COST) pieces and all streams
  max(MIN_CHUNKS, max_buffer_bytes // CHUNK_COST); past either, the hole is skipped the same way
  (`cap_flow_chunks` / `cap_chunks`). Real reordering holds MSS-sized pieces, far below both.
- Skipping many holes at once (timeout, ACK, end of flow) is one pass over the pieces, so the cost of a
  hole-riddled stream stays linear in its pieces.
- FIN and RST mark the stream's end offset; the direction is `finished` once everything before it has
  been delivered or declared lost, so a FIN behind a hole waits for the hole.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict
from typing import Final

from reassembly.events import Direction, GapReason, StreamData, StreamEvent, StreamGap
from reassembly.limits import Limits
from reassembly.seq import CONTROL_WINDOW, SEQ_MASK, SEQ_WINDOW, seq_diff
from reassembly.stats import Stats

__all__ = ["CHUNK_COST", "MIN_CHUNKS", "RECENT_MAX_BYTES", "BufferPool", "HalfStream"]

# Delivered segments up to this size are remembered (a reference, no copy) to detect retransmissions
# that disagree with what was delivered; bigger ones (GRO/TSO super-segments) are not, to bound memory.
RECENT_MAX_BYTES: Final = 2048
# What one buffered piece costs besides its payload (bytes object header, three list slots, a float),
# rounded up: the byte budgets divided by this are the piece budgets.
CHUNK_COST: Final = 128
# Piece budgets never go below this, so tiny byte budgets (tests) still allow some reordering.
MIN_CHUNKS: Final = 64

_GAP_NAMES: Final = {r: "gap_" + r.value for r in GapReason}
_INF: Final = float("inf")


class BufferPool:
    """What all half-streams of one flow table share: buffer budgets, counters, and the hole queue.

    `holes` holds the half-streams that wait on a hole, oldest hole first (by capture time), so the
    reorder timeout only visits the expired ones.
    """

    __slots__ = ("chunk_limit", "chunks", "flow_cap", "flow_chunk_cap", "holes", "limit", "stats", "used")

    def __init__(self, limits: Limits, stats: Stats) -> None:
        self.limit = limits.max_buffer_bytes
        self.flow_cap = limits.max_flow_buffer_bytes
        self.used = 0
        self.chunk_limit = max(MIN_CHUNKS, limits.max_buffer_bytes // CHUNK_COST)
        self.flow_chunk_cap = max(MIN_CHUNKS, limits.max_flow_buffer_bytes // CHUNK_COST)
        self.chunks = 0  # pieces buffered over all streams
        self.stats = stats
        self.holes: OrderedDict[HalfStream, None] = OrderedDict()


class HalfStream:
    """The bytes one endpoint sent, as stream offsets from its first data byte.

    `seq_next` is the sequence number of offset `next` (the first byte not yet delivered or declared
    lost); `fast` says the owner may deliver a segment starting exactly at `seq_next` by itself.
    """

    __slots__ = (
        "arrivals",
        "base",
        "chunks",
        "direction",
        "end_off",
        "end_rst",
        "end_ts",
        "fast",
        "finished",
        "flow_id",
        "hint",
        "hole_ts",
        "ignored",
        "in_holes",
        "live",
        "mid_pending",
        "nbuf",
        "need_hint",
        "next",
        "pool",
        "recent",
        "recent_off",
        "seq_next",
        "started",
        "starts",
    )

    def __init__(self, flow_id: int, direction: Direction, pool: BufferPool) -> None:
        self.flow_id = flow_id
        self.direction = direction
        self.pool = pool
        self.started = False  # offset 0 is known
        self.live = False  # the owner emitted FlowOpened: the fast path may deliver
        self.fast = False
        self.ignored = False
        self.mid_pending = False  # a MIDSTREAM gap must precede the first delivery
        self.need_hint = False  # the peer's ACK may tell where this stream starts (SYN-ACK missed)
        self.hint = -1
        self.base = 0
        self.next = 0
        self.seq_next = 0
        self.starts: list[int] | None = None  # out-of-order chunks: offsets, data, capture times
        self.chunks: list[bytes] | None = None
        self.arrivals: list[float] | None = None
        self.nbuf = 0
        self.end_off = -1  # offset of FIN/RST, -1 until seen
        self.end_rst = False
        self.end_ts = 0.0
        self.finished = False
        self.hole_ts = 0.0
        self.in_holes = False
        # The last in-order segment delivered (at most RECENT_MAX_BYTES), so that a retransmission of it
        # with other bytes is counted as a conflict. Dropped once the peer acknowledges everything (as Zeek
        # drops acknowledged data): an idle keep-alive connection then holds no payload (725 bytes each
        # on Kong traffic before).
        self.recent: bytes | None = None
        self.recent_off = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, seq: int, mid: bool) -> None:
        """Offset 0 is sequence number `seq`; `mid`: bytes before it were never seen."""
        self.started = True
        self.need_hint = False
        self.base = seq & SEQ_MASK
        self.seq_next = self.base
        self.mid_pending = mid
        self.refresh()

    def refresh(self) -> None:
        self.fast = (
            self.live
            and self.started
            and not self.ignored
            and not self.nbuf
            and self.end_off < 0
            and not self.mid_pending
        )

    def set_ignored(self) -> None:
        """Stop buffering and delivering; only the end of the stream is still tracked."""
        self.release()
        self.ignored = True
        self.started = False  # keeps the owner's ACK check off this stream
        self.mid_pending = False
        self.need_hint = False
        self.fast = False
        self.recent = None
        if self.end_off >= 0:
            self.finished = True

    def release(self) -> None:
        """Drop everything buffered (without events) and leave the hole queue."""
        if self.nbuf:
            self.pool.used -= self.nbuf
            self.nbuf = 0
        if self.starts:
            self.pool.chunks -= len(self.starts)
        self.starts = self.chunks = self.arrivals = None
        if self.in_holes:
            self.in_holes = False
            self.pool.holes.pop(self, None)

    # -- input ---------------------------------------------------------------------------------------

    def on_data(self, seq: int, data: bytes, ts: float, out: list[StreamEvent]) -> None:
        """A segment's payload starting at sequence number `seq` (the slow path: anything not simply next)."""
        stats = self.pool.stats
        n = len(data)
        if self.ignored:
            stats["tcp_ignored_bytes"] += n
            return
        if not self.started:
            stats["drop_unstarted_bytes"] += n
            return
        nxt = self.next
        off = nxt + seq_diff(seq, self.seq_next)
        end = off + n
        if off < 0:
            # Before the stream's start: a mid-stream direction's older retransmission, or noise.
            if end <= 0:
                stats["drop_before_start_bytes"] += n
                return
            stats["drop_before_start_bytes"] += -off
            data = data[-off:]
            off = 0
        if self.end_off >= 0 and end > self.end_off:
            stats["drop_after_fin_bytes"] += end - max(off, self.end_off)
            if off >= self.end_off:
                return
            data = data[: self.end_off - off]
            end = self.end_off
        if end <= nxt:
            if n == 1 and end == nxt:
                stats["tcp_keepalives"] += 1  # one garbage byte just below `next`: not a conflict
                return
            stats["tcp_duplicates"] += 1
            self._check_recent(off, data)
            return
        if off < nxt:
            self._check_recent(off, data[: nxt - off])
            stats["tcp_retrans_bytes"] += nxt - off
            data = data[nxt - off :]
            off = nxt
        elif off - nxt > SEQ_WINDOW:
            stats["drop_out_of_window_bytes"] += end - off
            return
        if off == nxt and not self.nbuf:
            self._deliver(data, ts, out)
        else:
            self._insert(off, data, ts)
            if self.nbuf and self.starts[0] <= self.next:  # type: ignore[index]
                self._drain(ts, out)
            self._enforce_caps(ts, out)
        self._settle(ts, nxt)

    def on_fin(self, seq: int, ts: float, out: list[StreamEvent]) -> None:
        """FIN at sequence number `seq` (after the segment's payload)."""
        if self.ignored or not self.started:
            self.finished = True
            return
        if self.end_off >= 0:
            return  # the first FIN/RST position wins
        off = self.next + seq_diff(seq, self.seq_next)
        if off - self.next > CONTROL_WINDOW:
            self.pool.stats["tcp_bad_fin"] += 1
            return
        nxt = self.next
        self._set_end(max(off, nxt), ts)
        self._settle(ts, nxt)

    def on_rst(self, seq: int, ts: float, out: list[StreamEvent]) -> None:
        """RST at sequence number `seq`: the stream ends there once the bytes before it are resolved."""
        if self.ignored or not self.started:
            self.finished = self.end_rst = True
            return
        nxt = self.next
        off = nxt + seq_diff(seq, self.seq_next)
        if off - nxt > CONTROL_WINDOW:
            # Not where this sender is: e.g. the RST a client in SYN-SENT sends back to a stale ACK,
            # which does not end its connection.
            self.pool.stats["tcp_bad_rst"] += 1
            return
        self.end_rst = True
        if self.end_off >= 0:
            off = min(off, self.end_off)
        if off < nxt:
            off = nxt  # sent from an older position (a RST answering a late segment): it applies now
        self._set_end(off, ts)
        self._settle(ts, nxt)

    def on_ack(self, target: int, ts: float, out: list[StreamEvent]) -> None:
        """The peer acknowledged everything before offset `target`: what is still missing below it is lost."""
        if self.ignored or self.finished or not self.started:
            return
        nxt = self.next
        if self.end_off >= 0 and target > self.end_off:
            target = self.end_off  # the FIN takes one sequence number, not a byte
        if target <= nxt:
            return
        if target == nxt + 1 and not self.nbuf and self.end_off < 0:
            return  # most likely the ACK of a FIN the capture missed; a lost byte shows up later
        if self.nbuf:
            # every piece beginning before the target: its hole is lost, it is delivered
            k = bisect_left(self.starts, target) - 1  # type: ignore[arg-type]
            if k >= 0:
                self._skip_through(k, GapReason.ACKED_UNSEEN, ts, out)
        if self.next < target:
            self._gap(target - self.next, GapReason.ACKED_UNSEEN, ts, out)
            self._drain(ts, out)
        self._settle(ts, nxt)

    def on_timeout(self, deadline: float, ts: float, out: list[StreamEvent]) -> None:
        """Skip every hole that appeared at or before `deadline` (capture time)."""
        # The same as skipping one hole at a time until the oldest piece (or the FIN) still waiting arrived
        # after the deadline, but in one pass: skip through the last piece that arrived by the deadline
        # (at least the first, the one that armed the timer), or through all of them if the FIN waits
        # since before it.
        nxt = self.next
        end_expired = self.end_off > self.next and self.end_ts <= deadline
        if self.nbuf:
            arrivals = self.arrivals
            assert arrivals is not None
            k = len(arrivals) - 1
            if not end_expired:
                while k > 0 and arrivals[k] > deadline:
                    k -= 1
            self._skip_through(k, GapReason.TIMEOUT, ts, out)
            if end_expired and self.end_off > self.next:
                self._gap(self.end_off - self.next, GapReason.TIMEOUT, ts, out)
        elif self.end_off > self.next:
            self._gap(self.end_off - self.next, GapReason.TIMEOUT, ts, out)
        self._settle(ts, nxt)

    def flush(self, reason: GapReason, ts: float, out: list[StreamEvent]) -> None:
        """The flow ends: deliver what is buffered, declaring every hole before it (and before a FIN) lost."""
        if self.started and not self.ignored:
            if self.nbuf:
                self._skip_through(len(self.starts) - 1, reason, ts, out)  # type: ignore[arg-type]
            if self.end_off > self.next:
                self._gap(self.end_off - self.next, reason, ts, out)
        self.release()

    # -- internals -----------------------------------------------------------------------------------

    def _has_hole(self) -> bool:
        return bool(self.nbuf) or self.end_off > self.next

    def _oldest(self) -> float:
        arrivals = self.arrivals
        t = min(arrivals) if self.nbuf and arrivals else _INF
        if self.end_ts < t and self.end_off > self.next:
            t = self.end_ts
        return t

    def _set_end(self, off: int, ts: float) -> None:
        self.end_off = off
        self.end_ts = ts
        if not self.nbuf:
            return
        starts, chunks, arrivals = self.starts, self.chunks, self.arrivals
        assert starts is not None and chunks is not None and arrivals is not None
        dropped = 0
        while starts and starts[-1] >= off:
            starts.pop()
            arrivals.pop()
            dropped += len(chunks.pop())
            self.pool.chunks -= 1
        if starts and starts[-1] + len(chunks[-1]) > off:
            keep = off - starts[-1]
            dropped += len(chunks[-1]) - keep
            chunks[-1] = chunks[-1][:keep]
        if dropped:
            self.pool.stats["drop_after_fin_bytes"] += dropped
            self.nbuf -= dropped
            self.pool.used -= dropped

    def _settle(self, ts: float, nxt_before: int) -> None:
        """Bookkeeping after any slow-path change: end reached, hole queue position, fast-path flag."""
        if self.end_off >= 0 and self.next >= self.end_off:
            self.finished = True
        if not self.finished and self._has_hole():
            if not self.in_holes:
                self.in_holes = True
                self.hole_ts = self._oldest()
                self.pool.holes[self] = None
            elif self.next != nxt_before:
                self.hole_ts = self._oldest()
                self.pool.holes.move_to_end(self)
        elif self.in_holes:
            self.in_holes = False
            self.pool.holes.pop(self, None)
        self.refresh()

    def _deliver(self, data: bytes, ts: float, out: list[StreamEvent]) -> None:
        if self.mid_pending:
            self._midstream_gap(ts, out)
        off = self.next
        out.append(StreamData(self.flow_id, self.direction, off, data, ts))
        n = len(data)
        self.next = off + n
        self.seq_next = (self.base + off + n) & SEQ_MASK
        if n <= RECENT_MAX_BYTES:
            self.recent = data
            self.recent_off = off
        else:
            self.recent = None

    def _midstream_gap(self, ts: float, out: list[StreamEvent]) -> None:
        self.mid_pending = False
        out.append(StreamGap(self.flow_id, self.direction, 0, None, ts, GapReason.MIDSTREAM))
        self.pool.stats["gap_midstream"] += 1

    def _gap(self, length: int, reason: GapReason, ts: float, out: list[StreamEvent]) -> None:
        if self.mid_pending:
            self._midstream_gap(ts, out)
        off = self.next
        out.append(StreamGap(self.flow_id, self.direction, off, length, ts, reason))
        stats = self.pool.stats
        stats[_GAP_NAMES[reason]] += 1
        stats["gap_bytes"] += length
        self.next = off + length
        self.seq_next = (self.base + off + length) & SEQ_MASK
        self.recent = None

    def _skip_hole(self, reason: GapReason, ts: float, out: list[StreamEvent]) -> None:
        if self.nbuf:
            self._skip_through(0, reason, ts, out)
        elif self.end_off > self.next:
            self._gap(self.end_off - self.next, reason, ts, out)

    def _drain(self, ts: float, out: list[StreamEvent]) -> None:
        """Deliver the buffered chunks that are now contiguous with `next`."""
        if self.starts:
            self._skip_through(-1, GapReason.OVERFLOW, ts, out)

    def _skip_through(self, k: int, reason: GapReason, ts: float, out: list[StreamEvent]) -> None:
        """Declare lost the holes before pieces 0..k and deliver those pieces, then every piece that is
        contiguous after them; one pass and one deletion from the front (k = -1: only drain)."""
        starts, chunks, arrivals = self.starts, self.chunks, self.arrivals
        assert starts is not None and chunks is not None and arrivals is not None
        n = len(starts)
        i = 0
        removed = 0
        while i < n:
            cs = starts[i]
            if cs > self.next:
                if i > k:
                    break
                self._gap(cs - self.next, reason, ts, out)
            data = chunks[i]
            ln = len(data)
            removed += ln
            if cs + ln > self.next:
                self._deliver(data[self.next - cs :] if cs < self.next else data, ts, out)
            i += 1
        if i:
            del starts[:i], chunks[:i], arrivals[:i]
            self.nbuf -= removed
            pool = self.pool
            pool.used -= removed
            pool.chunks -= i

    def _enforce_caps(self, ts: float, out: list[StreamEvent]) -> None:
        pool = self.pool
        stats = pool.stats
        while self.nbuf:
            if self.nbuf > pool.flow_cap:
                stats["cap_flow_buffer"] += 1
            elif pool.used > pool.limit:
                stats["cap_buffer"] += 1
            else:
                pieces = len(self.starts)  # type: ignore[arg-type]
                if pieces > pool.flow_chunk_cap:
                    stats["cap_flow_chunks"] += 1
                elif pool.chunks > pool.chunk_limit:
                    stats["cap_chunks"] += 1
                else:
                    return
                # Too many pieces: skip the holes before the first quarter of them at once, so a stream
                # of tiny pieces pays one pass per quarter of its pieces, not one per segment.
                self._skip_through(pieces // 4, GapReason.OVERFLOW, ts, out)
                continue
            self._skip_hole(GapReason.OVERFLOW, ts, out)

    def _insert(self, off: int, data: bytes, ts: float) -> None:
        """Buffer the parts of [off, off+len) not already buffered (first copy wins)."""
        if type(data) is not bytes:
            data = bytes(data)  # never hold a view of a capture buffer
        if self.starts is None:
            self.starts, self.chunks, self.arrivals = [], [], []
        starts, chunks, arrivals = self.starts, self.chunks, self.arrivals
        assert chunks is not None and arrivals is not None
        end = off + len(data)
        pos = off
        pieces: list[tuple[int, int]] = []
        i = bisect_right(starts, off) - 1
        if i >= 0:
            ce = starts[i] + len(chunks[i])
            if ce > pos:
                hi = min(ce, end)
                self._compare(pos, hi, data, off, chunks[i], starts[i])
                pos = hi
        i += 1
        while pos < end and i < len(starts):
            cs = starts[i]
            if cs >= end:
                break
            if cs > pos:
                pieces.append((pos, cs))
            hi = min(cs + len(chunks[i]), end)
            self._compare(cs, hi, data, off, chunks[i], cs)
            pos = hi
            i += 1
        if pos < end:
            pieces.append((pos, end))
        stats = self.pool.stats
        if not pieces:
            stats["tcp_duplicates"] += 1
            return
        if off > self.next:
            stats["tcp_ooo_segments"] += 1
        added = 0
        for lo, hi in pieces:
            j = bisect_right(starts, lo)
            starts.insert(j, lo)
            chunks.insert(j, data if hi - lo == len(data) else data[lo - off : hi - off])
            arrivals.insert(j, ts)
            added += hi - lo
        if added < len(data):
            stats["tcp_retrans_bytes"] += len(data) - added
        self.nbuf += added
        self.pool.used += added
        self.pool.chunks += len(pieces)

    def _compare(self, lo: int, hi: int, data: bytes, doff: int, other: bytes, ooff: int) -> None:
        a = data[lo - doff : hi - doff]
        b = other[lo - ooff : hi - ooff]
        if a != b:
            self.pool.stats["conflict_bytes"] += sum(x != y for x, y in zip(a, b, strict=True))

    def _check_recent(self, off: int, data: bytes) -> None:
        recent = self.recent
        if recent is None:
            return
        lo = max(off, self.recent_off)
        hi = min(off + len(data), self.recent_off + len(recent))
        if lo < hi:
            self._compare(lo, hi, data, off, recent, self.recent_off)
