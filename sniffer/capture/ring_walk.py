"""`walk_blocks`: the packets of the blocks a TPACKET_V3 ring released, handed to a handler one by one.

Every captured packet passes through this loop, so it is its own module, compiled with the core
(setup.py); `sniffer.capture.afpacket` keeps the socket, its setup (ctypes and all) and its counters.
The layouts are packet(7)'s: a block starts with `tpacket_block_desc` (its status, packet count and first
packet's offset at byte 8), each packet with `tpacket3_hdr` followed by its `sockaddr_ll`.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from typing import Any, Final

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

# tpacket3_hdr: next_offset, sec, nsec, snaplen, len, (status), mac, (net, hv1, padding to 48), then
# sockaddr_ll: (family, protocol, ifindex), hatype, pkttype.
_pkt_hdr = struct.Struct("<IIIII4xH30xHB").unpack_from
# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1: block_status, num_pkts, offset_to_first
_blk_hdr = struct.Struct("<III").unpack_from
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
    # Typed: compiled, the unpacked values are checked once and the arithmetic below is native.
    status: int
    num: int
    first: int
    nxt: int
    sec: int
    nsec: int
    snap: int
    wire: int
    mac: int
    hatype: int
    pkttype: int
    for _ in range(max_blocks):
        base = cur * block_size
        status, num, first = _blk_hdr(mm, base + 8)
        if not status & TP_STATUS_USER:
            break
        p = base + first
        for _ in range(num):
            nxt, sec, nsec, snap, wire, mac, hatype, pkttype = _pkt_hdr(mm, p)
            if pkttype == PACKET_OUTGOING and hatype == ARPHRD_LOOPBACK:
                dups += 1
            else:
                ts = sec + (nsec // 1000) / 1e6
                start = p + mac
                got = handle(ts, LINKTYPE_RAW, mm[start : start + snap], wire)
                if got and out is not None:
                    out.extend(got)
            p += nxt
        handed += num
        _set_status(mm, base + 8, TP_STATUS_KERNEL)
        cur = (cur + 1) % block_count
    return cur, handed, dups, ts
