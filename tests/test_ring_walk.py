"""`walk_blocks` (sniffer/capture/ring_walk.py) on a ring laid out by hand as packet(7) describes
TPACKET_V3, in an anonymous mapping: no socket, no root. The real ring is walked in tests/test_afpacket.py.
"""

from __future__ import annotations

import mmap
import struct

from reassembly.decode import LINKTYPE_RAW
from sniffer.capture.ring_walk import (
    ARPHRD_LOOPBACK,
    PACKET_OUTGOING,
    TP_STATUS_KERNEL,
    TP_STATUS_USER,
    walk_blocks,
)

BLOCK = 4096
_PKT = struct.Struct("<IIIII4xH30xHB")  # tpacket3_hdr up to mac, padding, sockaddr_ll up to pkttype
_BLK = struct.Struct("<IIII")  # block_status, num_pkts, offset_to_first_pkt, blk_len, at byte 8 of the block
FIRST = 48  # where a block's first packet starts (after tpacket_block_desc)
MAC = 80  # where a packet's bytes start, from its header


def _fill(
    mm: mmap.mmap, block: int, packets: list[tuple[int, int, bytes, int, int]], *, blk_len: bool = True
) -> None:
    """Block `block` released to user space, holding `packets`: (sec, nsec, frame, hatype, pkttype). The
    kernel counts the bytes a block uses in blk_len, 16-byte aligned per packet; `blk_len=False` leaves it
    0."""
    base = block * BLOCK
    p = base + FIRST
    for i, (sec, nsec, frame, hatype, pkttype) in enumerate(packets):
        size = MAC + len(frame)
        aligned = (size + 15) // 16 * 16
        nxt = 0 if i == len(packets) - 1 else aligned
        _PKT.pack_into(mm, p, nxt, sec, nsec, len(frame), len(frame) + 100, MAC, hatype, pkttype)
        mm[p + MAC : p + size] = frame
        p += aligned
    used = p - base if blk_len else 0
    _BLK.pack_into(mm, base + 8, TP_STATUS_USER, len(packets), FIRST, used)


def _status(mm: mmap.mmap, block: int) -> int:
    return int(_BLK.unpack_from(mm, block * BLOCK + 8)[0])


def test_packets_of_released_blocks_are_handed_over_and_the_blocks_given_back() -> None:
    mm = mmap.mmap(-1, 4 * BLOCK)
    _fill(mm, 2, [(1_700_000_000, 123_456_789, b"first", 1, 0), (1_700_000_001, 999, b"second!", 1, 0)])
    _fill(mm, 3, [(1_700_000_002, 5_000, b"third", 1, 0)])
    _fill(mm, 0, [(1_700_000_003, 0, b"wrapped", 1, 0)])
    seen: list[tuple[float, int, bytes, int]] = []

    def handle(ts: float, linktype: int, frame: bytes, wire: int) -> list[str]:
        seen.append((ts, linktype, frame, wire))
        return [frame.decode()]

    out: list[str] = []
    cur, handed, dups, ts = walk_blocks(mm, 2, BLOCK, 4, 8, handle, out, 0.0)
    # Blocks 2, 3 and then 0 (the ring wraps); block 1 is the kernel's, so the walk stops there.
    assert (cur, handed, dups) == (1, 4, 0)
    assert [s[2] for s in seen] == [b"first", b"second!", b"third", b"wrapped"]
    assert out == ["first", "second!", "third", "wrapped"]
    # Times truncated to microseconds, as the pcap reader reads a microsecond capture.
    assert seen[0][0] == 1_700_000_000 + 123_456 / 1e6
    assert seen[1][0] == 1_700_000_001 + 0 / 1e6
    assert ts == 1_700_000_003.0
    assert {s[1] for s in seen} == {LINKTYPE_RAW}
    assert [s[3] for s in seen] == [105, 107, 105, 107]
    assert [_status(mm, b) for b in (2, 3, 0)] == [TP_STATUS_KERNEL] * 3


def test_at_most_max_blocks_are_walked() -> None:
    mm = mmap.mmap(-1, 4 * BLOCK)
    for b in range(4):
        _fill(mm, b, [(10 + b, 0, b"x", 1, 0)])
    cur, handed, _, ts = walk_blocks(mm, 0, BLOCK, 4, 2, lambda *_: None, None, 0.0)
    assert (cur, handed, ts) == (2, 2, 11.0)
    assert [_status(mm, b) for b in range(4)] == [TP_STATUS_KERNEL] * 2 + [TP_STATUS_USER] * 2
    cur, handed, _, ts = walk_blocks(mm, cur, BLOCK, 4, 8, lambda *_: None, None, ts)
    assert (cur, handed, ts) == (0, 2, 13.0)


def test_loopback_outgoing_copies_are_skipped_and_counted() -> None:
    mm = mmap.mmap(-1, 2 * BLOCK)
    _fill(
        mm,
        0,
        [
            (1, 0, b"out", ARPHRD_LOOPBACK, PACKET_OUTGOING),  # the copy a filter without the clause lets by
            (1, 0, b"in", ARPHRD_LOOPBACK, 0),
            (1, 0, b"sent", 1, PACKET_OUTGOING),  # outgoing on a NIC: the only copy there is
        ],
    )
    frames: list[bytes] = []
    cur, handed, dups, _ = walk_blocks(mm, 0, BLOCK, 2, 4, lambda _t, _l, f, _w: frames.append(f), None, 0.0)
    assert (cur, handed, dups) == (1, 3, 1)
    assert frames == [b"in", b"sent"]


def test_nothing_released_walks_nothing() -> None:
    mm = mmap.mmap(-1, 2 * BLOCK)
    assert walk_blocks(mm, 1, BLOCK, 2, 4, lambda *_: None, None, 5.0) == (1, 0, 0, 5.0)


def test_a_block_is_read_up_to_its_used_length_or_whole_without_one() -> None:
    # The walk copies a block out of the ring once, up to blk_len; a length the kernel did not fill in
    # (0, or past the block) means the whole block. The bytes after the used length are never read.
    mm = mmap.mmap(-1, 3 * BLOCK)
    big = bytes(range(256)) * 12  # 3 KB: the block's last packet ends near its end
    _fill(mm, 0, [(1, 0, b"a" * 100, 1, 0), (2, 0, big[: BLOCK - FIRST - 3 * MAC - 200], 1, 0)])
    _fill(mm, 1, [(3, 0, b"kept", 1, 0), (4, 0, b"whole", 1, 0)], blk_len=False)
    _fill(mm, 2, [(5, 0, b"too long", 1, 0)])
    struct.pack_into("<I", mm, 2 * BLOCK + 20, BLOCK + 1)  # blk_len past the block
    frames: list[bytes] = []
    cur, handed, _, ts = walk_blocks(mm, 0, BLOCK, 3, 3, lambda _t, _l, f, _w: frames.append(f), None, 0.0)
    assert (cur, handed, ts) == (0, 5, 5.0)
    assert frames == [b"a" * 100, big[: BLOCK - FIRST - 3 * MAC - 200], b"kept", b"whole", b"too long"]
