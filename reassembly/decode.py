"""Decode one captured frame (link layer -> IPv4/IPv6 -> TCP) into a `Segment`, or count why not.

Hand-written with `struct.unpack_from` on the frame and one slice for the payload: a dpkt object tree per
packet costs ~6 us, this ~1 us. Link types: NULL (0), LOOP (108), Ethernet (1) with any mix of 802.1Q /
802.1ad / 0x9100 / 0x9200 tags, Linux SLL (113) and SLL2 (276), raw IP (101, 12, 14), IPv4 (228),
IPv6 (229). IPv4 header checksums are not checked: with checksum offload a host's own packets carry
garbage there. IPv4 and IPv6 fragments are reassembled (`ip_fragments`).

Counters (in the shared `Stats`): frames, segments, drop_not_ip, drop_not_tcp, drop_malformed,
drop_unsupported_linktype, truncated_snaplen (the IP datagram was cut by the snap length: what is there is
decoded and the TCP layer sees the missing tail as a hole), ip_fragments, ip_reassembled,
drop_ip_fragment_* (see `ip_fragments`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from reassembly.events import Segment
from reassembly.ip_fragments import FragmentReassembler
from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = [
    "IPV4_AT",
    "IPV6_AT",
    "LINKTYPES",
    "MAX_IPV6_EXTENSIONS",
    "MAX_VLAN_TAGS",
    "Decoder",
]

LINKTYPE_NULL: Final = 0
LINKTYPE_ETHERNET: Final = 1
LINKTYPE_RAW_OPENBSD: Final = 12
LINKTYPE_RAW_BSD: Final = 14
LINKTYPE_RAW: Final = 101
LINKTYPE_LOOP: Final = 108
LINKTYPE_LINUX_SLL: Final = 113
LINKTYPE_IPV4: Final = 228
LINKTYPE_IPV6: Final = 229
LINKTYPE_LINUX_SLL2: Final = 276
LINKTYPES: Final = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_RAW_OPENBSD,
        LINKTYPE_RAW_BSD,
        LINKTYPE_RAW,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        LINKTYPE_LINUX_SLL2,
    }
)

ETH_IPV4: Final = 0x0800
# Where an untagged IPv4 packet starts, by link type: (index of the big-endian EtherType that must say
# IPv4, or -1 when the link type carries IP only; offset of the IP header). The link types a fast path
# can take without `decode`'s walk: Ethernet, Linux cooked v1/v2, raw IP (live AF_PACKET capture).
IPV4_AT: Final[dict[int, tuple[int, int]]] = {
    LINKTYPE_ETHERNET: (12, 14),
    LINKTYPE_LINUX_SLL: (14, 16),
    LINKTYPE_LINUX_SLL2: (0, 20),
    LINKTYPE_RAW: (-1, 0),
    LINKTYPE_IPV4: (-1, 0),
}
ETH_IPV6: Final = 0x86DD
# The same for an IPv6 packet (EtherType 0x86DD; -1: the version nibble says it).
IPV6_AT: Final[dict[int, tuple[int, int]]] = {
    LINKTYPE_ETHERNET: (12, 14),
    LINKTYPE_LINUX_SLL: (14, 16),
    LINKTYPE_LINUX_SLL2: (0, 20),
    LINKTYPE_RAW: (-1, 0),
    LINKTYPE_IPV6: (-1, 0),
}
VLAN_ETHERTYPES: Final = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
# QinQ stacks two tags, carrier setups three; past 8 it is a loop of garbage, not a network.
MAX_VLAN_TAGS: Final = 8
# BSD loopback address families: AF_INET is 2 everywhere; AF_INET6 is 24 (NetBSD, OpenBSD), 28
# (FreeBSD, DragonFly), 30 (macOS) and 10 on Linux.
AF_INET: Final = 2
AF_INET6: Final = frozenset({10, 24, 28, 30})
# IPv6 extension headers that are walked past: hop-by-hop, routing, destination options, mobility,
# HIP, shim6 (length in 8-octet units) and AH (in 4-octet units).
IPV6_EXT_8: Final = frozenset({0, 43, 60, 135, 139, 140})
IPPROTO_AH: Final = 51
IPPROTO_FRAGMENT: Final = 44
IPPROTO_TCP: Final = 6
MAX_IPV6_EXTENSIONS: Final = 16

# The unpackers are typed with what they return: compiled, each result is checked once and the arithmetic
# on its numbers is native (untyped, every operation on them was a generic call). This is the general path:
# the common frame takes the pipeline's fused fast path, which reads its few numbers with librt instead.
_Ints5 = tuple[int, int, int, int, int]
_Ints6 = tuple[int, int, int, int, int, int]
_u16: Final[Callable[[bytes, int], tuple[int]]] = struct.Struct("!H").unpack_from
_u32: Final[Callable[[bytes, int], tuple[int]]] = struct.Struct("!I").unpack_from
_u32le: Final[Callable[[bytes, int], tuple[int]]] = struct.Struct("<I").unpack_from
# ver/ihl, total length, id, flags/offset, proto
_ipv4_hdr: Final[Callable[[bytes, int], _Ints5]] = struct.Struct("!BxHHHxB").unpack_from
# IPv4 without options then TCP: ver/ihl, total length, flags/offset, proto, src, dst, then as _tcp_hdr
_EthIpv4Tcp = tuple[int, int, int, int, bytes, bytes, int, int, int, int, int, int]
_eth_ipv4_tcp: Final[Callable[[bytes, int], _EthIpv4Tcp]] = struct.Struct("!BxHxxHxBxx4s4sHHIIHH").unpack_from
# ports, seq, ack, offset/flags, window
_tcp_hdr: Final[Callable[[bytes, int], _Ints6]] = struct.Struct("!HHIIHH").unpack_from


class Decoder:
    """Frames in, `Segment`s out; every frame that yields none is counted once under a reason."""

    def __init__(self, limits: Limits, stats: Stats) -> None:
        self._stats = stats
        self._fragments = FragmentReassembler(limits, stats)

    @property
    def fragments_pending(self) -> int:
        """Partial fragmented datagrams held (at most `Limits.max_fragment_datagrams`)."""
        return len(self._fragments)

    def advance(self, ts: float) -> None:
        """Capture time moved on: expire partial fragmented datagrams."""
        self._fragments.advance(ts)

    def decode(self, ts: float, linktype: int, frame: bytes, wire_len: int | None = None) -> Segment | None:
        stats = self._stats
        stats["frames"] += 1
        n = len(frame)
        if linktype == LINKTYPE_ETHERNET:
            if n >= 54 and frame[12] == 8 and frame[13] == 0:
                # Fast path for the common case (Ethernet, IPv4 without options, unfragmented, TCP, whole):
                # one unpack for both headers. Anything else falls through to the general path.
                vihl, total, frag, proto, src, dst, sport, dport, seq, ack, offflags, window = _eth_ipv4_tcp(
                    frame, 14
                )
                end = 14 + total
                doff = (offflags >> 10) & 0x3C
                if (
                    vihl == 0x45
                    and proto == 6
                    and not frag & 0x3FFF
                    and end <= n
                    and 20 <= doff <= total - 20
                ):
                    stats["segments"] += 1
                    return Segment(
                        ts, src, dst, sport, dport, seq, ack, offflags & 0xFF, frame[34 + doff : end], window
                    )
            if n < 14:
                stats["drop_malformed"] += 1
                return None
            etype = (frame[12] << 8) | frame[13]
            off = 14
            if etype in VLAN_ETHERTYPES:
                return self._vlan(ts, frame, off, etype, wire_len)
        elif linktype in (LINKTYPE_RAW, LINKTYPE_RAW_BSD, LINKTYPE_RAW_OPENBSD):
            if not n:
                stats["drop_malformed"] += 1
                return None
            version = frame[0] >> 4
            etype = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else 0
            off = 0
        elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            if n < 4:
                stats["drop_malformed"] += 1
                return None
            # The family is in the capturing host's byte order (NULL) or big-endian (LOOP): try both.
            af_be = _u32(frame, 0)[0]
            af_le = _u32le(frame, 0)[0]
            if af_be == AF_INET or af_le == AF_INET:
                etype = ETH_IPV4
            elif af_be in AF_INET6 or af_le in AF_INET6:
                etype = ETH_IPV6
            else:
                etype = 0
            off = 4
        elif linktype == LINKTYPE_LINUX_SLL:
            if n < 16:
                stats["drop_malformed"] += 1
                return None
            etype = (frame[14] << 8) | frame[15]
            off = 16
            if etype in VLAN_ETHERTYPES:
                return self._vlan(ts, frame, off, etype, wire_len)
        elif linktype == LINKTYPE_LINUX_SLL2:
            if n < 20:
                stats["drop_malformed"] += 1
                return None
            etype = (frame[0] << 8) | frame[1]
            off = 20
            if etype in VLAN_ETHERTYPES:
                return self._vlan(ts, frame, off, etype, wire_len)
        elif linktype == LINKTYPE_IPV4:
            etype = ETH_IPV4
            off = 0
        elif linktype == LINKTYPE_IPV6:
            etype = ETH_IPV6
            off = 0
        else:
            stats["drop_unsupported_linktype"] += 1
            return None
        if etype == ETH_IPV4:
            return self._ipv4(ts, frame, off, wire_len)
        if etype == ETH_IPV6:
            return self._ipv6(ts, frame, off, wire_len)
        stats["drop_not_ip"] += 1
        return None

    def _vlan(self, ts: float, frame: bytes, off: int, etype: int, wire_len: int | None) -> Segment | None:
        """Walk 802.1Q/802.1ad tags: each is TCI (2 bytes) then the next EtherType."""
        n = len(frame)
        tags = 0
        while etype in VLAN_ETHERTYPES:
            tags += 1
            if tags > MAX_VLAN_TAGS or off + 4 > n:
                self._stats["drop_malformed"] += 1
                return None
            etype = (frame[off + 2] << 8) | frame[off + 3]
            off += 4
        if etype == ETH_IPV4:
            return self._ipv4(ts, frame, off, wire_len)
        if etype == ETH_IPV6:
            return self._ipv6(ts, frame, off, wire_len)
        self._stats["drop_not_ip"] += 1
        return None

    def _ipv4(self, ts: float, frame: bytes, off: int, wire_len: int | None) -> Segment | None:
        stats = self._stats
        n = len(frame)
        if n - off < 20:
            stats["drop_malformed"] += 1
            return None
        vihl, total, ident, frag, proto = _ipv4_hdr(frame, off)
        ihl = (vihl & 0x0F) << 2
        if vihl >> 4 != 4 or ihl < 20 or n - off < ihl:
            stats["drop_malformed"] += 1
            return None
        if total == 0:
            # TCP segmentation offload: a host's own outgoing super-packet says 0; the frame is the truth
            end = n
            if wire_len is not None and wire_len > n:
                stats["truncated_snaplen"] += 1
        else:
            if total < ihl:
                stats["drop_malformed"] += 1
                return None
            end = off + total
            if end > n:
                stats["truncated_snaplen"] += 1
                end = n
        if proto != IPPROTO_TCP:
            stats["drop_not_tcp"] += 1
            return None
        src = frame[off + 12 : off + 16]
        dst = frame[off + 16 : off + 20]
        if frag & 0x3FFF:  # more-fragments flag or a non-zero offset
            if end < off + total:  # a fragment cut by the snap length cannot be put back together
                stats["drop_ip_fragment_truncated"] += 1
                return None
            data = self._fragments.feed(
                ts,
                (src, dst, ident, proto),
                (frag & 0x1FFF) << 3,
                bool(frag & 0x2000),
                frame[off + ihl : end],
            )
            if data is None:
                return None
            return self._tcp(ts, data, 0, len(data), src, dst)
        return self._tcp(ts, frame, off + ihl, end, src, dst)

    def _ipv6(self, ts: float, frame: bytes, off: int, wire_len: int | None) -> Segment | None:
        stats = self._stats
        n = len(frame)
        if n - off < 40 or frame[off] >> 4 != 6:
            stats["drop_malformed"] += 1
            return None
        plen = _u16(frame, off + 4)[0]
        nh = frame[off + 6]
        src = frame[off + 8 : off + 24]
        dst = frame[off + 24 : off + 40]
        p = off + 40
        if plen == 0:
            # a jumbogram (hop-by-hop option) or segmentation offload: the frame is the truth
            end = n
            if wire_len is not None and wire_len > n:
                stats["truncated_snaplen"] += 1
        else:
            end = p + plen
            if end > n:
                stats["truncated_snaplen"] += 1
                end = n
        return self._ipv6_upper(ts, frame, p, end, nh, src, dst, end < p + plen)

    def _ipv6_upper(
        self, ts: float, buf: bytes, p: int, end: int, nh: int, src: bytes, dst: bytes, cut: bool
    ) -> Segment | None:
        """Walk the extension headers from `p` to the upper-layer protocol, reassembling fragments."""
        stats = self._stats
        for _ in range(MAX_IPV6_EXTENSIONS):
            if nh == IPPROTO_TCP:
                return self._tcp(ts, buf, p, end, src, dst)
            if nh in IPV6_EXT_8 or nh == IPPROTO_AH:
                if end - p < 8:
                    stats["drop_malformed"] += 1
                    return None
                hlen = (buf[p + 1] + 1) << 3 if nh != IPPROTO_AH else (buf[p + 1] + 2) << 2
                nh = buf[p]
                p += hlen
                continue
            if nh == IPPROTO_FRAGMENT:
                if end - p < 8:
                    stats["drop_malformed"] += 1
                    return None
                frag_nh = buf[p]
                frag = _u16(buf, p + 2)[0]
                ident = _u32(buf, p + 4)[0]
                p += 8
                if frag & 0xFFF9 == 0:  # an atomic fragment (RFC 6946): offset 0, no more
                    nh = frag_nh
                    continue
                if cut:
                    stats["drop_ip_fragment_truncated"] += 1
                    return None
                data = self._fragments.feed(ts, (src, dst, ident), frag & 0xFFF8, bool(frag & 1), buf[p:end])
                if data is None:
                    return None
                # the reassembled payload starts with the header the fragment header named
                return self._ipv6_upper(ts, data, 0, len(data), frag_nh, src, dst, False)
            stats["drop_not_tcp"] += 1
            return None
        stats["drop_malformed"] += 1
        return None

    def _tcp(self, ts: float, buf: bytes, t: int, end: int, src: bytes, dst: bytes) -> Segment | None:
        if end - t < 20:
            self._stats["drop_malformed"] += 1
            return None
        sport, dport, seq, ack, offflags, window = _tcp_hdr(buf, t)
        doff = (offflags >> 10) & 0x3C
        if doff < 20 or t + doff > end:
            self._stats["drop_malformed"] += 1
            return None
        self._stats["segments"] += 1
        return Segment(ts, src, dst, sport, dport, seq, ack, offflags & 0xFF, buf[t + doff : end], window)
