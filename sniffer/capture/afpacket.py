"""`RingSocket`: one AF_PACKET socket with a TPACKET_V3 memory-mapped receive ring, in pure Python.

The measured fast path here (platform.md: 349k packets/s walking the ring vs 201k with `recv()`): the
kernel fills blocks of packets in a shared mapping and hands a block over when it is full or
`RETIRE_MS` old; `sniffer.capture.ring_walk` copies the block's used bytes out once, walks them with
fixed-layout reads and one slice per packet, then gives the block back. Setup order matters: the
socket is created with protocol 0 (it receives nothing), gets its version, ring and BPF filter, and only
then is bound, so no packet ever bypasses the filter.

`SOCK_DGRAM` (cooked): frames start at the IP header whatever the link, handed on as link type 101
(RAW). On a loopback device every packet is seen twice, once OUTGOING and once HOST; the BPF program
drops the OUTGOING copy in the kernel (libpcap skips it too), on `lo` and on `any` alike, and the walk
checks the `sockaddr_ll` after each packet header again (any program without that clause still works).

Timestamps are the kernel's receive time truncated to microseconds, computed exactly as the pcap reader
computes them (`sec + usec / 1e6`), so a live capture and a microsecond pcap of the same packets (what
tcpdump writes by default) give the same float capture times and the same events. SO_TIMESTAMPNS is set
so that the kernel stamps packets from a NIC once for all capture sockets (see the comment in
`__init__` for loopback and veth, where each socket still reads the clock on its own).

Sockets may join a PACKET_FANOUT group (hash of the flow, symmetric, with IPv4 defragmentation before
hashing): several sockets, one per worker process, then share the traffic flow by flow.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import mmap
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from reassembly.decode import LINKTYPE_RAW
from sniffer.capture.bpf import Insn, attach_filter
from sniffer.capture.ring_walk import TP_STATUS_USER, walk_blocks
from sniffer.config import split_interfaces
from sniffer.errors import CaptureError

__all__ = [
    "LINKTYPE_RAW",
    "RingSocket",
    "interface_names",
]

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
TPACKET_V3 = 2
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_EBPF = 7
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_FLAG_UNIQUEID = 0x2000
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)

BLOCK_SIZE = 1 << 20  # holds the largest super-packet (256 KiB snap) several times over
BLOCK_COUNT = 16  # 16 MiB of ring per socket (the daemon's is SNIFFER_RING_MB: see capture/workers.py)
FRAME_SIZE = 2048  # only checked by the kernel for consistency in V3 (frames are packed)
RETIRE_MS = 50  # a partly filled block is handed over after this long: the live latency floor

_blk_status = struct.Struct("<I").unpack_from  # tpacket_hdr_v1's block_status, at byte 8 of a block
_stats_v3 = struct.Struct("III")
_u32 = struct.Struct("I").pack  # fanout arguments exceed a C int, so pass them as bytes

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _SockaddrLL(ctypes.Structure):
    _fields_ = [
        ("sll_family", ctypes.c_ushort),
        ("sll_protocol", ctypes.c_ushort),
        ("sll_ifindex", ctypes.c_int),
        ("sll_hatype", ctypes.c_ushort),
        ("sll_pkttype", ctypes.c_ubyte),
        ("sll_halen", ctypes.c_ubyte),
        ("sll_addr", ctypes.c_ubyte * 8),
    ]


def interface_names(spec: str) -> list[str | None]:
    """`SNIFFER_INTERFACE` -> names to bind (None is `any`: every interface through one socket)."""
    names = split_interfaces(spec)
    if names is None:
        return [None]
    for name in names:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise CaptureError(f"SNIFFER_INTERFACE: no interface named {name!r}") from None
    return list(names)


def _bind(fd: int, ifindex: int) -> None:
    """bind() with a raw sockaddr_ll: Python's AF_PACKET address cannot say ifindex 0 (`any`)."""
    addr = _SockaddrLL(socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex)
    if _libc.bind(fd, ctypes.byref(addr), ctypes.sizeof(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class RingSocket:
    """An AF_PACKET TPACKET_V3 ring on one interface (or all), filtered in the kernel."""

    def __init__(
        self,
        interface: str | None,
        program: list[Insn],
        *,
        block_size: int = BLOCK_SIZE,
        block_count: int = BLOCK_COUNT,
        retire_ms: int = RETIRE_MS,
    ) -> None:
        self.interface = interface or "any"
        self._block_size = block_size
        self._block_count = block_count
        self._cur = 0
        self._mm: mmap.mmap | None = None
        self.last_ts = 0.0  # capture time of the last packet walked
        self.loopback_duplicates = 0  # OUTGOING copies on loopback devices the filter let through
        self.kernel_packets = 0  # PACKET_STATISTICS totals (the kernel resets them on each read)
        self.kernel_drops = 0
        self.kernel_freezes = 0
        try:
            ifindex = socket.if_nametoindex(interface) if interface else 0
        except OSError:
            raise CaptureError(f"SNIFFER_INTERFACE: no interface named {interface!r}") from None
        try:
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        except PermissionError:
            raise CaptureError(
                f"cannot capture on {self.interface}: AF_PACKET needs CAP_NET_RAW (run as root or add "
                "the NET_RAW capability)"
            ) from None
        try:
            s = self.sock
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frames = block_size // FRAME_SIZE * block_count
            req = struct.pack("7I", block_size, block_count, FRAME_SIZE, frames, retire_ms, 0, 0)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._mm = mmap.mmap(s.fileno(), block_size * block_count, mmap.MAP_SHARED)
            attach_filter(s, program)
            # Turns on the kernel-wide receive timestamp (netstamp_needed): a packet arriving from a NIC
            # is then stamped once when it enters the stack, and every capture socket (tcpdump's too)
            # reports that one time; otherwise each socket reads the clock itself on delivery, ~0.1-1 us
            # apart. Packets that keep TCP's monotonic departure time (loopback, veth) are still stamped
            # per socket: measured on lo, tcpdump's microsecond differs from ours by 1 in ~30% of packets.
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _bind(s.fileno(), ifindex)
        except OSError as exc:
            self.close()
            raise CaptureError(f"cannot open a capture ring on {self.interface}: {exc.strerror}") from None

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def block_count(self) -> int:
        return self._block_count

    def join_fanout(self, group: int | None, program: int | None = None) -> int:
        """Join (group id) or create (None) a fanout group with IPv4 defragmentation; its id. The group
        spreads flows by hash, or with `program` (an eBPF program's fd, `fanout_balance`), as the
        program says; the creator hands the program to the group."""
        flags = (PACKET_FANOUT_HASH if program is None else PACKET_FANOUT_EBPF) | PACKET_FANOUT_FLAG_DEFRAG
        if group is not None:
            self._join(group, flags)
            return group
        group = self._new_group(flags)
        if program is not None:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, struct.pack("i", program))
            except OSError as exc:
                raise CaptureError(f"PACKET_FANOUT_DATA on {self.interface}: {exc.strerror}") from None
        return group

    def _new_group(self, flags: int) -> int:
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, _u32((flags | PACKET_FANOUT_FLAG_UNIQUEID) << 16))
            return struct.unpack("I", self.sock.getsockopt(SOL_PACKET, PACKET_FANOUT, 4))[0] & 0xFFFF
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # kernels before 4.12 have no UNIQUEID: pick one
                raise CaptureError(f"PACKET_FANOUT on {self.interface}: {exc.strerror}") from None
        group = (os.getpid() ^ self.fileno() << 11) & 0xFFFF
        self._join(group, flags)
        return group

    def _join(self, group: int, flags: int) -> None:
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_FANOUT, _u32(group | flags << 16))
        except OSError as exc:
            raise CaptureError(f"PACKET_FANOUT group {group} on {self.interface}: {exc.strerror}") from None

    def walk(
        self,
        handle: Callable[[float, int, bytes, int], object],
        max_blocks: int = 4,
        out: list[Any] | None = None,
    ) -> int:
        """Hand every packet of the blocks the kernel released (at most `max_blocks`, so a busy ring
        cannot keep the caller from its other duties) to `handle(ts, LINKTYPE_RAW, frame, wire_len)`,
        give the blocks back; returns the number of packets handed over. With `out`, what `handle`
        returns (a list, e.g. `Pipeline.feed`'s exchanges) is added to it: the pipeline's own `feed` is
        then the handler, with no wrapper call per packet."""
        mm = self._mm
        if mm is None:
            return 0
        self._cur, handed, dups, self.last_ts = walk_blocks(
            mm, self._cur, self._block_size, self._block_count, max_blocks, handle, out, self.last_ts
        )
        self.loopback_duplicates += dups
        return handed - dups

    def backlog(self) -> int:
        """Blocks the kernel released that no walk took yet (a walk stops at `max_blocks`): how far
        user space is behind. A few header reads; call once per walk at most."""
        mm = self._mm
        if mm is None:
            return 0
        bs, nblocks, cur = self._block_size, self._block_count, self._cur
        n = 0
        while n < nblocks and _blk_status(mm, ((cur + n) % nblocks) * bs + 8)[0] & TP_STATUS_USER:
            n += 1
        return n

    def read_kernel_stats(self) -> tuple[int, int, int]:
        """PACKET_STATISTICS since the last read (the kernel resets them): packets that passed the
        filter (drops included), drops for a full ring, freezes; also added to the running totals."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _stats_v3.size)
        packets, drops, freezes = _stats_v3.unpack(raw)
        self.kernel_packets += packets
        self.kernel_drops += drops
        self.kernel_freezes += freezes
        return packets, drops, freezes

    def close(self) -> None:
        if self._mm is not None:
            with contextlib.suppress(BufferError):  # a view still exported: it goes with the process
                self._mm.close()
            self._mm = None
        self.sock.close()
