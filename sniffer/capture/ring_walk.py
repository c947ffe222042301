"""`walk_blocks`: the packets of the blocks a TPACKET_V3 ring released, handed to a handler one by one.

Every captured packet passes through this loop, so it is its own module, compiled with the core
(setup.py); `sniffer.capture.afpacket` keeps the socket, its setup (ctypes and all) and its counters.
The layouts are packet(7)'s: a block starts with `tpacket_block_desc` (its status, packet count, first
packet's offset and the bytes it uses, at byte 8), each packet with `tpacket3_hdr` followed by its
`sockaddr_ll`.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import Any, Final

from librt.strings import read_i16_le, read_i32_le

from reassembly.decode import LINKTYPE_RAW  # SOCK_DGRAM: every frame starts at its IP header

__all__ = [
    "ARPHRD_LOOPBACK",
    "PACKET_OUTGOING",
    "TP_STATUS_KERNEL",
    "TP_STATUS_USER",
    "walk_blocks",
]

TP_STATUS_KERNEL: Final = 0
TP_STATUS_USER: Final = 1
PACKET_OUTGOING: Final = 4
ARPHRD_LOOPBACK: Final = 772

# tpacket3_hdr (at a packet's offset p): next_offset, sec, nsec, snaplen, len (p + 0..19), mac (p + 24);
# then sockaddr_ll at p + 48: family, protocol, ifindex, hatype (p + 56), pkttype (p + 58).
# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts,
# offset_to_first_pkt, blk_len (the bytes used, from the block's start).
_blk_hdr = struct.Struct("<IIII").unpack_from
_set_status = struct.Struct("<I").pack_into


def walk_blocks(
    mm: mmap.mmap,
    cur: int,
    block_size: int,
    block_count: int,
    max_blocks: int,
    handle: Callable[[float, int, bytes, int], Any],
    out: list[Any] | None,
    ts: float,
) -> tuple[int, int, int, float]:
    """Walk at most `max_blocks` released blocks from block `cur` on: `handle(ts, LINKTYPE_RAW, frame,
    wire_len)` per packet (what it returns added to `out` when that is given), each block given back to
    the kernel after its last packet. Loopback's OUTGOING copies are skipped (the BPF program drops them
    already; a program without that clause still works). Returns the next block to read, the packets
    walked, the copies skipped among them, and the capture time of the last packet handed on (`ts` if
    none was)."""
    handed = 0
    dups = 0
    # Typed: compiled, the arithmetic below is native. The block is copied out of the ring once (up to
    # its used length) and read with librt's fixed-layout reads: compiled, a few instructions each, where
    # struct's unpack_from on the mapping was a generic call taking a buffer and making a tuple; and each
    # packet is a bytes slice rather than a slice of the mapping.
    status: int
    num: int
    first: int
    used: int
    nxt: int
    sec: int
    nsec: int
    snap: int
    wire: int
    mac: int
    word: int
    for _ in range(max_blocks):
        base = cur * block_size
        status, num, first, used = _blk_hdr(mm, base + 8)
        if not status & TP_STATUS_USER:
            break
        if not first < used <= block_size:
            used = block_size  # a length the kernel did not fill in: the whole block
        block = mm[base : base + used]
        p = first
        for _ in range(num):
            nxt = read_i32_le(block, p)
            sec = read_i32_le(block, p + 4)
            nsec = read_i32_le(block, p + 8)
            snap = read_i32_le(block, p + 12)
            wire = read_i32_le(block, p + 16)
            mac = read_i16_le(block, p + 24)
            word = read_i32_le(block, p + 56)  # sockaddr_ll's hatype (u16) then pkttype (u8)
            if (word >> 16) & 0xFF == PACKET_OUTGOING and word & 0xFFFF == ARPHRD_LOOPBACK:
                dups += 1
            else:
                ts = (sec & 0xFFFFFFFF) + ((nsec & 0xFFFFFFFF) // 1000) / 1e6
                start = p + (mac & 0xFFFF)
                got = handle(ts, LINKTYPE_RAW, block[start : start + (snap & 0xFFFFFFFF)], wire & 0xFFFFFFFF)
                if got and out is not None:
                    out.extend(got)
            p += nxt & 0xFFFFFFFF
        handed += num
        _set_status(mm, base + 8, TP_STATUS_KERNEL)
        cur = (cur + 1) % block_count
    return cur, handed, dups, ts
