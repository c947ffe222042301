"""Hypothesis properties of TCP reassembly (`FlowTable`):

1. any permutation / duplication / overlapping re-segmentation of a complete two-way conversation
   yields exactly the original bytes per direction and no gap;
2. dropping any subset of segments, then close(), yields every kept byte at its true offset and gaps
   covering exactly the lost ranges: nothing invented;
3. an ISN near 2**32 (wraparound) changes nothing;
4. arbitrary segments never raise, and the event stream keeps its contract (order, contiguity, limits).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reassembly import (
    CloseReason,
    Direction,
    FlowClosed,
    FlowOpened,
    GapReason,
    Limits,
    Segment,
    Stats,
    StreamData,
    StreamEvent,
    StreamGap,
    TcpFlags,
)
from reassembly.flow_table import FlowTable

A = int(TcpFlags.ACK)
SYN = int(TcpFlags.SYN)
FIN = int(TcpFlags.FIN)
CADDR, SADDR = b"\xc0\xa8\x00\x01", b"\xc0\xa8\x00\x02"
CPORT, SPORT = 40000, 80
MASK = 0xFFFFFFFF
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A piece of one direction: (is_client, offset, data, fin).
Piece = tuple[bool, int, bytes, bool]


def check_contract(
    events: list[StreamEvent],
) -> dict[tuple[int, Direction], list[tuple[int, int, bytes | None]]]:
    """Assert the event contract and return each direction's ranges: (offset, length, data or None)."""
    state: dict[int, str] = {}
    ranges: dict[tuple[int, Direction], list[tuple[int, int, bytes | None]]] = {}
    nxt: dict[tuple[int, Direction], int] = {}
    for e in events:
        if isinstance(e, FlowOpened):
            assert e.flow_id not in state, "FlowOpened twice"
            state[e.flow_id] = "open"
            continue
        assert state.get(e.flow_id) == "open", f"event outside an open flow: {e}"
        if isinstance(e, FlowClosed):
            state[e.flow_id] = "closed"
            continue
        key = (e.flow_id, e.direction)
        if isinstance(e, StreamGap) and e.length is None:
            assert e.reason is GapReason.MIDSTREAM and e.offset == 0 and key not in nxt
            nxt[key] = 0
            continue
        assert e.offset == nxt.get(key, 0), f"not contiguous: {e}"
        if isinstance(e, StreamData):
            assert e.data
            ranges.setdefault(key, []).append((e.offset, len(e.data), e.data))
            nxt[key] = e.offset + len(e.data)
        else:
            assert e.length is not None and e.length > 0
            ranges.setdefault(key, []).append((e.offset, e.length, None))
            nxt[key] = e.offset + e.length
    assert all(v == "closed" for v in state.values()), "a flow was never closed"
    return ranges


def segments_of(pieces: Iterable[Piece], isn_c: int, isn_s: int, ts: float = 1.0) -> list[Segment]:
    out = []
    for is_client, off, data, fin in pieces:
        flags = A | (FIN if fin else 0)
        # The ACK acknowledges the peer's SYN only; callers that know better overwrite it.
        if is_client:
            seq, ack = (isn_c + 1 + off) & MASK, (isn_s + 1) & MASK
            out.append(Segment(ts, CADDR, SADDR, CPORT, SPORT, seq, ack, flags, data))
        else:
            seq, ack = (isn_s + 1 + off) & MASK, (isn_c + 1) & MASK
            out.append(Segment(ts, SADDR, CADDR, SPORT, CPORT, seq, ack, flags, data))
    return out


def handshake(isn_c: int, isn_s: int) -> list[Segment]:
    return [
        Segment(0.5, CADDR, SADDR, CPORT, SPORT, isn_c, 0, SYN, b""),
        Segment(0.5, SADDR, CADDR, SPORT, CPORT, isn_s, (isn_c + 1) & MASK, SYN | A, b""),
    ]


@st.composite
def cut(draw: st.DrawFn, stream: bytes, is_client: bool, fin: bool) -> list[Piece]:
    """Split a stream into consecutive pieces; the FIN rides on the last one or comes alone."""
    n = len(stream)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=8)))) if n > 1 else []
    bounds = [0, *[c for c in cuts if 0 < c < n], n] if n else [0]
    pieces: list[Piece] = [(is_client, a, stream[a:b], False) for a, b in itertools.pairwise(bounds)]
    if fin:
        if pieces and draw(st.booleans()):
            side, a, data, _ = pieces[-1]
            pieces[-1] = (side, a, data, True)
        else:
            pieces.append((is_client, n, b"", True))
    return pieces


@st.composite
def conversation(draw: st.DrawFn) -> tuple[bytes, bytes, list[Piece]]:
    """Both streams, split, plus overlapping retransmissions of random ranges and duplicated pieces."""
    cs = draw(st.binary(min_size=0, max_size=300))
    ss = draw(st.binary(min_size=0, max_size=300))
    pieces = draw(cut(cs, True, True)) + draw(cut(ss, False, True))
    for is_client, stream in ((True, cs), (False, ss)):
        if len(stream) > 1:
            for _ in range(draw(st.integers(0, 4))):
                a = draw(st.integers(0, len(stream) - 1))
                b = draw(st.integers(a + 1, len(stream)))
                pieces.append((is_client, a, stream[a:b], False))
    dups = draw(st.lists(st.sampled_from(pieces), max_size=6))
    order = draw(st.permutations(pieces + dups))
    return cs, ss, order


def with_true_acks(pieces: list[Piece], isn_c: int, isn_s: int, cs: bytes, ss: bytes) -> list[Segment]:
    """Segments whose ACK covers exactly the peer's bytes seen so far in this order (as a receiver behind
    the capture point would send): a permuted capture never ACKs bytes it has not shown yet."""
    seen = {True: bytearray(len(cs) + 1), False: bytearray(len(ss) + 1)}  # +1: the FIN's sequence number
    out = []
    for is_client, off, data, fin in pieces:
        seen[is_client][off : off + len(data)] = b"\x01" * len(data)
        if fin:
            seen[is_client][-1] = 1
        peer = seen[not is_client]
        acked = peer.index(0) if 0 in peer else len(peer)  # the FIN's slot is last: acked only after all data
        peer_isn = isn_s if is_client else isn_c
        seg = segments_of([(is_client, off, data, fin)], isn_c, isn_s)[0]
        seg.ack = (peer_isn + 1 + acked) & MASK
        out.append(seg)
    return out


def run(segs: list[Segment], limits: Limits | None = None) -> tuple[list[StreamEvent], Stats, FlowTable]:
    stats = Stats()
    table = FlowTable(limits or Limits(), stats)
    events: list[StreamEvent] = []
    for seg in segs:
        events += table.feed(seg)
    events += table.close(1000.0)
    return events, stats, table


def delivered(
    ranges: dict[tuple[int, Direction], list[tuple[int, int, bytes | None]]], d: Direction
) -> bytes:
    parts = ranges.get((1, d), [])
    assert all(data is not None for _, _, data in parts), f"unexpected gap: {parts}"
    return b"".join(data for _, _, data in parts if data is not None)


@SETTINGS
@given(conv=conversation(), isn_c=st.integers(0, MASK), isn_s=st.integers(0, MASK))
def test_any_reordering_duplication_or_resegmentation_yields_the_original_bytes(
    conv: tuple[bytes, bytes, list[Piece]], isn_c: int, isn_s: int
) -> None:
    cs, ss, order = conv
    events, stats, table = run(handshake(isn_c, isn_s) + with_true_acks(order, isn_c, isn_s, cs, ss))
    ranges = check_contract(events)
    assert delivered(ranges, Direction.TO_SERVER) == cs
    assert delivered(ranges, Direction.TO_CLIENT) == ss
    closes = [e for e in events if isinstance(e, FlowClosed)]
    if cs or ss:
        assert closes == [FlowClosed(1, CloseReason.FIN, 1.0)]  # closed by the FINs, before close()
    assert not [k for k in stats.losses() if k != "drop_after_close_bytes"]
    assert stats["conflict_bytes"] == 0
    assert table._pool.used == 0 and len(table) == 0


@SETTINGS
@given(
    cs=st.binary(min_size=1, max_size=300),
    ss=st.binary(min_size=0, max_size=300),
    data=st.data(),
    isn_c=st.integers(0, MASK),
    isn_s=st.integers(0, MASK),
)
def test_lost_segments_become_exact_gaps_and_nothing_is_invented(
    cs: bytes, ss: bytes, data: st.DataObject, isn_c: int, isn_s: int
) -> None:
    streams = {True: cs, False: ss}
    kept_pos: dict[bool, set[int]] = {}
    fin_kept: dict[bool, bool] = {}
    segs = handshake(isn_c, isn_s)
    for is_client in (True, False):
        pieces = data.draw(cut(streams[is_client], is_client, data.draw(st.booleans())))
        keep = [p for p in pieces if data.draw(st.booleans())]
        keep = data.draw(st.permutations(keep))
        kept_pos[is_client] = {p[1] + i for p in keep for i in range(len(p[2]))}
        fin_kept[is_client] = any(p[3] for p in keep)
        these = segments_of(keep, isn_c, isn_s)
        if not is_client:
            for seg in these:  # the server received the whole request: its ACKs say so
                seg.ack = (isn_c + 1 + len(cs)) & MASK
        segs += these
    events, stats, table = run(segs)
    ranges = check_contract(events)
    opened = any(isinstance(e, FlowOpened) for e in events)
    for is_client, d in ((True, Direction.TO_SERVER), (False, Direction.TO_CLIENT)):
        stream, kept = streams[is_client], kept_pos[is_client]
        covered: set[int] = set()
        for off, length, chunk in ranges.get((1, d), []):
            positions = set(range(off, off + length))
            assert off + length <= len(stream)
            if chunk is None:
                assert not positions & kept, "a kept byte was declared lost"
            else:
                assert positions <= kept, "delivered bytes that were never captured"
                assert chunk == stream[off : off + length]
            covered |= positions
        assert kept <= covered, "a kept byte was never delivered"
        if fin_kept[is_client] and opened:
            # The FIN proves where the stream ends: every lost byte before it is a gap.
            assert covered == set(range(len(stream)))
    lost_bytes = sum(length for rs in ranges.values() for _, length, chunk in rs if chunk is None)
    assert stats["gap_bytes"] == lost_bytes
    assert table._pool.used == 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv=conversation(), below=st.integers(0, 700), isn_s=st.integers(0, MASK))
def test_isn_near_the_wrap_changes_nothing(
    conv: tuple[bytes, bytes, list[Piece]], below: int, isn_s: int
) -> None:
    cs, ss, order = conv
    near = (1 << 32) - below  # the client's stream (<= 300 bytes) crosses 2**32 for most draws
    low = 1000
    wrapped, _, _ = run(handshake(near & MASK, isn_s) + with_true_acks(order, near & MASK, isn_s, cs, ss))
    plain, _, _ = run(handshake(low, isn_s) + with_true_acks(order, low, isn_s, cs, ss))
    assert wrapped == plain


FLAGS = st.sampled_from([0, A, SYN, SYN | A, FIN | A, int(TcpFlags.RST), int(TcpFlags.RST) | A, FIN, 0xFF])
ADDRS = st.sampled_from([CADDR, SADDR, b"\x01\x02\x03\x04" * 4, b"\x00"])
SEQS = st.one_of(st.integers(0, MASK), st.integers(990, 1400), st.integers(MASK - 200, MASK))


@st.composite
def arbitrary_segment(draw: st.DrawFn) -> Segment:
    return Segment(
        ts=draw(st.floats(0, 50, allow_nan=False)),
        src=draw(ADDRS),
        dst=draw(ADDRS),
        sport=draw(st.sampled_from([80, 40000, 40001])),
        dport=draw(st.sampled_from([80, 40000, 40001])),
        seq=draw(SEQS),
        ack=draw(SEQS),
        flags=draw(FLAGS),
        payload=draw(st.binary(max_size=40)),
    )


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.one_of(
            arbitrary_segment(),
            st.tuples(st.just("advance"), st.floats(0, 100, allow_nan=False)),
            st.tuples(st.just("ignore"), st.integers(0, 6)),
        ),
        max_size=60,
    ),
    max_flows=st.integers(1, 4),
    cap=st.integers(1, 64),
)
def test_arbitrary_segments_never_raise_and_keep_the_contract(
    steps: list[Segment | tuple[str, float]], max_flows: int, cap: int
) -> None:
    limits = Limits(
        max_flows=max_flows, max_flow_buffer_bytes=cap, max_buffer_bytes=2 * cap, reorder_timeout_s=3.0
    )
    stats = Stats()
    table = FlowTable(limits, stats, frozenset({40001}))
    events: list[StreamEvent] = []
    for step in steps:
        if isinstance(step, Segment):
            events += table.feed(step)
        elif step[0] == "advance":
            events += table.advance(step[1])
        else:
            table.ignore(int(step[1]))
        assert len(table) <= max_flows
        assert table._pool.used <= 2 * cap
    events += table.close(200.0)
    check_contract(events)
    assert len(table) == 0 and table._pool.used == 0 and not table._pool.holes
