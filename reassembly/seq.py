"""32-bit TCP sequence arithmetic and its mapping to 64-bit stream offsets.

A direction's stream offset 0 is the sequence number of its first data byte (ISN + 1 when the SYN was
seen, the first sequence number seen otherwise). Offsets grow without bound, so buffering and gap code
above this module never does wraparound arithmetic (zeek's relative sequence numbers).
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONTROL_WINDOW", "SEQ_HALF", "SEQ_MASK", "SEQ_WINDOW", "seq_add", "seq_diff", "seq_to_offset"]

SEQ_MASK: Final = 0xFFFFFFFF
SEQ_HALF: Final = 1 << 31
# A sequence or ack number more than this ahead of the stream's position is not believed: no TCP window
# (even scaled to its 1 GiB maximum) lets a sender be further ahead, so it is noise or another flow.
SEQ_WINDOW: Final = 1 << 30
# How far ahead of the bytes seen an ACK, FIN or RST may point and still be believed (it then declares
# or waits for the bytes in between). Stale ACKs of an old connection on a reused 4-tuple, challenge ACKs
# and the RSTs answering them carry unrelated numbers; a genuine capture loss this large (tens of
# thousands of packets in one direction) is left to the reorder timeout and the buffer caps instead.
CONTROL_WINDOW: Final = 1 << 26


def seq_add(seq: int, n: int) -> int:
    """`seq + n` modulo 2**32."""
    return (seq + n) & SEQ_MASK


def seq_diff(a: int, b: int) -> int:
    """Signed distance `a - b` in sequence space, in [-2**31, 2**31)."""
    return ((a - b + SEQ_HALF) & SEQ_MASK) - SEQ_HALF


def seq_to_offset(seq: int, seq_at: int, offset_at: int) -> int:
    """Stream offset of `seq`, given that sequence number `seq_at` sits at stream offset `offset_at`.

    The result is the offset nearest to `offset_at` (within 2**31 either side), which is how a 32-bit
    number is placed in a 64-bit stream: the reference is the stream's current position. It can be
    negative (before the stream's start); callers decide what that means.
    """
    return offset_at + seq_diff(seq, seq_at)
