"""Decoder: every link type, VLAN stacks, IPv6 extension headers, IP fragments, malformed frames, and the
public captures against tshark's count of TCP segments."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, CookedLinux, Dot1AD, Dot1Q, Ether

from reassembly import Limits, Segment, Stats, TcpFlags
from reassembly.decode import MAX_VLAN_TAGS, Decoder
from sniffer.capture.pcapfile import open_capture

PUBLIC = Path(__file__).resolve().parents[2] / "shared/pcaps/public"

V4_TCP = IP(src="192.0.2.1", dst="198.51.100.7") / TCP(
    sport=40000, dport=8080, seq=123456789, ack=987654321, flags="PA", window=501
)
V6_TCP = IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(
    sport=40000, dport=8080, seq=123456789, ack=987654321, flags="PA", window=501
)
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
BODY = b"GET /index.html HTTP/1.1\r\nHost: example\r\n\r\n"


def decode(linktype: int, frame: bytes, wire_len: int | None = None, limits: Limits | None = None):
    stats = Stats()
    seg = Decoder(limits or Limits(), stats).decode(1.5, linktype, frame, wire_len)
    return seg, stats


def assert_v4_segment(seg: Segment | None, payload: bytes = BODY, ts: float = 1.5) -> None:
    assert seg is not None
    assert seg.src == socket.inet_aton("192.0.2.1") and seg.dst == socket.inet_aton("198.51.100.7")
    assert (seg.sport, seg.dport, seg.seq, seg.ack, seg.window) == (40000, 8080, 123456789, 987654321, 501)
    assert seg.flags == TcpFlags.PSH | TcpFlags.ACK
    assert seg.payload == payload
    assert seg.ts == ts


def assert_v6_segment(seg: Segment | None, payload: bytes = BODY) -> None:
    assert seg is not None
    assert seg.src == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert seg.dst == socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    assert (seg.sport, seg.dport, seg.seq, seg.ack) == (40000, 8080, 123456789, 987654321)
    assert seg.payload == payload


def only(stats: Stats, **expected: int) -> None:
    """The counters are exactly these (plus frames)."""
    assert {k: v for k, v in stats.items() if v and k != "frames"} == expected


# --- link types ---------------------------------------------------------------------------------------


def test_ethernet_ipv4_tcp() -> None:
    seg, stats = decode(1, bytes(ETH / V4_TCP / BODY))
    assert_v4_segment(seg)
    only(stats, segments=1)
    assert stats["frames"] == 1


def test_ethernet_ipv6_tcp() -> None:
    seg, stats = decode(1, bytes(ETH / V6_TCP / BODY))
    assert_v6_segment(seg)
    only(stats, segments=1)


def test_ethernet_padding_is_cut_by_ip_total_length() -> None:
    frame = bytes(ETH / V4_TCP / b"hi") + b"\x00" * 6 + b"FCS!"
    assert_v4_segment(decode(1, frame)[0], b"hi")
    frame6 = bytes(ETH / V6_TCP / b"hi") + b"\xee" * 8
    assert_v6_segment(decode(1, frame6)[0], b"hi")


def test_ipv4_options_are_skipped() -> None:
    pkt = (
        ETH
        / IP(src="192.0.2.1", dst="198.51.100.7", options=[IPOption_RR(routers=["1.2.3.4"])])
        / V4_TCP[TCP]
    )
    frame = bytes(pkt / BODY)
    assert frame[14] & 0x0F > 5
    assert_v4_segment(decode(1, frame)[0])


def test_tcp_options_are_skipped() -> None:
    tcp = V4_TCP[TCP].copy()
    tcp.options = [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2)), ("WScale", 7)]
    frame = bytes(ETH / IP(src="192.0.2.1", dst="198.51.100.7") / tcp / BODY)
    assert frame[14 + 20 + 12] >> 4 > 5
    assert_v4_segment(decode(1, frame)[0])


def test_ipv4_total_length_zero_from_segmentation_offload_uses_the_frame() -> None:
    frame = bytearray(bytes(ETH / V4_TCP / BODY))
    frame[16:18] = b"\x00\x00"
    seg, stats = decode(1, bytes(frame))
    assert_v4_segment(seg)
    only(stats, segments=1)


@pytest.mark.parametrize(
    "tags",
    [
        [Dot1Q(vlan=10)],
        [Dot1AD(vlan=100), Dot1Q(vlan=10)],  # QinQ
        [Dot1Q(vlan=100, type=0x8100), Dot1Q(vlan=10)],  # double 802.1Q
        [Dot1Q(vlan=7, type=0x9100), Dot1Q(vlan=8, type=0x8100), Dot1Q(vlan=9)],  # legacy 0x9100 outer
    ],
    ids=["dot1q", "qinq-88a8", "qinq-8100", "three-tags"],
)
def test_vlan_tags(tags: list) -> None:
    stack = ETH.copy()
    for tag in tags:
        stack = stack / tag
    frame = bytes(stack / V4_TCP / BODY)
    # the 0x9100 case: rewrite the outer EtherType the way old switches tag
    if tags[0].type == 0x9100 and len(tags) == 3:
        frame = frame[:12] + b"\x91\x00" + frame[14:]
    seg, stats = decode(1, frame)
    assert_v4_segment(seg)
    only(stats, segments=1)
    seg6, _ = decode(1, bytes(stack.copy() / V6_TCP / BODY))
    assert_v6_segment(seg6)


def test_vlan_stack_too_deep_or_cut_is_malformed() -> None:
    tag = b"\x00\x0a\x81\x00"
    deep = bytes(ETH)[:12] + b"\x81\x00" + tag * MAX_VLAN_TAGS + b"\x00\x0a\x08\x00" + bytes(V4_TCP / BODY)
    seg, stats = decode(1, deep)
    assert seg is None
    only(stats, drop_malformed=1)
    ok = (
        bytes(ETH)[:12] + b"\x81\x00" + tag * (MAX_VLAN_TAGS - 2) + b"\x00\x0a\x08\x00" + bytes(V4_TCP / BODY)
    )
    assert_v4_segment(decode(1, ok)[0])
    seg, stats = decode(1, bytes(ETH)[:12] + b"\x81\x00\x00")
    assert seg is None
    only(stats, drop_malformed=1)


def test_vlan_carrying_arp_is_not_ip() -> None:
    seg, stats = decode(1, bytes(ETH / Dot1Q(vlan=3) / ARP()))
    assert seg is None
    only(stats, drop_not_ip=1)


@pytest.mark.parametrize("af", [2, 24, 28, 30, 10])
@pytest.mark.parametrize("order", ["<", ">"])
def test_bsd_loopback_null(af: int, order: str) -> None:
    ip = V4_TCP if af == 2 else V6_TCP
    seg, stats = decode(0, struct.pack(order + "I", af) + bytes(ip / BODY))
    (assert_v4_segment if af == 2 else assert_v6_segment)(seg)
    only(stats, segments=1)


def test_loop_linktype_is_big_endian_af() -> None:
    assert_v4_segment(decode(108, struct.pack(">I", 2) + bytes(V4_TCP / BODY))[0])
    assert_v6_segment(decode(108, struct.pack(">I", 24) + bytes(V6_TCP / BODY))[0])
    seg, stats = decode(108, struct.pack(">I", 7) + bytes(V4_TCP / BODY))
    assert seg is None
    only(stats, drop_not_ip=1)


def test_linux_sll() -> None:
    assert_v4_segment(decode(113, bytes(CookedLinux(pkttype=0, proto=0x0800) / V4_TCP / BODY))[0])
    assert_v6_segment(decode(113, bytes(CookedLinux(pkttype=4, proto=0x86DD) / V6_TCP / BODY))[0])
    vlan = bytes(CookedLinux(proto=0x8100) / Dot1Q(vlan=5) / V4_TCP / BODY)
    assert_v4_segment(decode(113, vlan)[0])


def sll2(proto: int) -> bytes:
    # protocol, reserved, ifindex, ARPHRD_ETHER, pkttype, address length, address (8 bytes)
    return struct.pack("!HHIHBB8s", proto, 0, 3, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00")


def test_linux_sll2() -> None:
    assert_v4_segment(decode(276, sll2(0x0800) + bytes(V4_TCP / BODY))[0])
    assert_v6_segment(decode(276, sll2(0x86DD) + bytes(V6_TCP / BODY))[0])
    seg, stats = decode(276, sll2(0x0806) + bytes(ARP()))
    assert seg is None
    only(stats, drop_not_ip=1)


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_by_version_nibble(linktype: int) -> None:
    assert_v4_segment(decode(linktype, bytes(V4_TCP / BODY))[0])
    assert_v6_segment(decode(linktype, bytes(V6_TCP / BODY))[0])
    seg, stats = decode(linktype, b"\x50" + bytes(40))
    assert seg is None
    only(stats, drop_not_ip=1)


def test_ipv4_and_ipv6_linktypes() -> None:
    assert_v4_segment(decode(228, bytes(V4_TCP / BODY))[0])
    assert_v6_segment(decode(229, bytes(V6_TCP / BODY))[0])
    seg, stats = decode(228, bytes(V6_TCP / BODY))  # declared IPv4, holds IPv6
    assert seg is None
    only(stats, drop_malformed=1)


def test_unsupported_linktype_is_counted() -> None:
    seg, stats = decode(127, bytes(64))  # radiotap
    assert seg is None
    only(stats, drop_unsupported_linktype=1)


# --- not TCP --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (bytes(ETH / ARP()), "drop_not_ip"),
        (bytes(ETH / IP() / UDP() / b"dns"), "drop_not_tcp"),
        (bytes(ETH / IP() / ICMP() / bytes(V4_TCP)), "drop_not_tcp"),
        (bytes(ETH / IPv6(nh=50) / (b"\x00" * 16)), "drop_not_tcp"),  # ESP
        (bytes(ETH / IPv6(nh=59)), "drop_not_tcp"),  # no next header
        (bytes(ETH / IPv6() / UDP()), "drop_not_tcp"),
        (bytes(Ether(dst="01:80:c2:00:00:0e", type=0x88CC) / (b"lldp" * 10)), "drop_not_ip"),
    ],
    ids=["arp", "udp", "icmp", "esp", "no-next-header", "udp6", "lldp"],
)
def test_not_tcp_is_counted(frame: bytes, reason: str) -> None:
    seg, stats = decode(1, frame)
    assert seg is None
    only(stats, **{reason: 1})


# --- IPv6 extension headers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exts",
    [
        [IPv6ExtHdrHopByHop()],
        [IPv6ExtHdrRouting(addresses=["2001:db8::9"])],
        [IPv6ExtHdrDestOpt()],
        [AH(nh=6, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12)],  # scapy leaves nh/length to IPsec
        [IPv6ExtHdrFragment(offset=0, m=0, id=77)],  # atomic fragment
        [
            IPv6ExtHdrHopByHop(),
            IPv6ExtHdrDestOpt(),
            IPv6ExtHdrRouting(addresses=["2001:db8::9", "2001:db8::a"]),
            AH(nh=60, payloadlen=4, spi=1, seq=1, icv=b"\x00" * 12),
            IPv6ExtHdrDestOpt(),
        ],
    ],
    ids=["hop-by-hop", "routing", "dest-opts", "ah", "atomic-fragment", "chain"],
)
def test_ipv6_extension_headers(exts: list) -> None:
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::2")
    for ext in exts:
        pkt = pkt / ext
    frame = bytes(ETH / pkt / V6_TCP[TCP] / BODY)
    seg, stats = decode(1, frame)
    assert_v6_segment(seg)
    only(stats, segments=1)


def test_ipv6_extension_header_cut_short_is_malformed() -> None:
    frame = bytes(ETH / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=0, plen=4) / b"\x06\x00\x00\x00")
    seg, stats = decode(1, frame)
    assert seg is None
    only(stats, drop_malformed=1)


def test_ipv6_fragments_are_reassembled() -> None:
    pkt = (
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrFragment(id=0x1234) / V6_TCP[TCP] / (BODY * 40)
    )
    frags = fragment6(pkt, 600)
    assert len(frags) > 2
    stats = Stats()
    dec = Decoder(Limits(), stats)
    results = [dec.decode(2.0, 1, bytes(ETH / f)) for f in reversed(frags)]
    assert results[:-1] == [None] * (len(frags) - 1)
    seg = results[-1]
    assert seg is not None and seg.payload == BODY * 40 and seg.seq == 123456789
    assert stats["ip_fragments"] == len(frags) and stats["ip_reassembled"] == 1 and stats["segments"] == 1


# --- IPv4 fragments -------------------------------------------------------------------------------------


def v4_fragments(ident: int = 4242, size: int = 200) -> list[bytes]:
    pkt = IP(src="192.0.2.1", dst="198.51.100.7", id=ident) / V4_TCP[TCP] / (BODY * 20)
    return [bytes(ETH / f) for f in fragment(pkt, fragsize=size)]


@pytest.mark.parametrize("order", ["in-order", "reversed", "middle-first"])
def test_ipv4_fragments_reassembled_in_any_order(order: str) -> None:
    frags = v4_fragments()
    assert len(frags) >= 4
    if order == "reversed":
        frags.reverse()
    elif order == "middle-first":
        frags = frags[2:3] + frags[:2] + frags[3:]
    stats = Stats()
    dec = Decoder(Limits(), stats)
    results = [dec.decode(1.5, 1, f) for f in frags]
    assert results[:-1] == [None] * (len(frags) - 1)
    assert_v4_segment(results[-1], BODY * 20)
    only(stats, ip_fragments=len(frags), ip_reassembled=1, segments=1)


def test_ipv4_overlapping_fragments_first_copy_wins() -> None:
    first = IP(src="192.0.2.1", dst="198.51.100.7", id=9, flags="MF", frag=0, proto=6)
    header = bytes(V4_TCP[TCP])
    payload = header + b"A" * 28  # 48 bytes: offsets 0..48
    f1 = bytes(ETH / first / payload)
    # second fragment overlaps bytes 40..48 with different content, then carries 48..64
    f2 = bytes(ETH / IP(src="192.0.2.1", dst="198.51.100.7", id=9, frag=5, proto=6) / (b"B" * 24))
    stats = Stats()
    dec = Decoder(Limits(), stats)
    assert dec.decode(1.5, 1, f1) is None
    seg = dec.decode(1.5, 1, f2)
    assert_v4_segment(seg, b"A" * 28 + b"B" * 16)
    assert stats["drop_ip_fragment_overlap"] == 1 and stats["ip_reassembled"] == 1


def test_ipv4_fragments_never_completed_time_out() -> None:
    frags = v4_fragments()
    limits = Limits(fragment_timeout_s=15.0)
    stats = Stats()
    dec = Decoder(limits, stats)
    for f in frags[:-1]:
        assert dec.decode(100.0, 1, f) is None
    dec.advance(114.0)
    assert stats["drop_ip_fragment_timeout"] == 0
    dec.advance(116.0)
    assert stats["drop_ip_fragment_timeout"] == 1
    # the last fragment alone cannot complete the datagram any more
    assert dec.decode(116.0, 1, frags[-1]) is None
    assert stats["ip_reassembled"] == 0 and stats["segments"] == 0


def test_fragment_flood_stays_bounded() -> None:
    limits = Limits(max_fragment_datagrams=16)
    stats = Stats()
    dec = Decoder(limits, stats)
    first = v4_fragments(ident=0)[0]
    for ident in range(1000):  # the IPv4 id is at bytes 18-19 of the frame; checksums are not checked
        dec.decode(1.0 + ident * 1e-3, 1, first[:18] + struct.pack("!H", ident) + first[20:])
    assert dec.fragments_pending == 16
    assert stats["drop_ip_fragment_evicted"] == 1000 - 16
    assert stats["ip_fragments"] == 1000 and stats["segments"] == 0
    # the newest datagrams are the ones kept: the last one still completes
    for f in v4_fragments(ident=999)[1:]:
        seg = dec.decode(2.0, 1, f)
    assert_v4_segment(seg, BODY * 20, ts=2.0)


def test_fragment_of_non_tcp_is_not_held() -> None:
    pkt = IP(src="192.0.2.1", dst="198.51.100.7", id=5) / UDP() / (b"x" * 1000)
    stats = Stats()
    dec = Decoder(Limits(), stats)
    for f in fragment(pkt, fragsize=300):
        assert dec.decode(1.0, 1, bytes(ETH / f)) is None
    assert dec.fragments_pending == 0
    only(stats, drop_not_tcp=4)


def test_fragment_misaligned_is_malformed() -> None:
    f = IP(src="192.0.2.1", dst="198.51.100.7", id=9, flags="MF", frag=0, proto=6) / (
        bytes(V4_TCP[TCP]) + b"x"
    )
    seg, stats = decode(1, bytes(ETH / f))
    assert seg is None
    only(stats, ip_fragments=1, drop_ip_fragment_malformed=1)


# --- malformed and truncated ----------------------------------------------------------------------------


def eth_ipv4(mutate) -> bytes:
    frame = bytearray(bytes(ETH / V4_TCP / BODY))
    mutate(frame)
    return bytes(frame)


@pytest.mark.parametrize(
    "frame",
    [
        eth_ipv4(lambda f: f.__setitem__(14, 0x44)),  # IHL 4
        eth_ipv4(lambda f: f.__setitem__(14, 0x4F)),  # IHL 15: 60-byte header past the TCP start
        eth_ipv4(lambda f: f.__setitem__(14, 0x65)),  # version 6 in an IPv4 EtherType
        eth_ipv4(lambda f: f.__setitem__(slice(16, 18), b"\x00\x10")),  # total length 16 < header
        eth_ipv4(lambda f: f.__setitem__(slice(16, 18), b"\x00\x1e")),  # total length leaves 10 TCP bytes
        eth_ipv4(lambda f: f.__setitem__(46, 0x40)),  # TCP data offset 4
        bytes(ETH / V4_TCP / b"abc")[:46] + b"\xf0" + bytes(ETH / V4_TCP / b"abc")[47:],  # doff 15: too long
        bytes(ETH / V4_TCP)[:44],  # TCP header cut
        bytes(ETH / V4_TCP)[:30],  # IP header cut
        bytes(ETH / V6_TCP)[:50],  # IPv6 header cut
        bytes(ETH)[:10],  # Ethernet header cut
        bytes(ETH)[:12] + b"\x08\x00" + b"\xff" * 40,  # garbage under IPv4
        bytes(ETH)[:12] + b"\x86\xdd" + b"\x00" * 60,  # garbage under IPv6
    ],
    ids=[
        "ihl-4",
        "ihl-15",
        "version-6",
        "total-lt-header",
        "total-cuts-tcp",
        "doff-4",
        "doff-15",
        "tcp-header-cut",
        "ip-header-cut",
        "ipv6-header-cut",
        "eth-cut",
        "garbage-v4",
        "garbage-v6",
    ],
)
def test_malformed_frames_are_counted(frame: bytes) -> None:
    seg, stats = decode(1, frame)
    assert seg is None
    assert stats["drop_malformed"] == 1
    assert stats["segments"] == 0


@pytest.mark.parametrize("linktype", [0, 1, 12, 14, 101, 108, 113, 228, 229, 276])
def test_empty_and_tiny_frames(linktype: int) -> None:
    for frame in (b"", b"\x00", b"\x45"):
        seg, stats = decode(linktype, frame)
        assert seg is None
        assert stats["frames"] == 1 and sum(v for k, v in stats.items() if k.startswith("drop_")) == 1


def test_snaplen_truncated_frame_keeps_what_is_there() -> None:
    full = bytes(ETH / V4_TCP / BODY)
    seg, stats = decode(1, full[:70], wire_len=len(full))
    assert_v4_segment(seg, BODY[:16])
    only(stats, segments=1, truncated_snaplen=1)
    full6 = bytes(ETH / V6_TCP / BODY)
    seg, stats = decode(1, full6[:90], wire_len=len(full6))
    assert_v6_segment(seg, BODY[:16])
    only(stats, segments=1, truncated_snaplen=1)


def test_snaplen_cutting_only_padding_is_not_a_truncation() -> None:
    full = bytes(ETH / V4_TCP / b"x") + b"\x00" * 5
    seg, stats = decode(1, full[:-3], wire_len=len(full))
    assert_v4_segment(seg, b"x")
    only(stats, segments=1)


@settings(max_examples=300, deadline=None)
@given(
    linktype=st.sampled_from([0, 1, 12, 101, 108, 113, 228, 229, 276]),
    data=st.binary(max_size=120),
    prefix=st.sampled_from([b"", bytes(ETH)[:12] + b"\x08\x00\x45", bytes(ETH)[:12] + b"\x86\xdd\x60"]),
)
def test_random_bytes_never_raise(linktype: int, data: bytes, prefix: bytes) -> None:
    frame = prefix + data
    seg, stats = decode(linktype, frame)
    assert stats["frames"] == 1
    if seg is None:
        assert any(k.startswith("drop_") or k == "ip_fragments" for k in stats)
    else:
        assert len(seg.payload) <= len(frame) and len(seg.src) in (4, 16) and len(seg.dst) == len(seg.src)


# --- public captures against tshark ---------------------------------------------------------------------


def _public_captures() -> list[Path]:
    if not PUBLIC.is_dir():
        return []
    return sorted(p for p in PUBLIC.iterdir() if p.suffix in (".pcap", ".pcapng"))


Row = tuple[int, int, int, int, int, int | None]  # frame number, ports, seq, ack, payload length


@pytest.fixture(scope="module")
def tshark_segments() -> dict[Path, list[Row]]:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    fields = ["frame.number", "tcp.srcport", "tcp.dstport", "tcp.seq_raw", "tcp.ack_raw", "tcp.len"]
    fields += ["frame.len", "frame.cap_len"]

    def rows(path: Path) -> list[Row]:
        # ICMP errors quote a TCP header; tshark's `tcp` filter matches those, a TCP decoder must not
        cmd = ["tshark", "-r", str(path), "-Y", "tcp && !icmp && !icmpv6", "-T", "fields"]
        out = subprocess.run(
            cmd + [a for f in fields for a in ("-e", f)], capture_output=True, text=True, check=True
        ).stdout
        result: list[Row] = []
        for line in out.splitlines():
            num, sport, dport, seq, ack, tcp_len, wire, cap = (int(v) for v in line.split("\t"))
            # tshark's tcp.len comes from the IP length; in a snaplen-cut frame we keep what was captured
            result.append((num, sport, dport, seq, ack, tcp_len if wire == cap else None))
        return result

    paths = _public_captures()
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(paths, pool.map(rows, paths), strict=True))


@pytest.mark.skipif(not PUBLIC.is_dir(), reason=f"public captures absent ({PUBLIC})")
def test_every_public_capture_decodes_like_tshark(tshark_segments: dict[Path, list[Row]]) -> None:
    """Every TCP segment tshark sees, we see, in the same frame with the same ports, seq, ack and length."""
    mismatches = {}
    for path, expected in tshark_segments.items():
        stats = Stats()
        dec = Decoder(Limits(), stats)
        got: list[Row] = []
        with open_capture(path) as capture:
            for num, (ts, linktype, frame, wire_len) in enumerate(capture, 1):
                seg = dec.decode(ts, linktype, frame, wire_len)
                if seg is not None:
                    got.append((num, seg.sport, seg.dport, seg.seq, seg.ack, len(seg.payload)))
        assert len(got) == stats["segments"] > 0, path.name
        cut = {row[0] for row in expected if row[5] is None}
        got = [(*row[:5], None) if row[0] in cut else row for row in got]
        if got != expected:
            mismatches[path.name] = (len(got), len(expected))
    assert len(tshark_segments) >= 10
    assert mismatches == {}
