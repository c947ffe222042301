"""One direction's reassembly, driven through `FlowTable` with tables of `Segment`s: in-order delivery,
out-of-order buffering, overlaps (first copy wins, conflicts counted), duplicates, 32-bit wraparound,
the gap decisions (peer ACK, reorder timeout, buffer caps) and the sequence arithmetic under them."""

from __future__ import annotations

import pytest

from reassembly import (
    FlowClosed,
    FlowOpened,
    Limits,
    Segment,
    Stats,
    StreamData,
    StreamEvent,
    StreamGap,
    TcpFlags,
)
from reassembly.flow_table import FlowTable
from reassembly.seq import seq_add, seq_diff, seq_to_offset

A = int(TcpFlags.ACK)
SYN = int(TcpFlags.SYN)
FIN = int(TcpFlags.FIN)
CLI = (b"\x0a\x00\x00\x01", 40000)
SRV = (b"\x0a\x00\x00\x02", 80)
ISN_C = 1000
ISN_S = 5000


def c(
    off: int, data: bytes = b"", flags: int = A, ack: int = 0, ts: float = 0.0, isn: int = ISN_C
) -> Segment:
    """Client->server segment at client stream offset `off` (seq = isn + 1 + off)."""
    return Segment(ts, CLI[0], SRV[0], CLI[1], SRV[1], (isn + 1 + off) & 0xFFFFFFFF, ack, flags, data)


def s_ack(ack_off: int, ts: float = 0.0, isn_c: int = ISN_C) -> Segment:
    """Server pure ACK acknowledging client stream offset `ack_off`."""
    return Segment(ts, SRV[0], CLI[0], SRV[1], CLI[1], ISN_S + 1, (isn_c + 1 + ack_off) & 0xFFFFFFFF, A, b"")


def handshake(isn_c: int = ISN_C) -> list[Segment]:
    return [
        Segment(0.0, CLI[0], SRV[0], CLI[1], SRV[1], isn_c, 0, SYN, b""),
        Segment(0.0, SRV[0], CLI[0], SRV[1], CLI[1], ISN_S, (isn_c + 1) & 0xFFFFFFFF, SYN | A, b""),
        # The client's handshake ACK carries no ACK bit here, so the table tests control every ACK.
    ]


def run(
    segs: list[Segment],
    limits: Limits | None = None,
    *,
    advance: float | None = None,
    close: float | None = None,
) -> tuple[list[StreamEvent], Stats, FlowTable]:
    stats = Stats()
    table = FlowTable(limits or Limits(), stats)
    events: list[StreamEvent] = []
    for seg in segs:
        events += table.feed(seg)
    if advance is not None:
        events += table.advance(advance)
    if close is not None:
        events += table.close(close)
    return events, stats, table


def compact(events: list[StreamEvent]) -> list[tuple[object, ...]]:
    """Stream events of the client direction as short tuples (open/close kept for ordering checks)."""
    rows: list[tuple[object, ...]] = []
    for e in events:
        if isinstance(e, StreamData):
            rows.append(("data", e.offset, e.data))
        elif isinstance(e, StreamGap):
            rows.append(("gap", e.offset, e.length, e.reason.value))
        elif isinstance(e, FlowOpened):
            rows.append(("open",))
        elif isinstance(e, FlowClosed):
            rows.append(("closed", e.reason.value))
    return rows


def test_seq_arithmetic_wraps() -> None:
    assert seq_add(0xFFFFFFFF, 2) == 1
    assert seq_diff(1, 0xFFFFFFFF) == 2
    assert seq_diff(0xFFFFFFFF, 1) == -2
    assert seq_diff(0x80000000, 0) == -(1 << 31)
    # A sequence number just past the wrap maps to the offset after the reference, not 4 GiB back.
    assert seq_to_offset(5, 0xFFFFFFF0, 10_000_000_000) == 10_000_000_021
    assert seq_to_offset(0xFFFFFFF0, 5, 3) == -18


def test_in_order_delivery_passes_payload_objects_through() -> None:
    payloads = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"]
    segs = [*handshake()]
    off = 0
    for p in payloads:
        segs.append(c(off, p))
        off += len(p)
    events, stats, _ = run(segs)
    data = [e for e in events if isinstance(e, StreamData)]
    assert [e.offset for e in data] == [0, 16, 25]
    # Zero copy: the very objects fed come out.
    assert all(d.data is p for d, p in zip(data, payloads, strict=True))
    assert isinstance(events[0], FlowOpened) and not events[0].mid_stream
    assert not stats.losses()


def test_out_of_order_is_buffered_then_delivered_in_order() -> None:
    segs = [
        *handshake(),
        c(6, b"ghi", ts=1.0),
        c(3, b"def", ts=2.0),
        c(0, b"abc", ts=3.0),
        c(9, b"jkl", ts=4.0),
    ]
    events, stats, _ = run(segs)
    assert compact(events) == [
        ("open",),
        ("data", 0, b"abc"),
        ("data", 3, b"def"),
        ("data", 6, b"ghi"),
        ("data", 9, b"jkl"),
    ]
    assert [e.ts for e in events if isinstance(e, StreamData)] == [3.0, 3.0, 3.0, 4.0]
    assert stats["tcp_ooo_segments"] == 2
    assert not stats.losses()


def test_overlap_first_copy_wins_and_conflicts_are_counted() -> None:
    # Buffered "CDEF" at 2..6, then "xyzW" at 4..8 overlaps it with two differing bytes ("EF" vs "xy").
    segs = [*handshake(), c(2, b"CDEF"), c(4, b"xyzW"), c(0, b"ab")]
    events, stats, _ = run(segs)
    joined = b"".join(e.data for e in events if isinstance(e, StreamData))
    assert joined == b"abCDEFzW"
    assert stats["conflict_bytes"] == 2
    assert stats["tcp_retrans_bytes"] == 2


def test_overlap_spanning_several_chunks_fills_only_the_holes() -> None:
    segs = [*handshake(), c(2, b"CD"), c(6, b"GH"), c(1, b"BcDeFgHI"), c(0, b"A")]
    events, stats, _ = run(segs)
    joined = b"".join(e.data for e in events if isinstance(e, StreamData))
    assert joined == b"ABCDeFGHI"
    assert stats["conflict_bytes"] == 2  # "c" vs "C", "g" vs "G"


def test_retransmission_differing_from_delivered_bytes_is_counted_not_delivered() -> None:
    segs = [*handshake(), c(0, b"hello"), c(3, b"LOworld"), c(5, b"worlD")]
    events, stats, _ = run(segs)
    assert compact(events)[1:] == [("data", 0, b"hello"), ("data", 5, b"world")]
    assert stats["conflict_bytes"] == 3  # "LO" vs "lo", then "D" vs "d"
    assert stats["tcp_duplicates"] == 1
    assert stats["tcp_retrans_bytes"] == 2


def test_exact_duplicates_of_every_packet_do_not_change_the_stream() -> None:
    base = [*handshake(), c(0, b"abc"), c(6, b"ghi"), c(3, b"def"), c(9, b"jkl", flags=A | FIN)]
    doubled = [seg for seg in base for _ in (0, 1)]
    events, stats, _ = run(doubled)
    once, _, _ = run(base)
    assert compact(events) == compact(once)
    # Every second copy: SYN, SYN-ACK (retransmitted handshake), 4 data segments.
    assert stats["tcp_syn_retrans"] == 2
    assert stats["tcp_duplicates"] == 4
    assert not stats.losses()


@pytest.mark.parametrize("isn", [0xFFFFFFFF - 3, 0xFFFFFFFF, 0xFFFFFFF0, 0x7FFFFFFF])
def test_sequence_wraparound_is_invisible(isn: int) -> None:
    segs = [
        *handshake(isn),
        c(4, b"efgh", isn=isn),
        c(0, b"abcd", isn=isn),
        c(8, b"ijkl", isn=isn),
        c(12, b"mn", isn=isn, flags=A | FIN),
    ]
    events, stats, _ = run(segs)
    assert compact(events) == [
        ("open",),
        ("data", 0, b"abcd"),
        ("data", 4, b"efgh"),
        ("data", 8, b"ijkl"),
        ("data", 12, b"mn"),
    ]
    assert not stats.losses()


def test_stream_longer_than_4gib_keeps_64bit_offsets() -> None:
    # Walk the sequence space with a gap declared by the peer's ACKs every 32 MiB (within CONTROL_WINDOW).
    step = 1 << 25
    n = 130  # 4.06 GiB
    segs = [*handshake(), c(0, b"x")]
    for i in range(1, n + 1):
        segs.append(s_ack(i * step))
    segs.append(c(n * step, b"after 4 GiB"))
    events, _, _ = run(segs)
    gaps = [e for e in events if isinstance(e, StreamGap)]
    assert [(g.offset, g.length) for g in gaps] == [(1, step - 1)] + [(i * step, step) for i in range(1, n)]
    last = events[-1]
    assert isinstance(last, StreamData) and last.offset == n * step and last.data == b"after 4 GiB"


def test_ack_beyond_the_control_window_or_from_an_unstarted_side_is_not_proof_of_loss() -> None:
    far = (1 << 26) + 10
    stale = Segment(0.0, SRV[0], CLI[0], SRV[1], CLI[1], 777, (ISN_C + 1 + 5000) & 0xFFFFFFFF, A, b"")
    segs = [handshake()[0], stale, c(0, b"ab"), handshake()[1], s_ack(far), c(2, b"cd")]
    events, stats, _ = run(segs)
    assert compact(events) == [("open",), ("data", 0, b"ab"), ("data", 2, b"cd")]
    assert not stats.losses()


def test_ack_past_a_hole_declares_it_lost_before_later_data() -> None:
    segs = [*handshake(), c(0, b"ab"), c(5, b"fg"), s_ack(7), c(7, b"hi")]
    events, stats, _ = run(segs)
    assert compact(events) == [
        ("open",),
        ("data", 0, b"ab"),
        ("gap", 2, 3, "acked_unseen"),
        ("data", 5, b"fg"),
        ("data", 7, b"hi"),
    ]
    assert stats["gap_acked_unseen"] == 1 and stats["gap_bytes"] == 3


def test_ack_of_unseen_bytes_without_buffered_data() -> None:
    events, _, _ = run([*handshake(), c(0, b"ab"), s_ack(10), c(10, b"k")])
    assert compact(events)[1:] == [("data", 0, b"ab"), ("gap", 2, 8, "acked_unseen"), ("data", 10, b"k")]


def test_ack_one_past_the_data_may_be_a_missed_fin_and_is_not_a_gap() -> None:
    events, stats, _ = run([*handshake(), c(0, b"ab"), s_ack(3)])
    assert compact(events)[1:] == [("data", 0, b"ab")]
    assert not stats.losses()


def test_ack_behind_or_far_ahead_is_ignored() -> None:
    far = 1 << 31  # half the sequence space away: not a believable ACK
    events, stats, _ = run([*handshake(), c(0, b"ab"), c(4, b"ef"), s_ack(1), s_ack(far), c(2, b"cd")])
    assert compact(events)[1:] == [("data", 0, b"ab"), ("data", 2, b"cd"), ("data", 4, b"ef")]
    assert not stats.losses()


def test_reorder_timeout_skips_holes_only_after_the_timeout() -> None:
    limits = Limits(reorder_timeout_s=5.0)
    stats = Stats()
    table = FlowTable(limits, stats)
    events: list[StreamEvent] = []
    for seg in [*handshake(), c(0, b"ab", ts=10.0), c(4, b"ef", ts=11.0), c(9, b"j", ts=13.0)]:
        events += table.feed(seg)
    assert table.advance(15.9) == []
    events += table.advance(16.0)  # the hole at 2 appeared at 11.0; the one at 6 at 13.0
    assert compact(events)[1:] == [("data", 0, b"ab"), ("gap", 2, 2, "timeout"), ("data", 4, b"ef")]
    events += table.advance(18.0)
    assert compact(events)[4:] == [("gap", 6, 3, "timeout"), ("data", 9, b"j")]
    assert stats["gap_timeout"] == 2 and stats["gap_bytes"] == 5
    # Data arriving later for a skipped range is a retransmission now, never delivered out of order.
    assert table.feed(c(2, b"CD", ts=19.0)) == []


def test_reorder_timeout_skips_all_holes_that_are_old_enough_at_once() -> None:
    segs = [*handshake(), c(0, b"a", ts=1.0), c(2, b"c", ts=2.0), c(4, b"e", ts=2.5), c(6, b"g", ts=9.0)]
    events, _, _ = run(segs, Limits(reorder_timeout_s=5.0), advance=8.0)
    assert compact(events)[1:] == [
        ("data", 0, b"a"),
        ("gap", 1, 1, "timeout"),
        ("data", 2, b"c"),
        ("gap", 3, 1, "timeout"),
        ("data", 4, b"e"),
    ]


def test_per_direction_buffer_cap_skips_to_the_earliest_buffered_byte() -> None:
    limits = Limits(max_flow_buffer_bytes=10)
    segs = [*handshake(), c(0, b"a"), c(5, b"fghij"), c(12, b"mnopqr")]
    events, stats, table = run(segs, limits)
    assert compact(events)[1:] == [
        ("data", 0, b"a"),
        ("gap", 1, 4, "overflow"),
        ("data", 5, b"fghij"),
    ]
    assert stats["cap_flow_buffer"] == 1 and stats["gap_overflow"] == 1
    assert table._pool.used == 6  # "mnopqr" still waits for its hole


def test_global_buffer_cap_applies_across_flows() -> None:
    limits = Limits(max_buffer_bytes=8)
    other = (b"\x0a\x00\x00\x03", 40001)
    segs = [
        *handshake(),
        Segment(0.0, other[0], SRV[0], other[1], SRV[1], 77, 0, SYN, b""),
        Segment(0.0, other[0], SRV[0], other[1], SRV[1], 78 + 10, 0, A, b"123456"),  # flow 2 buffers 6 bytes
        c(0, b"a"),
        c(3, b"def"),  # flow 1 would hold 3 more: 9 > 8, so flow 1 (the one asking) skips its hole
    ]
    events, stats, table = run(segs, limits)
    f1 = [e for e in events if e.flow_id == 1]
    assert compact(f1)[1:] == [("data", 0, b"a"), ("gap", 1, 2, "overflow"), ("data", 3, b"def")]
    assert stats["cap_buffer"] == 1
    assert table._pool.used == 6


def test_single_segment_larger_than_the_cap_is_delivered_after_a_gap() -> None:
    events, _, table = run([*handshake(), c(3, b"x" * 50)], Limits(max_flow_buffer_bytes=16))
    assert compact(events)[1:] == [("gap", 0, 3, "overflow"), ("data", 3, b"x" * 50)]
    assert table._pool.used == 0


def test_close_gaps_every_hole_and_delivers_everything_buffered() -> None:
    segs = [*handshake(), c(2, b"cd"), c(6, b"gh")]
    events, _, table = run(segs, close=50.0)
    assert compact(events) == [
        ("open",),
        ("gap", 0, 2, "closed"),
        ("data", 2, b"cd"),
        ("gap", 4, 2, "closed"),
        ("data", 6, b"gh"),
        ("closed", "end"),
    ]
    assert table._pool.used == 0 and len(table) == 0 and not table._pool.holes


def test_segment_far_beyond_the_window_is_dropped() -> None:
    events, stats, table = run([*handshake(), c(0, b"a"), c((1 << 30) + 2, b"zz")])
    assert compact(events)[1:] == [("data", 0, b"a")]
    assert stats["drop_out_of_window_bytes"] == 2
    assert table._pool.used == 0


def test_keepalive_probe_byte_is_not_a_conflict() -> None:
    events, stats, _ = run([*handshake(), c(0, b"abc"), c(2, b"\x00"), c(3, b"d")])
    assert compact(events)[1:] == [("data", 0, b"abc"), ("data", 3, b"d")]
    assert stats["tcp_keepalives"] == 1 and stats["conflict_bytes"] == 0
