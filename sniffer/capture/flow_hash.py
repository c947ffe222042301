"""`FlowSplitter`: which of N replay workers owns a captured frame (a symmetric hash of its TCP flow);
`WorkerFrames`: the frames of a capture one of those workers must see.

The file-replay counterpart of the kernel's PACKET_FANOUT_HASH: both directions of a TCP connection go
to the same worker, and every worker, walking every frame of the file in the same order, computes the same
owner for it. Link layers and IP headers are read exactly as `reassembly.decode` reads them (the same
link types, VLAN tags, IPv6 extension headers), so a frame the decoder turns into a segment of flow F
is always owned by F's worker.

IP fragments: the first fragment carries the ports, so it is owned like its flow, and the owner is
remembered by datagram (addresses + IP id, bounded) for the fragments that follow it. A later fragment
arriving before its first one, anything that is not TCP, and anything unreadable go to worker 0 (the
decoder counts and drops them there, so the totals of the counters are unchanged).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Final

from librt.strings import read_i16_be, read_i32_be

from reassembly.decode import IPV4_AT, IPV6_AT
from sniffer.capture.pcapfile import Frame

__all__ = ["MAX_FRAGMENTED_DATAGRAMS", "FlowSplitter", "WorkerFrames"]

# Datagrams whose first fragment was seen and whose owner is remembered (oldest forgotten first).
MAX_FRAGMENTED_DATAGRAMS: Final = 4096

_ETHERNET, _RAW, _RAW_BSD, _RAW_OPENBSD, _NULL, _LOOP, _SLL, _SLL2, _IPV4, _IPV6 = (
    1, 101, 14, 12, 0, 108, 113, 276, 228, 229
)  # fmt: skip
_VLAN: Final = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_MAX_VLAN_TAGS: Final = 8
_AF_INET6: Final = frozenset({10, 24, 28, 30})
_IPV6_EXT_8: Final = frozenset({0, 43, 60, 135, 139, 140})
_MAX_IPV6_EXTENSIONS: Final = 16
# 0x9E3779B1 (the 32-bit golden ratio) in 16-bit halves: multiplied by a port mix (< 2^16) piecewise, every
# step stays a machine-size integer when compiled (mypyc takes a generic call for a product whose operand
# is 2^30 or more).
_GOLDEN_HI: Final = 0x9E37
_GOLDEN_LO: Final = 0x79B1
_MAX_CACHED: Final = 1 << 14  # IPv6 flows whose owner is remembered (~150 B each); emptied when full

_u16 = struct.Struct("!H").unpack_from
_u32 = struct.Struct("!I").unpack_from
_u32le = struct.Struct("<I").unpack_from
_ports = struct.Struct("!HH").unpack_from
_v4 = struct.Struct("!BxxxHHxB2xII").unpack_from  # ver/ihl, id, flags/offset, proto, src, dst
_v6_addrs = struct.Struct("!QQQQ").unpack_from
_v6_key = struct.Struct("!QQQQHH").unpack_from


class FlowSplitter:
    """`owner(linktype, frame)` -> worker index in [0, n). Stateful only for fragments: call it on
    every frame of the capture, in order, in every worker."""

    __slots__ = ("_cache", "_fragments", "_linktype", "_v4", "_v6", "n")

    def __init__(self, n: int) -> None:
        self.n = n
        self._fragments: OrderedDict[tuple[int, ...], int] = OrderedDict()
        # Owners of the common IPv6 frames by their address and port bytes (see `owner`).
        self._cache: dict[bytes, int] = {}
        # The last frame's link type, and where IPv4 / IPv6 start behind it (decode's tables).
        self._linktype = -1
        self._v4: tuple[int, int] | None = None
        self._v6: tuple[int, int] | None = None

    def owner(self, linktype: int, frame: bytes) -> int:
        # The common frame takes a short cut past the walk in _owner: any link layer the pipeline's fast
        # path reads (Ethernet, Linux cooked v1/v2 as `tcpdump -i any` writes them, raw IP), IPv4 without
        # options or IPv6 without extension headers, TCP, not a fragment. IPv4 is hashed from its address
        # and port words read in place (compiled: native reads and arithmetic, cheaper than a slice and a
        # lookup); IPv6 is keyed by its 36 address and port bytes in a cache. A file has one link type
        # (pcapng: one per interface), so the offsets of the last one are kept rather than looked up.
        if linktype != self._linktype:
            self._linktype = linktype
            self._v4 = IPV4_AT.get(linktype)
            self._v6 = IPV6_AT.get(linktype)
        n = len(frame)
        at = self._v4
        if at is not None:
            et, ip = at
            if (
                n >= ip + 24
                and frame[ip] == 0x45
                and frame[ip + 9] == 6
                and (et < 0 or (frame[et] == 8 and frame[et + 1] == 0))
                and not read_i16_be(frame, ip + 6) & 0x3FFF
            ):
                src: int = read_i32_be(frame, ip + 12)
                dst: int = read_i32_be(frame, ip + 16)
                ports: int = read_i32_be(frame, ip + 20)
                ports &= 0xFFFFFFFF  # the reads are signed, the words unsigned
                return self._mix((src ^ dst) & 0xFFFFFFFF, ports >> 16, ports & 0xFFFF)
        at = self._v6
        if at is None:
            return self._owner(linktype, frame)
        et, ip = at
        if not (
            n >= ip + 44
            and frame[ip] >> 4 == 6
            and frame[ip + 6] == 6
            and (et < 0 or (frame[et] == 0x86 and frame[et + 1] == 0xDD))
        ):
            return self._owner(linktype, frame)
        key = frame[ip + 8 : ip + 44]  # both addresses and both ports
        who = self._cache.get(key)
        if who is None:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            who = self._cache[key] = self._key_owner(key)
        return who

    def _key_owner(self, key: bytes) -> int:
        """What `_owner` gives an IPv6 frame `owner` keyed by `key`, from the key alone: the addresses and
        ports `_ipv6` hashes, without walking the frame again (each new flow's direction misses the cache
        once)."""
        a, b, c, d, sport, dport = _v6_key(key)
        return self._mix(a ^ b ^ c ^ d, sport, dport)

    def _owner(self, linktype: int, frame: bytes) -> int:
        n = len(frame)
        if linktype == _ETHERNET:
            if n < 14:
                return 0
            etype = (frame[12] << 8) | frame[13]
            off = 14
        elif linktype in (_RAW, _RAW_BSD, _RAW_OPENBSD):
            if not n:
                return 0
            version = frame[0] >> 4
            etype = 0x0800 if version == 4 else 0x86DD if version == 6 else 0
            off = 0
        elif linktype == _SLL:
            if n < 16:
                return 0
            etype = (frame[14] << 8) | frame[15]
            off = 16
        elif linktype == _SLL2:
            if n < 20:
                return 0
            etype = (frame[0] << 8) | frame[1]
            off = 20
        elif linktype in (_NULL, _LOOP):
            if n < 4:
                return 0
            be, le = _u32(frame, 0)[0], _u32le(frame, 0)[0]
            etype = 0x0800 if 2 in (be, le) else 0x86DD if be in _AF_INET6 or le in _AF_INET6 else 0
            off = 4
        elif linktype == _IPV4:
            etype, off = 0x0800, 0
        elif linktype == _IPV6:
            etype, off = 0x86DD, 0
        else:
            return 0
        if etype in _VLAN and linktype in (_ETHERNET, _SLL, _SLL2):
            tags = 0
            while etype in _VLAN:
                tags += 1
                if tags > _MAX_VLAN_TAGS or off + 4 > n:
                    return 0
                etype = (frame[off + 2] << 8) | frame[off + 3]
                off += 4
        if etype == 0x0800:
            return self._ipv4(frame, off, n)
        if etype == 0x86DD:
            return self._ipv6(frame, off, n)
        return 0

    def _ipv4(self, frame: bytes, off: int, n: int) -> int:
        if n - off < 20:
            return 0
        vihl, ident, frag, proto, src, dst = _v4(frame, off)
        if proto != 6:
            return 0
        t = off + ((vihl & 0x0F) << 2)
        if frag & 0x3FFF:
            key = (src, dst, ident)
            if frag & 0x1FFF:  # a later fragment: its datagram's owner, if its first fragment was seen
                return self._fragments.get(key, 0)
            if t + 4 > n:
                return 0
            who = self._hash(src ^ dst, frame, t)
            self._remember(key, who)
            return who
        if t + 4 > n:
            return 0
        return self._hash(src ^ dst, frame, t)

    def _ipv6(self, frame: bytes, off: int, n: int) -> int:
        if n - off < 40:
            return 0
        a, b, c, d = _v6_addrs(frame, off + 8)
        mix = a ^ b ^ c ^ d
        nh = frame[off + 6]
        p = off + 40
        for _ in range(_MAX_IPV6_EXTENSIONS):
            if nh == 6:
                return self._hash(mix, frame, p) if p + 4 <= n else 0
            if nh in _IPV6_EXT_8 or nh == 51:
                if n - p < 8:
                    return 0
                hlen = (frame[p + 1] + 1) << 3 if nh != 51 else (frame[p + 1] + 2) << 2
                nh = frame[p]
                p += hlen
                continue
            if nh == 44:
                if n - p < 8:
                    return 0
                frag_nh = frame[p]
                frag = _u16(frame, p + 2)[0]
                key = (a, b, c, d, _u32(frame, p + 4)[0])
                p += 8
                if frag & 0xFFF9 == 0:  # an atomic fragment: the header is just walked past
                    nh = frag_nh
                    continue
                if frag & 0xFFF8:
                    return self._fragments.get(key, 0)
                who = self._hash(mix, frame, p) if frag_nh == 6 and p + 4 <= n else 0
                self._remember(key, who)
                return who
            return 0
        return 0

    def _hash(self, addrs: int, frame: bytes, t: int) -> int:
        sport, dport = _ports(frame, t)
        return self._mix(addrs, sport, dport)

    def _mix(self, addrs: int, sport: int, dport: int) -> int:
        # addrs < 2^64 and the product < 2^48: h fits 64 bits unmasked
        p = sport ^ dport
        h = addrs ^ (((p * _GOLDEN_HI) << 16) + p * _GOLDEN_LO)
        h ^= h >> 29
        h ^= h >> 13
        return h % self.n

    def _remember(self, key: tuple[int, ...], who: int) -> None:
        frags = self._fragments
        frags[key] = who
        if len(frags) > MAX_FRAGMENTED_DATAGRAMS:
            frags.popitem(last=False)


class WorkerFrames:
    """The frames worker `index` of `n` must see, as (frame number in the file from 1, capture time, link
    type, frame, original length, owned by this worker): every frame it owns, and of the others only
    those at or past capture time `due` (its timeouts run there) or frame number `report_at` (so it can
    report how far it has walked). The rest are skipped here, compiled, without a step of the caller's
    loop: that is half the frames of a 2-worker replay, each walked by every worker.

    `due` and `report_at` are the caller's to move (the defaults: every frame). After the walk,
    `frame_no` and `last_ts` are the file's last frame's, whoever owned it.
    """

    def __init__(self, frames: Iterator[Frame], n: int, index: int) -> None:
        self._frames = frames
        self._splitter = FlowSplitter(n)
        self._index = index
        self.due = float("-inf")
        self.report_at = 0
        self.frame_no = 0
        self.last_ts = 0.0

    def __iter__(self) -> WorkerFrames:
        return self

    def __next__(self) -> tuple[Any, ...]:  # not a fixed tuple type: mypyc's tp_iternext needs an object
        splitter = self._splitter  # on every frame, in order: it follows fragmented datagrams
        index = self._index
        due = self.due
        report_at = self.report_at
        no = self.frame_no
        last_ts = self.last_ts
        try:
            for ts, linktype, frame, wire_len in self._frames:
                no += 1
                last_ts = ts
                owned = splitter.owner(linktype, frame) == index
                if owned or ts >= due or no >= report_at:
                    return no, ts, linktype, frame, wire_len, owned
        finally:  # also when the file turns out damaged: the frames read before count
            self.frame_no = no
            self.last_ts = last_ts
        raise StopIteration
