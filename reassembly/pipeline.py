"""`Pipeline`: the whole core composed, one `feed(ts, linktype, frame)` per captured frame.

decode (`Decoder`) -> TCP reassembly (`FlowTable`) -> HTTP per connection (`HttpConnectionParser`).
The pipeline owns the routing between them and nothing else: which parser a stream event goes to, when a
parser is created and closed, and telling the TCP layer to stop buffering flows the HTTP layer gave up on
(TLS, binary protocols, tunnels after CONNECT/101). Time only ever comes from the capture timestamps the
caller passes in, so replaying a file and capturing live run the same code and give the same exchanges.
Most packets never go stage by stage: `feed` has a fused fast path for in-order data and ACKs of live
flows (see there), where the per-packet cost is (bench/core.py).
"""

from __future__ import annotations

from typing import Final

from librt.strings import read_i16_be, read_i32_be

from reassembly.decode import IPV4_AT, IPV6_AT, Decoder
from reassembly.events import Direction, Exchange, FlowOpened, StreamData, StreamEvent, StreamGap, TcpFlags
from reassembly.flow_table import FlowEntry, FlowTable
from reassembly.half_stream import RECENT_MAX_BYTES
from reassembly.http_budget import HttpBufferPool
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.seq import CONTROL_WINDOW, SEQ_MASK
from reassembly.stats import Stats

__all__ = ["Pipeline"]

# How often (in capture seconds) timeouts are checked. Finer adds cost per packet for no visible gain:
# the reorder and idle timeouts it serves are measured in seconds.
ADVANCE_INTERVAL_S: Final = 1.0

_CONTROL: Final = int(TcpFlags.SYN | TcpFlags.FIN | TcpFlags.RST)
_ACK: Final = int(TcpFlags.ACK)
_TO_SERVER: Final = Direction.TO_SERVER


class Pipeline:
    """Frames in, `Exchange`s out. Not thread-safe: one pipeline per capture worker."""

    __slots__ = (
        "_closed",
        "_decode",
        "_decoder",
        "_fast_frames",
        "_flows",
        "_flows_feed",
        "_http_pool",
        "_ignored_ports",
        "_linktype",
        "_lru",
        "_next_advance_ts",
        "_parsers",
        "_raw_index",
        "_server_ports",
        "_v4",
        "_v6",
        "limits",
        "stats",
    )

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        server_ports: frozenset[int] = frozenset(),
        ignored_ports: frozenset[int] = frozenset(),
        stats: Stats | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        self.stats = stats if stats is not None else Stats()
        self._server_ports = server_ports
        # Ports never parsed (the daemon's own metrics endpoint), so scrapes never become API events.
        self._ignored_ports = ignored_ports
        self._decoder = Decoder(self.limits, self.stats)
        self._flows = FlowTable(self.limits, self.stats, server_ports)
        self._parsers: dict[int, HttpConnectionParser] = {}
        # One HTTP buffer budget for all connections: what thousands of open heads may hold in all.
        self._http_pool = HttpBufferPool(self.limits.max_http_buffer_bytes)
        self._next_advance_ts: float | None = None
        # Frames the fast path carried since the counters were last brought up to date: each is one
        # `frames` and one `segments`, added to Stats once per capture second (and at advance/close)
        # instead of two Counter updates per packet.
        self._fast_frames = 0
        self._closed = False
        # Bound once: these run for every frame.
        self._decode = self._decoder.decode
        self._flows_feed = self._flows.feed
        self._raw_index = self._flows.raw_index
        self._lru = self._flows.lru
        # The last frame's link type and where IPv4 / IPv6 start behind it (decode's tables): a file has
        # one link type (pcapng: one per interface), a ring one, so they are kept, not looked up a frame.
        self._linktype = -1
        self._v4: tuple[int, int] | None = None
        self._v6: tuple[int, int] | None = None

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    def server_addresses(self, ports: frozenset[int]) -> set[bytes]:
        """The packed addresses serving live flows on `ports` (`FlowTable.server_addresses`)."""
        return self._flows.server_addresses(ports)

    @property
    def http_buffer_bytes(self) -> int:
        """Bytes the HTTP layer holds now (partial heads, bodies spanning segments)."""
        return self._http_pool.used

    def feed(self, ts: float, linktype: int, frame: bytes, wire_len: int | None = None) -> list[Exchange]:
        """One captured frame; returns the exchanges it completed (usually none).

        The common frame (Ethernet, Linux cooked or raw IP; IPv4 without options or IPv6 without
        extension headers; TCP without SYN, FIN or RST; whole; of a live flow; carrying the next
        in-order bytes of its direction or only acknowledging what was seen) takes a fused fast path:
        the steps `Decoder.decode`, `FlowTable.feed` and `_route` would run for it, inline, with no
        Segment, StreamData or event list made. Any other frame, or any doubt, takes the stage-by-stage
        path; both give the same exchanges and counters (tests/test_pipeline_fast_path.py), except that
        the fast path's `frames` and `segments` reach Stats once per capture second (and at advance and
        close).
        """
        if self._closed:
            raise RuntimeError("feed() after close()")
        out: list[Exchange] = []
        next_ts = self._next_advance_ts
        if next_ts is None:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
        elif ts >= next_ts:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
            if self._fast_frames:
                self._count_fast_frames()
            self._route(self._flows.advance(ts), out)
        if linktype != self._linktype:
            self._linktype = linktype
            self._v4 = IPV4_AT.get(linktype)
            self._v6 = IPV6_AT.get(linktype)
        at = self._v4
        if at is not None:
            et, ip = at
            # The conditions of Decoder.decode's own fast path: IPv4 without options, not a fragment,
            # whole, a valid TCP header; and no SYN, FIN or RST (the flow table's lifecycle handles those).
            if (
                len(frame) >= ip + 40
                and (et < 0 or (frame[et] == 8 and frame[et + 1] == 0))
                and frame[ip] == 0x45
                and frame[ip + 9] == 6
                and not read_i16_be(frame, ip + 6) & 0x3FFF
            ):
                total: int = read_i16_be(frame, ip + 2)
                offflags: int = read_i16_be(frame, ip + 32)
                total &= 0xFFFF  # the reads are signed, the fields unsigned
                offflags &= 0xFFFF
                end = ip + total
                doff = (offflags >> 10) & 0x3C
                if end <= len(frame) and 20 <= doff <= total - 20 and not offflags & _CONTROL:
                    entry = self._raw_index.get(frame[ip + 12 : ip + 24])
                    start = ip + 20 + doff
                    if entry is not None and self._fast(
                        ts,
                        entry,
                        frame,
                        ip + 20,
                        offflags,
                        start,
                        end,
                        out,
                    ):
                        return out
        at = self._v6
        if at is not None:
            et, ip = at
            # IPv6 whose next header is TCP (no extension header), with a payload length, whole.
            if (
                len(frame) >= ip + 60
                and (et < 0 or (frame[et] == 0x86 and frame[et + 1] == 0xDD))
                and frame[ip] >> 4 == 6
                and frame[ip + 6] == 6
            ):
                plen: int = read_i16_be(frame, ip + 4)
                offflags = read_i16_be(frame, ip + 52)
                plen &= 0xFFFF
                offflags &= 0xFFFF
                end = ip + 40 + plen
                doff = (offflags >> 10) & 0x3C
                if end <= len(frame) and 20 <= doff <= plen and not offflags & _CONTROL:
                    entry = self._raw_index.get(frame[ip + 8 : ip + 44])
                    start = ip + 40 + doff
                    if entry is not None and self._fast(
                        ts,
                        entry,
                        frame,
                        ip + 40,
                        offflags,
                        start,
                        end,
                        out,
                    ):
                        return out
        seg = self._decode(ts, linktype, frame, wire_len)
        if seg is None:
            return out
        ports = self._server_ports
        if ports and seg.sport not in ports and seg.dport not in ports:
            self.stats["segments_other_ports"] += 1
            return out
        ignored = self._ignored_ports
        if ignored and (seg.sport in ignored or seg.dport in ignored):
            self.stats["segments_ignored_ports"] += 1
            return out
        events = self._flows_feed(seg)
        if events:
            self._route(events, out)
        return out

    def _fast(
        self,
        ts: float,
        entry: FlowEntry,
        frame: bytes,
        tcp: int,
        flags: int,
        start: int,
        end: int,
        out: list[Exchange],
    ) -> bool:
        """`FlowTable.feed`'s in-order step for a decoded frame of a live flow (its TCP header at `tcp`),
        delivered straight to its parser; False (nothing done) when the segment needs the general path.
        The flow's ports passed the port filters when it was created, so they need no check here.
        Sequence numbers are read signed (librt) and used modulo 2^32 only, where the sign drops out."""
        flow, hs, peer = entry
        if flags & _ACK and hs.started:
            if peer.started:
                ack: int = read_i32_be(frame, tcp + 8)
                a = (ack - peer.seq_next) & SEQ_MASK
                if a:
                    if a <= CONTROL_WINDOW:
                        return False  # acknowledges bytes the capture did not see: a gap to declare
                elif peer.recent is not None:
                    peer.recent = None  # all acknowledged (see HalfStream.recent)
            elif peer.need_hint:
                return False
        if end == start:
            self._fast_frames += 1
            flow.last_ts = ts
            self._lru.move_to_end(flow.flow_id)
            return True
        if not hs.fast:
            return False
        seq: int = read_i32_be(frame, tcp + 4)
        if (seq - hs.seq_next) & SEQ_MASK:
            return False
        self._fast_frames += 1
        flow.last_ts = ts
        flow_id = flow.flow_id
        self._lru.move_to_end(flow_id)
        payload = frame[start:end]
        off = hs.next
        n = end - start
        hs.next = off + n
        hs.seq_next = (seq + n) & SEQ_MASK
        if n <= RECENT_MAX_BYTES:
            hs.recent = payload
            hs.recent_off = off
        else:
            hs.recent = None
        parser = self._parsers.get(flow_id)
        if parser is not None:
            parser.feed_data(hs.direction is _TO_SERVER, payload, off, ts, out)
            if parser.is_dead:
                parser.close(ts, out)
                del self._parsers[flow_id]
                self._flows.ignore(flow_id)
        return True

    @property
    def next_advance_ts(self) -> float | None:
        """The capture time at which `feed` runs the timeouts next (None before the first frame)."""
        return self._next_advance_ts

    def tick(self, ts: float) -> list[Exchange]:
        """A frame at `ts` that another pipeline took (replay workers split one file by flow): the
        timeouts run exactly where `feed` would have run them, so every worker times out at the frames
        one process would. Callers may skip it while `ts < next_advance_ts`."""
        next_ts = self._next_advance_ts
        if next_ts is None:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
        elif ts >= next_ts:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
            return self.advance(ts)
        return []

    def advance(self, ts: float) -> list[Exchange]:
        """Capture time moved on without packets (live capture idle): run the timeouts."""
        out: list[Exchange] = []
        if self._fast_frames:
            self._count_fast_frames()
        self._route(self._flows.advance(ts), out)
        return out

    def close(self, ts: float | None = None) -> list[Exchange]:
        """End of capture: flush every flow and every parser; the pipeline cannot be fed afterwards."""
        out: list[Exchange] = []
        if self._closed:
            return out
        self._closed = True
        if self._fast_frames:
            self._count_fast_frames()
        end_ts = ts if ts is not None else (self._next_advance_ts or ADVANCE_INTERVAL_S) - ADVANCE_INTERVAL_S
        self._route(self._flows.close(end_ts), out)
        for parser in self._parsers.values():  # flows the table closed without telling us (defensive)
            parser.close(end_ts, out)
        self._parsers.clear()
        return out

    def _count_fast_frames(self) -> None:
        stats = self.stats
        stats["frames"] += self._fast_frames
        stats["segments"] += self._fast_frames
        self._fast_frames = 0

    def _route(self, events: list[StreamEvent], out: list[Exchange]) -> None:
        parsers = self._parsers
        stats = self.stats
        for ev in events:
            kind = type(ev)
            if kind is StreamData or kind is StreamGap:
                parser = parsers.get(ev.flow_id)
                if parser is None:
                    continue  # a flow the HTTP layer already gave up on
                parser.feed(ev, out)  # type: ignore[arg-type]
                if parser.is_dead:
                    # Tunnels and non-HTTP flows: stop reassembling them, it is pure cost from here on.
                    parser.close(ev.ts, out)
                    del parsers[ev.flow_id]
                    self._flows.ignore(ev.flow_id)
            elif kind is FlowOpened:
                parsers[ev.flow_id] = HttpConnectionParser(
                    ev.flow_id,
                    ev.client,  # type: ignore[union-attr]
                    ev.server,  # type: ignore[union-attr]
                    self.limits,
                    stats,
                    mid_stream=ev.mid_stream,  # type: ignore[union-attr]
                    pool=self._http_pool,
                )
                stats["flows"] += 1
            else:
                parser = parsers.pop(ev.flow_id, None)
                if parser is not None:
                    parser.close(ev.ts, out)
