"""IP fragment reassembly: fragments in, whole datagram payloads out, in bounded memory.

Keyed by whatever identifies a datagram (IPv4: addresses, protocol, id; IPv6: addresses and the 32-bit
fragment id), so both IP versions share it. Policies, each counted in `Stats`:
- overlapping bytes: the first copy wins (the RFC 5722 / Linux answer for IPv6; for IPv4 it is what
  most stacks do) -> `drop_ip_fragment_overlap`;
- a partial datagram older than `Limits.fragment_timeout_s` of capture time -> `drop_ip_fragment_timeout`;
- more than `Limits.max_fragment_datagrams` partial datagrams, or more than `max_bytes` held in all
  (an eighth of `Limits.max_buffer_bytes`, at least one whole datagram): the oldest goes ->
  `drop_ip_fragment_evicted`. Without the byte cap 1,024 partial 64 KiB datagrams would hold 64 MiB
  whatever SNIFFER_MAX_BUFFER_BYTES says; TCP traffic is rarely fragmented (path MTU discovery), so
  an eighth of the budget is plenty;
- a datagram past 65,535 bytes, in too many pieces, or whose fragments disagree on its end ->
  `drop_ip_fragment_malformed` (the whole datagram is dropped).
"""

from __future__ import annotations

from collections.abc import Hashable

from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = ["MAX_DATAGRAM_BYTES", "MAX_PIECES", "FragmentReassembler"]

MAX_DATAGRAM_BYTES = 65_535
# Caps the objects one datagram can pin: 8-byte fragments would otherwise make 8k pieces each.
# Real fragmentation (a 64 KiB datagram over a 576-byte MTU) needs at most ~120.
MAX_PIECES = 128


class _Partial:
    __slots__ = ("first_ts", "have", "pieces", "total")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.pieces: list[tuple[int, bytes]] = []  # (offset, data), non-overlapping
        self.have = 0  # bytes held
        self.total: int | None = None  # known once the last fragment (more=False) arrived


class FragmentReassembler:
    """Collects fragments per datagram; `feed` returns the payload once every byte is present."""

    def __init__(self, limits: Limits, stats: Stats) -> None:
        self._limits = limits
        self._stats = stats
        self._partials: dict[Hashable, _Partial] = {}  # insertion order = age order
        self.max_bytes = max(MAX_DATAGRAM_BYTES, limits.max_buffer_bytes // 8)
        self.held = 0  # payload bytes of all partial datagrams

    def __len__(self) -> int:
        return len(self._partials)

    def feed(self, ts: float, key: Hashable, offset: int, more: bool, data: bytes) -> bytes | None:
        """One fragment: `offset` in bytes into the datagram payload, `more` = more fragments follow."""
        stats = self._stats
        stats["ip_fragments"] += 1
        self._expire(ts)
        end = offset + len(data)
        if end > MAX_DATAGRAM_BYTES or (more and len(data) & 7) or (more and not data):
            # RFC 791/8200: every fragment but the last carries a multiple of 8 bytes
            stats["drop_ip_fragment_malformed"] += 1
            self._drop(key)
            return None
        partial = self._partials.get(key)
        if partial is None:
            if len(self._partials) >= self._limits.max_fragment_datagrams:
                self._drop(next(iter(self._partials)))
                stats["drop_ip_fragment_evicted"] += 1
            partial = self._partials[key] = _Partial(ts)
        if not more:
            if (partial.total is not None and partial.total != end) or any(
                o + len(d) > end for o, d in partial.pieces
            ):
                stats["drop_ip_fragment_malformed"] += 1
                self._drop(key)
                return None
            partial.total = end
        elif partial.total is not None and end > partial.total:
            stats["drop_ip_fragment_malformed"] += 1
            self._drop(key)
            return None
        if not self._add(partial, offset, data):
            stats["drop_ip_fragment_malformed"] += 1
            self._drop(key)
            return None
        if partial.total is None or partial.have != partial.total:
            while self.held > self.max_bytes:
                oldest = next(iter(self._partials))
                self._drop(oldest)
                stats["drop_ip_fragment_evicted"] += 1
                if oldest == key:
                    return None
            return None
        self._drop(key)
        partial.pieces.sort()
        stats["ip_reassembled"] += 1
        return b"".join(d for _, d in partial.pieces)

    def _add(self, partial: _Partial, offset: int, data: bytes) -> bool:
        """Store the bytes of [offset, offset+len) not held yet; False if the piece cap is hit."""
        end = offset + len(data)
        new: list[tuple[int, bytes]] = []
        cur = offset
        for o, d in sorted(partial.pieces):
            e = o + len(d)
            if e <= cur or o >= end:
                continue
            if o > cur:
                new.append((cur, data[cur - offset : o - offset]))
            cur = max(cur, e)
            if cur >= end:
                break
        if cur < end:
            new.append((cur, data[cur - offset :]))
        if sum(len(d) for _, d in new) != len(data):
            self._stats["drop_ip_fragment_overlap"] += 1
        if len(partial.pieces) + len(new) > MAX_PIECES:
            return False
        partial.pieces.extend(new)
        added = sum(len(d) for _, d in new)
        partial.have += added
        self.held += added
        return True

    def _drop(self, key: Hashable) -> None:
        partial = self._partials.pop(key, None)
        if partial is not None:
            self.held -= partial.have

    def _expire(self, ts: float) -> None:
        deadline = ts - self._limits.fragment_timeout_s
        partials = self._partials
        while partials:
            key = next(iter(partials))
            if partials[key].first_ts >= deadline:
                break
            self._drop(key)
            self._stats["drop_ip_fragment_timeout"] += 1

    def advance(self, ts: float) -> None:
        """Capture time moved on: drop partial datagrams that timed out."""
        self._expire(ts)
