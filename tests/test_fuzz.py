"""Fuzzing the core: decode, TCP reassembly, HTTP parsing and the whole Pipeline + Engine.

Every harness feeds arbitrary, structure-aware input and checks after EVERY step that no exception
escapes and that the memory invariants hold: flows <= max_flows, out-of-order bytes <= the per-direction
and global caps (and the global counter equals the sum of what each direction holds), partial fragmented
datagrams <= their cap, HTTP readers hold at most one head plus the latest chunk, kept bodies <= the body
cap, pending requests <= their cap. Tiny limits make every budget bite within a few inputs.

Inputs come from generator functions written against `Source` (a few `draw`-like methods), run by two
backends: Hypothesis (`HypothesisSource`: shrinking, a minimal failing input) and a seeded
`random.Random` (`RandomSource`: ~20x faster per input, so the bulk of the inputs). CI runs ~20k inputs
in all in well under a minute (FUZZ_SCALE multiplies the counts); `bench/fuzz_long.py` runs the same
`GENERATORS`/`CHECKS` for >= 1M inputs. A failing random input is reproduced by its seed.
"""

from __future__ import annotations

import itertools
import os
import random
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reassembly.decode import LINKTYPES, Decoder
from reassembly.events import (
    Direction,
    FlowClosed,
    FlowOpened,
    GapReason,
    Segment,
    StreamData,
    StreamEvent,
    StreamGap,
)
from reassembly.flow_table import FlowTable
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.config import Config
from sniffer.engine import Engine

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
T = TypeVar("T")


class Source(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...

    def choice(self, options: Sequence[T]) -> T: ...

    def binary(self, lo: int, hi: int) -> bytes: ...


class RandomSource:
    __slots__ = ("_r",)

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self._r.randint(lo, hi)

    def choice(self, options: Sequence[T]) -> T:
        return options[self._r.randrange(len(options))]

    def binary(self, lo: int, hi: int) -> bytes:
        return self._r.randbytes(self._r.randint(lo, hi))


class HypothesisSource:
    __slots__ = ("_draw",)

    def __init__(self, draw: st.DrawFn) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return self._draw(st.sampled_from(options))

    def binary(self, lo: int, hi: int) -> bytes:
        return self._draw(st.binary(min_size=lo, max_size=hi))


# -- building blocks --------------------------------------------------------------------------------------

ADDRS4 = [b"\x0a\x00\x00\x01", b"\x0a\x00\x00\x02"]
ADDRS6 = [b"\xfd" + b"\x00" * 14 + b"\x01", b"\xfd" + b"\x00" * 14 + b"\x02"]
PORTS = [80, 8000, 40000, 40001]
ISNS = [1000, 5000, 0xFFFFFFF0]
C, S = Direction.TO_SERVER, Direction.TO_CLIENT
COMMON_FLAGS = [0x02, 0x12, 0x10, 0x18, 0x11, 0x19, 0x04, 0x14, 0x06, 0x03, 0x00]

HTTP_TOKENS = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p HTTP/1.1\r\n",
    b"HEAD /h HTTP/1.0\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n",
    b"HTTP/1.0 304 x\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 5\r\nContent-Length: 7\r\n",  # duplicate, conflicting Content-Length
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",  # the TE + CL smuggling shape
    b"Transfer-Encoding: gzip\r\n",
    b"Upgrade: websocket\r\n",
    b"Host: a\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"5;ext=1\r\nhello\r\n",
    b"0\r\n\r\n",
    b"0\r\nX-T: 1\r\n\r\n",
    b"10000000000000000\r\n",  # chunk size 2**64
    b"ffffffffffffffffffff\r\n",
    b" folded\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface on an HTTP/1 port
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello's start
    b"X-Long: " + b"a" * 300 + b"\r\n",
]


# Whole messages, so the engine harness also sees clean exchanges (and Kong legs) among the garbage.
HTTP_MESSAGES = [
    b"GET /a?k=v HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\n\r\n",
    b'POST /b HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{"a":1}',
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nServer: kong/3.4\r\nX-Kong-Response-Latency: 1\r\nContent-Length: 0\r\n\r\n",
]


def http_bytes(r: Source) -> bytes:
    if r.integer(0, 3) == 0:
        return r.choice(HTTP_MESSAGES)
    parts = []
    for _ in range(r.integer(0, 10)):
        parts.append(r.choice(HTTP_TOKENS) if r.integer(0, 2) else r.binary(0, 40))
    return b"".join(parts)


def seq_number(r: Source) -> int:
    if r.integer(0, 9) == 0:
        return r.integer(0, 0xFFFFFFFF)
    return (r.choice(ISNS) + r.integer(-3, 3000)) & 0xFFFFFFFF


def tcp_flags(r: Source) -> int:
    return r.choice(COMMON_FLAGS) if r.integer(0, 3) else r.integer(0, 255)


def tcp_segment(r: Source) -> bytes:
    payload = http_bytes(r) if r.integer(0, 1) else r.binary(0, 64)
    doff_words = 5 if r.integer(0, 3) else r.integer(0, 15)
    options = r.binary(max(0, doff_words * 4 - 20), max(0, doff_words * 4 - 20))
    hdr = struct.pack(
        "!HHIIBBHHH",
        r.choice(PORTS),
        r.choice(PORTS),
        seq_number(r),
        seq_number(r),
        doff_words << 4,
        tcp_flags(r),
        65535,
        0,
        0,
    )
    return hdr + options + payload


def ip_packet(r: Source) -> bytes:
    """An IPv4 or IPv6 packet carrying TCP (or something else): fields mostly sane, sometimes not."""
    tcp = tcp_segment(r)
    if r.integer(0, 1):
        ihl = 5 if r.integer(0, 3) else r.integer(0, 15)
        opts = r.binary(max(0, ihl * 4 - 20), max(0, ihl * 4 - 20))
        upper = tcp
        frag = r.choice([0x4000, 0, r.integer(0, 0xFFFF)])
        if r.integer(0, 3) == 0:
            # a real fragment of the segment: an 8-byte aligned cut, ids from a small set so they meet
            cut = r.integer(0, len(tcp) // 8) * 8
            first = r.integer(0, 1)
            upper = tcp[:cut] if first else tcp[cut:]
            frag = 0x2000 if first else cut >> 3
        total = ihl * 4 + len(upper) if r.integer(0, 3) else r.integer(0, 0xFFFF)
        proto = 6 if r.integer(0, 5) else r.integer(0, 255)
        src, dst = r.choice(ADDRS4), r.choice(ADDRS4)
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x40 | ihl, 0, total, r.integer(0, 3), frag, 64, proto, 0, src, dst
        )
        return hdr + opts + upper
    # IPv6, maybe behind extension headers: hop-by-hop 0, routing 43, destination 60, AH 51, fragment 44
    body = tcp
    nh_after = 6
    for _ in range(r.integer(0, 4) if r.integer(0, 1) else 0):
        nh = r.choice([0, 43, 60, 51, 44, 59, 17])
        if nh == 44:
            frag = 0 if r.integer(0, 1) else r.integer(0, 0xFFFF)
            body = struct.pack("!BBHI", nh_after, 0, frag, r.integer(0, 3)) + body
        elif nh in (0, 43, 60, 51):
            ln = r.integer(0, 2)
            size = (ln + 1) * 8 if nh != 51 else (ln + 2) * 4
            body = bytes([nh_after, ln]) + b"\x00" * (size - 2) + body
        nh_after = nh
    plen = len(body) if r.integer(0, 3) else r.integer(0, 0xFFFF)
    src, dst = r.choice(ADDRS6), r.choice(ADDRS6)
    return struct.pack("!IHBB16s16s", 6 << 28, plen, nh_after, 64, src, dst) + body


LINKTYPE_CHOICES = [*sorted(LINKTYPES), 2, 147]
VLAN_TPIDS = [b"\x81\x00", b"\x88\xa8", b"\x91\x00", b"\x92\x00"]


def link_frame(r: Source) -> tuple[int, bytes]:
    """(linktype, frame): any link type the decoder knows (and two it does not), with mutations."""
    linktype = r.choice(LINKTYPE_CHOICES)
    if r.integer(0, 7) == 0:
        return linktype, r.binary(0, 120)
    pkt = ip_packet(r)
    etype = b"\x86\xdd" if pkt[0] >> 4 == 6 else b"\x08\x00"
    if r.integer(0, 9) == 0:
        etype = r.binary(2, 2)
    # each VLAN tag: its TPID sits where the EtherType would, then its TCI, then the next type
    vlans = b"".join(
        r.choice(VLAN_TPIDS) + b"\x00\x07" for _ in range(r.integer(0, 10) if r.integer(0, 3) == 0 else 0)
    )
    if linktype == 1:
        frame = b"\x02" * 12 + vlans + etype + pkt
    elif linktype == 113:
        frame = b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 8 + vlans + etype + pkt
    elif linktype == 276:
        frame = etype + b"\x00" * 18 + pkt
    elif linktype in (0, 108):
        frame = struct.pack(r.choice(["<I", ">I"]), r.choice([2, 10, 24, 28, 30, 99])) + pkt
    else:
        frame = pkt
    if r.integer(0, 4) == 0:
        frame = frame[: r.integer(0, len(frame))]  # cut by a snap length
    if frame and r.integer(0, 2) == 0:
        b = bytearray(frame)
        for _ in range(r.integer(1, 3)):
            b[r.integer(0, len(b) - 1)] = r.integer(0, 255)
        frame = bytes(b)
    return linktype, frame


# -- decode ---------------------------------------------------------------------------------------------

DECODE_LIMITS = Limits(max_fragment_datagrams=2, fragment_timeout_s=1.0)


def _accounted(stats: Stats) -> int:
    return sum(v for k, v in stats.items() if k in ("segments", "ip_fragments") or k.startswith("drop_"))


def fragmented(r: Source) -> list[bytes]:
    """One TCP segment as two or three IPv4 fragments (Ethernet), in any order, maybe overlapping."""
    tcp = tcp_segment(r) + r.binary(0, 64)
    cuts = sorted({r.integer(1, max(1, len(tcp) // 8)) * 8 for _ in range(r.integer(1, 2))})
    bounds = [0, *(c for c in cuts if c < len(tcp)), len(tcp)]
    ident = r.integer(0, 3)
    out = []
    for lo, hi in itertools.pairwise(bounds):
        if r.integer(0, 5) == 0:
            lo = max(0, lo - 8)  # an overlap: the first copy must win
        more = 0x2000 if hi < len(tcp) else 0
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + hi - lo, ident, more | lo >> 3, 64, 6, 0, ADDRS4[0], ADDRS4[1]
        )
        out.append(b"\x02" * 12 + b"\x08\x00" + ip + tcp[lo:hi])
    if r.integer(0, 1):
        out.reverse()
    return out


def gen_decode(r: Source) -> list[tuple[float, int, bytes]]:
    ts = 0.0
    out = []
    for _ in range(r.integer(1, 6)):
        ts += r.choice([0.0, 0.01, 2.0])
        if r.integer(0, 4) == 0:
            out.extend((ts, 1, f) for f in fragmented(r))
            continue
        lt, frame = link_frame(r)
        out.append((ts, lt, frame))
    return out


def check_decode(items: list[tuple[float, int, bytes]]) -> None:
    stats = Stats()
    dec = Decoder(DECODE_LIMITS, stats)
    for ts, linktype, frame in items:
        before = _accounted(stats)
        seg = dec.decode(ts, linktype, frame, len(frame) + (ts > 5))
        # Every frame is counted: as a segment, a fragment taken in, or under one drop reason.
        assert _accounted(stats) > before, (linktype, frame.hex())
        if seg is not None:
            assert isinstance(seg, Segment) and type(seg.payload) is bytes
            assert len(seg.src) in (4, 16) and len(seg.dst) == len(seg.src)
            assert 0 <= seg.sport < 65536 and 0 <= seg.dport < 65536
            assert 0 <= seg.seq <= 0xFFFFFFFF and 0 <= seg.ack <= 0xFFFFFFFF
            assert len(seg.payload) <= max(len(frame), 65535)
        assert dec.fragments_pending <= DECODE_LIMITS.max_fragment_datagrams
        frags = dec._fragments
        assert frags.held == sum(p.have for p in frags._partials.values()) <= frags.max_bytes
        dec.advance(ts)
    assert stats["frames"] == len(items)


# -- TCP reassembly -------------------------------------------------------------------------------------

TCP_LIMITS = Limits(
    max_flows=3, max_flow_buffer_bytes=64, max_buffer_bytes=96, reorder_timeout_s=2.0, idle_timeout_s=10.0
)
ENDPOINT_PAIRS = [(ADDRS4[0], ADDRS4[1]), (ADDRS4[1], ADDRS4[0]), (ADDRS6[0], ADDRS6[1])]


def gen_tcp(r: Source) -> list[tuple[str, Any]]:
    """Steps: ("seg", Segment), ("advance", ts) or ("ignore", flow_id)."""
    steps: list[tuple[str, Any]] = []
    ts = 0.0
    for _ in range(r.integer(1, 40)):
        ts += r.choice([0.0, 0.001, 0.5, 3.0, 11.0])
        kind = r.integer(0, 19)
        if kind == 0:
            steps.append(("advance", ts))
        elif kind == 1:
            steps.append(("ignore", r.integer(1, 8)))
        else:
            a, b = r.choice(ENDPOINT_PAIRS)
            pick = r.integer(0, 2)
            payload = b"" if pick == 0 else r.binary(1, 90) if pick == 1 else http_bytes(r)
            seg = Segment(
                ts,
                a,
                b,
                r.choice(PORTS),
                r.choice(PORTS),
                seq_number(r),
                seq_number(r),
                tcp_flags(r),
                payload,
            )
            steps.append(("seg", seg))
    return steps


def check_table(ft: FlowTable, limits: Limits) -> None:
    assert len(ft) <= limits.max_flows
    pool = ft._pool
    held = 0
    for flow in ft._lru.values():
        for hs in (flow.c2s, flow.s2c):
            if hs.nbuf:
                assert hs.starts is not None and hs.chunks is not None
                assert hs.nbuf == sum(len(c) for c in hs.chunks)
                assert hs.nbuf <= pool.flow_cap
                assert hs.starts[0] > hs.next, "buffered data must lie beyond a hole"
                ends = [s + len(c) for s, c in zip(hs.starts, hs.chunks, strict=True)]
                assert all(e <= s for e, s in zip(ends, hs.starts[1:], strict=False)), "chunks overlap"
                oldest = min(hs.arrivals or ())
                if hs.end_off > hs.next and hs.end_ts < oldest:
                    oldest = hs.end_ts
                assert hs._oldest() == oldest, "the arrival-order queue lost track of the oldest piece"
            held += hs.nbuf
    assert all(ft._lru.get(fid) is f and not f.opened for fid, f in ft._unopened.items())
    assert pool.used == held, "the global buffer counter drifted from what the streams hold"
    pieces = [len(hs.starts or ()) for f in ft._lru.values() for hs in (f.c2s, f.s2c)]
    assert pool.chunks == sum(pieces), "the piece counter drifted"
    assert pool.chunks <= pool.chunk_limit and max(pieces, default=0) <= pool.flow_chunk_cap
    assert pool.used <= pool.limit
    assert len(pool.holes) <= 2 * limits.max_flows
    assert len(ft._tombs) <= 2 * limits.max_flows
    assert len(ft._flows) <= 2 * limits.max_flows


def check_stream_contract(events: list[StreamEvent], state: dict[int, Any]) -> None:
    """Per flow: FlowOpened first, then per direction contiguous offsets, nothing after FlowClosed."""
    for e in events:
        if isinstance(e, FlowOpened):
            assert e.flow_id not in state, "FlowOpened twice"
            state[e.flow_id] = {C: 0, S: 0}
            continue
        nxt = state.get(e.flow_id)
        assert isinstance(nxt, dict), f"event outside an open flow: {e}"
        if isinstance(e, FlowClosed):
            state[e.flow_id] = "closed"
        elif isinstance(e, StreamData):
            assert e.data and e.offset == nxt[e.direction], e
            nxt[e.direction] = e.offset + len(e.data)
        else:
            assert isinstance(e, StreamGap)
            if e.length is None:
                assert e.reason is GapReason.MIDSTREAM and e.offset == 0
            else:
                assert e.length > 0 and e.offset == nxt[e.direction], e
                nxt[e.direction] = e.offset + e.length


def check_tcp(steps: list[tuple[str, Any]]) -> None:
    limits = TCP_LIMITS
    ft = FlowTable(limits, Stats(), frozenset({80, 8000}))
    state: dict[int, Any] = {}
    ts = 0.0
    for kind, arg in steps:
        if kind == "seg":
            ts = arg.ts
            events = ft.feed(arg)
        elif kind == "advance":
            ts = arg
            events = ft.advance(arg)
        else:
            ft.ignore(arg)
            events = []
        check_stream_contract(events, state)
        check_table(ft, limits)
    check_stream_contract(ft.close(ts + 1), state)
    assert len(ft) == 0 and ft._pool.used == 0 and not ft._pool.holes
    assert all(v == "closed" for v in state.values())


# -- HTTP -----------------------------------------------------------------------------------------------

HTTP_LIMITS = Limits(max_header_bytes=128, max_body_bytes=24, max_pending_requests=3)


def gen_http(r: Source) -> tuple[list[StreamData | StreamGap], bool]:
    offsets = {C: 0, S: 0}
    events: list[StreamData | StreamGap] = []
    ts = 0.0
    for _ in range(r.integer(0, 16)):
        ts += r.choice([0.0, 0.001, 1.0])
        direction = r.choice([C, S])
        choice = r.integer(0, 9)
        if choice == 0:
            length = r.choice([None, r.integer(1, 200), 1 << 40])
            off = 0 if length is None and r.integer(0, 1) else offsets[direction]
            reason = GapReason.MIDSTREAM if length is None else GapReason.ACKED_UNSEEN
            events.append(StreamGap(1, direction, off, length, ts, reason))
            offsets[direction] = off + (length or 0)
            continue
        data = http_bytes(r) if r.integer(0, 2) else r.binary(1, 200)
        if not data:
            continue
        off = offsets[direction]
        if choice == 1:
            off = max(0, off + r.integer(-50, 50))  # overlaps and holes the TCP layer would never send
        events.append(StreamData(1, direction, off, data, ts))
        offsets[direction] = max(offsets[direction], off + len(data))
    return events, bool(r.integer(0, 1))


def _check_bodies(ex: Any, limits: Limits) -> None:
    for msg in (ex.request, ex.response):
        if msg is not None:
            assert len(msg.body) <= limits.max_body_bytes
            assert msg.body_size >= len(msg.body)


def check_http(arg: tuple[list[StreamData | StreamGap], bool]) -> None:
    events, mid_stream = arg
    limits = HTTP_LIMITS
    parser = HttpConnectionParser(
        1, ("10.0.0.1", 1), ("10.0.0.2", 80), limits, Stats(), mid_stream=mid_stream
    )
    indexes: list[int] = []
    for ev in events:
        largest = len(ev.data) if isinstance(ev, StreamData) else 0
        for ex in parser.feed(ev):
            _check_bodies(ex, limits)
            indexes.append(ex.index)
        for reader in (parser._from_client, parser._from_server):
            # one head (<= the header cap) plus the latest chunk, plus the kept body
            assert reader.buffered_bytes <= limits.max_header_bytes + limits.max_body_bytes + largest
            assert reader._kept <= limits.max_body_bytes
        assert len(parser._waiting) <= limits.max_pending_requests
        assert len(parser._interim) <= 16
    for ex in parser.close(1e6):
        _check_bodies(ex, limits)
        assert ex.request is not None or ex.response is not None
        indexes.append(ex.index)
    assert len(set(indexes)) == len(indexes), "an exchange was emitted twice"


# -- Pipeline + Engine ----------------------------------------------------------------------------------

ENGINE_CONFIG = Config(
    max_flows=3,
    max_buffer_bytes=200,
    max_flow_buffer_bytes=100,
    max_header_bytes=128,
    max_pending_requests=3,
    reorder_timeout=2.0,
    idle_timeout=10.0,
    request_max_body_size_limit=20,
    response_max_body_size_limit=20,
    leg_wait=1.0,
    kong_ports=(8000,),
)


def gen_engine(r: Source) -> list[tuple[float, int, bytes]]:
    """Frames of a few plausible connections (consistent sequence numbers, HTTP-ish payloads, losses,
    out-of-window jumps, odd flags) mixed with arbitrary frames."""
    out: list[tuple[float, int, bytes]] = []
    ts = 0.0
    conns: dict[int, list[int]] = {}
    for _ in range(r.integer(1, 30)):
        ts += r.choice([0.0, 0.001, 0.6, 2.5, 12.0])
        if r.integer(0, 5) == 0:
            lt, frame = link_frame(r)
            out.append((ts, lt, frame))
            continue
        cid = r.integer(0, 4)
        seqs = conns.setdefault(cid, [r.choice(ISNS), r.choice(ISNS)])
        from_client = r.integer(0, 1)
        cport, sport = 40000 + cid, (80 if cid % 2 else 8000)
        flags = r.choice([0x02, 0x12, 0x10, 0x18, 0x18, 0x18, 0x11, 0x04])
        payload = http_bytes(r) if flags & 0x08 else b""
        me, peer = (0, 1) if from_client else (1, 0)
        seq = seqs[me] + r.choice([0, 0, 0, -5, 7, 3000])
        src, dst = (ADDRS4[0], ADDRS4[1]) if from_client else (ADDRS4[1], ADDRS4[0])
        sp, dp = (cport, sport) if from_client else (sport, cport)
        tcp = struct.pack(
            "!HHIIBBHHH", sp, dp, seq & 0xFFFFFFFF, seqs[peer] & 0xFFFFFFFF, 5 << 4, flags, 65535, 0, 0
        )
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
        if r.integer(0, 9):  # else the capture lost this segment
            out.append((ts, 1, b"\x02" * 12 + b"\x08\x00" + ip + tcp + payload))
        seqs[me] = (seqs[me] + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
    return out


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def submit(self, event: dict[str, Any]) -> None:
        orjson.dumps(event)  # every event must serialise
        self.events.append(event)


def check_engine(items: list[tuple[float, int, bytes]]) -> None:
    config = ENGINE_CONFIG
    limits = config.limits()
    sink = ListSink()
    engine = Engine(config, sink)
    pipeline = engine.pipeline
    assert pipeline is not None
    for ts, lt, frame in items:
        engine.feed(ts, lt, frame, len(frame))
        assert pipeline.flow_count <= limits.max_flows
        assert len(pipeline._parsers) <= pipeline.flow_count
        check_table(pipeline._flows, limits)
        for parser in pipeline._parsers.values():
            for reader in (parser._from_client, parser._from_server):
                assert reader._kept <= limits.max_body_bytes
                assert reader.buffered_bytes <= limits.max_header_bytes + limits.max_body_bytes + 65535
            assert len(parser._waiting) <= limits.max_pending_requests
    engine.close()
    assert pipeline.flow_count == 0 and not pipeline._parsers
    assert engine.stats["events"] == len(sink.events)


# -- the harness table and its two backends ------------------------------------------------------------

GENERATORS: dict[str, Callable[[Source], Any]] = {
    "decode": gen_decode,
    "tcp": gen_tcp,
    "http": gen_http,
    "engine": gen_engine,
}
CHECKS: dict[str, Callable[[Any], None]] = {
    "decode": check_decode,
    "tcp": check_tcp,
    "http": check_http,
    "engine": check_engine,
}
# Random-backend inputs per harness in CI (~20k in all); Hypothesis examples come on top.
CI_INPUTS = {"decode": 8000, "tcp": 5000, "http": 5000, "engine": 2500}
HYPOTHESIS_EXAMPLES = 150


def run_random(name: str, seed: int) -> None:
    """One random input of harness `name` (what bench/fuzz_long.py calls in its loop)."""
    CHECKS[name](GENERATORS[name](RandomSource(seed)))


@pytest.mark.parametrize("name", list(GENERATORS))
def test_fuzz_random(name: str) -> None:
    for seed in range(int(CI_INPUTS[name] * SCALE)):
        try:
            run_random(name, seed)
        except Exception as exc:
            raise AssertionError(f"{name} fails on RandomSource({seed}): {exc!r}") from exc


def _hypothesis_test(name: str) -> Callable[[], None]:
    gen, check = GENERATORS[name], CHECKS[name]
    strategy = st.composite(lambda draw: gen(HypothesisSource(draw)))()

    @settings(
        max_examples=max(1, int(HYPOTHESIS_EXAMPLES * SCALE)),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(strategy)
    def test(arg: Any) -> None:
        check(arg)

    return test


test_fuzz_hypothesis_decode = _hypothesis_test("decode")
test_fuzz_hypothesis_tcp = _hypothesis_test("tcp")
test_fuzz_hypothesis_http = _hypothesis_test("http")
test_fuzz_hypothesis_engine = _hypothesis_test("engine")
