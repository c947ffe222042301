"""TCP connections of a capture: decoded segments in, per-connection stream events out.

`FlowTable` finds each segment's connection (a dict keyed by the packed 4-tuple, both directions),
decides who is the client, runs the SYN/FIN/RST lifecycle and feeds the two `HalfStream`s. Policies:

- Roles: the SYN sender is the client, the SYN-ACK sender the server. Without a handshake (mid-stream)
  the side whose port is in `server_ports` is the server, else the lower port. Only a SYN, a SYN-ACK
  or a segment with payload creates a flow (pure ACKs of unknown flows are counted and dropped), and
  `FlowOpened` is emitted lazily, just before a flow's first stream event: a SYN flood or port scan
  costs a small entry per half-open flow, bounded by `max_flows`.
- Eviction when the table is full: the oldest flow that has not delivered a byte yet (a half-open or
  handshake-only flow, or one whose only data waits behind a hole) goes first, counted in
  `evict_flows_half_open` too; only when there is none, the least recently active flow. This is
  conntrack's early_drop policy: a SYN flood churns through its own entries and never evicts the
  established keep-alive connections that carry the real calls.
- A segment's ACK is applied to the opposite direction before its own payload, so bytes the peer
  acknowledged but the capture lost are gapped (ACKED_UNSEEN) before the answer to them is delivered.
- FIN: the direction ends once everything before it is resolved; both ended -> FlowClosed(FIN). A RST
  ends the flow the same way (holes in the other direction become CLOSED gaps) -> FlowClosed(RST).
  A closed flow leaves a short-lived tombstone, so late packets of it are dropped and counted instead
  of adopting a bogus mid-stream flow. A new SYN (or a SYN with another ISN) on a live 4-tuple closes
  the old flow (REUSED).
- Time only moves through `advance(ts)`: holes older than the reorder timeout are skipped, flows idle
  longer than the idle timeout closed. Both queues are ordered by age so only expired entries are
  visited.
"""

from __future__ import annotations

import socket
from collections import OrderedDict
from typing import Final

from reassembly.events import (
    CloseReason,
    Direction,
    Endpoint,
    FlowClosed,
    FlowOpened,
    GapReason,
    Segment,
    StreamData,
    StreamEvent,
    StreamGap,
    TcpFlags,
)
from reassembly.half_stream import RECENT_MAX_BYTES, BufferPool, HalfStream
from reassembly.limits import Limits
from reassembly.seq import CONTROL_WINDOW, SEQ_MASK, SEQ_WINDOW, seq_diff
from reassembly.stats import Stats

__all__ = ["FlowEntry", "FlowTable"]

_FIN: Final = int(TcpFlags.FIN)
_SYN: Final = int(TcpFlags.SYN)
_RST: Final = int(TcpFlags.RST)
_ACK: Final = int(TcpFlags.ACK)
_CONTROL: Final = _FIN | _SYN | _RST

_CLOSED_NAMES: Final = {r: "tcp_closed_" + r.value for r in CloseReason}
_FlowKey = tuple[bytes, int, bytes, int]


def _ntop(addr: bytes) -> str:
    if len(addr) == 4:
        return socket.inet_ntop(socket.AF_INET, addr)
    if len(addr) == 16:
        return socket.inet_ntop(socket.AF_INET6, addr)
    return addr.hex()


class _Flow:
    """One connection: its two directions and what is known about how it started."""

    __slots__ = (
        "c2s",
        "caddr",
        "closed",
        "cport",
        "first_ts",
        "flow_id",
        "ignored",
        "keys",
        "last_ts",
        "mid_stream",
        "opened",
        "raw_keys",
        "s2c",
        "saddr",
        "sport",
    )

    def __init__(
        self,
        flow_id: int,
        caddr: bytes,
        cport: int,
        saddr: bytes,
        sport: int,
        ts: float,
        mid: bool,
        pool: BufferPool,
    ) -> None:
        self.flow_id = flow_id
        self.caddr, self.cport, self.saddr, self.sport = caddr, cport, saddr, sport
        self.keys = ((caddr, cport, saddr, sport), (saddr, sport, caddr, cport))
        # The same two keys as IP + TCP headers carry them: src, dst, sport, dport (12 bytes for IPv4,
        # 36 for IPv6, so the two never collide).
        cp, sp = cport.to_bytes(2, "big"), sport.to_bytes(2, "big")
        self.raw_keys = (caddr + saddr + cp + sp, saddr + caddr + sp + cp)
        self.first_ts = self.last_ts = ts
        self.mid_stream = mid
        self.opened = self.closed = self.ignored = False
        self.c2s = HalfStream(flow_id, Direction.TO_SERVER, pool)
        self.s2c = HalfStream(flow_id, Direction.TO_CLIENT, pool)

    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (_ntop(self.caddr), self.cport), (_ntop(self.saddr), self.sport)


FlowEntry = tuple[_Flow, HalfStream, HalfStream]
"""A live flow as the index holds it: (flow, the direction a key names, the other direction)."""


class FlowTable:
    """All live TCP connections; see the module docstring for the policies."""

    def __init__(self, limits: Limits, stats: Stats, server_ports: frozenset[int] = frozenset()) -> None:
        self._limits = limits
        self._stats = stats
        self._server_ports = server_ports
        self._pool = BufferPool(limits, stats)
        # Both directions' keys map to (flow, this direction's stream, the other direction's stream).
        self._flows: dict[_FlowKey, FlowEntry] = {}
        # The same flows by the header bytes src, dst, sport, dport (`_Flow.raw_keys`): the pipeline's
        # fast path looks a frame up by one slice of it, with no address objects or tuple.
        self._raw: dict[bytes, FlowEntry] = {}
        self._lru: OrderedDict[int, _Flow] = OrderedDict()  # flow_id -> flow, least recently active first
        self._unopened: dict[int, _Flow] = {}  # flows that delivered nothing yet, oldest first
        self._tombs: OrderedDict[_FlowKey, float] = OrderedDict()  # closed flows' keys -> close time
        # Late packets of a closed flow arrive within a few RTTs (or retransmission timeouts).
        self._tomb_s = min(max(2 * limits.reorder_timeout_s, 1.0), limits.idle_timeout_s)
        self._ended: list[_Flow] = []  # flows `ignore` left ended, closed at the next advance/close
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def raw_index(self) -> dict[bytes, FlowEntry]:
        """Live flows by the bytes src, dst, sport, dport of either direction as the IP + TCP headers
        carry them: frame[ip + 12 : ip + 24] for IPv4 without options, frame[ip + 8 : ip + 44] for IPv6
        without extension headers -> (flow, that direction's stream, the other's). For the pipeline's
        fused fast path, which reads it and does `feed`'s in-order step itself (`Pipeline.feed`);
        never modified outside this class, never replaced."""
        return self._raw

    @property
    def lru(self) -> OrderedDict[int, _Flow]:
        """flow_id -> flow, least recently active first (the fast path moves a flow to the end)."""
        return self._lru

    def server_addresses(self, ports: frozenset[int]) -> set[bytes]:
        """The packed addresses (4 or 16 bytes) serving the live flows whose server port is in `ports`."""
        return {flow.saddr for flow in self._lru.values() if flow.sport in ports}

    def feed(self, seg: Segment) -> list[StreamEvent]:
        """One decoded TCP segment, in capture order."""
        entry = self._flows.get((seg.src, seg.sport, seg.dst, seg.dport))
        if entry is None:
            return self._feed_new(seg)
        flow, hs, peer = entry
        flow.last_ts = seg.ts
        self._lru.move_to_end(flow.flow_id)
        flags = seg.flags
        if not flags & _CONTROL:
            if flags & _ACK and hs.started:
                if peer.started:
                    a = (seg.ack - peer.seq_next) & SEQ_MASK
                    if a:
                        if a <= CONTROL_WINDOW:
                            return self._process(flow, hs, peer, seg, [])
                    elif peer.recent is not None:
                        peer.recent = None  # all acknowledged (see HalfStream.recent)
                elif peer.need_hint:
                    return self._process(flow, hs, peer, seg, [])
            payload = seg.payload
            if not payload:
                return []
            if hs.fast and seg.seq == hs.seq_next:
                # The in-order fast path: no copy, no buffering.
                off = hs.next
                n = len(payload)
                hs.next = off + n
                hs.seq_next = (hs.seq_next + n) & SEQ_MASK
                if n <= RECENT_MAX_BYTES:
                    hs.recent = payload
                    hs.recent_off = off
                else:
                    hs.recent = None
                return [StreamData(flow.flow_id, hs.direction, off, payload, seg.ts)]
        return self._process(flow, hs, peer, seg, [])

    def advance(self, ts: float) -> list[StreamEvent]:
        """Capture time moved on to `ts`: skip holes older than the reorder timeout, close idle flows."""
        out: list[StreamEvent] = []
        if self._ended:
            ended, self._ended = self._ended, []
            for flow in ended:
                if not flow.closed:
                    self._check_end(flow, ts, out)
        holes = self._pool.holes
        if holes:
            deadline = ts - self._limits.reorder_timeout_s
            expired = []
            for hs in holes:
                if hs.hole_ts > deadline:
                    break
                expired.append(hs)
            for hs in expired:
                owner = self._lru.get(hs.flow_id)
                if owner is None:
                    hs.release()
                    continue
                if not hs.in_holes:
                    continue
                mark = len(out)
                hs.on_timeout(deadline, ts, out)
                if len(out) > mark and not owner.opened:
                    self._open(owner, ts, out, mark)
                self._check_end(owner, ts, out)
        lru = self._lru
        idle_deadline = ts - self._limits.idle_timeout_s
        while lru:
            flow = next(iter(lru.values()))
            if flow.last_ts > idle_deadline:
                break
            self._close_flow(flow, CloseReason.IDLE, ts, out)
        tombs = self._tombs
        tomb_deadline = ts - self._tomb_s
        while tombs:
            if next(iter(tombs.values())) > tomb_deadline:
                break
            tombs.popitem(last=False)
        return out

    def close(self, ts: float) -> list[StreamEvent]:
        """End of capture: deliver what is buffered (holes become CLOSED gaps) and close every flow."""
        out: list[StreamEvent] = []
        for flow in list(self._lru.values()):
            self._close_flow(flow, CloseReason.END, ts, out)
        self._tombs.clear()
        self._ended.clear()
        return out

    def ignore(self, flow_id: int) -> None:
        """The consumer gave up on this flow: drop its buffers, deliver nothing more, still track its end."""
        flow = self._lru.get(flow_id)
        if flow is None or flow.ignored:
            return
        flow.ignored = True
        self._stats["tcp_ignored_flows"] += 1
        flow.c2s.set_ignored()
        flow.s2c.set_ignored()
        if self._has_ended(flow):
            self._ended.append(flow)

    # -- segment processing ----------------------------------------------------------------------------

    def _feed_new(self, seg: Segment) -> list[StreamEvent]:
        """A segment of no live flow: maybe a new one."""
        key = (seg.src, seg.sport, seg.dst, seg.dport)
        flags = seg.flags
        stats = self._stats
        if self._tombs and key in self._tombs:
            if not flags & _SYN or flags & _RST:
                if seg.payload:
                    stats["drop_after_close_bytes"] += len(seg.payload)
                else:
                    stats["tcp_after_close"] += 1
                return []
            self._tombs.pop(key, None)
            self._tombs.pop((seg.dst, seg.dport, seg.src, seg.sport), None)
        syn = flags & _SYN and not flags & _RST  # SYN+RST is nonsense: not a handshake
        if syn:
            client_is_src = not flags & _ACK
        elif seg.payload:
            client_is_src = self._src_is_client(seg)
        else:
            stats["tcp_ignored_no_payload"] += 1
            return []
        out: list[StreamEvent] = []
        if len(self._lru) >= self._limits.max_flows and self._lru:
            stats["evict_flows"] += 1
            if self._unopened:
                stats["evict_flows_half_open"] += 1
                victim = next(iter(self._unopened.values()))
            else:
                victim = next(iter(self._lru.values()))
            self._close_flow(victim, CloseReason.EVICTED, seg.ts, out)
        fid = self._next_id
        self._next_id += 1
        stats["tcp_flows"] += 1
        if client_is_src:
            flow = _Flow(fid, seg.src, seg.sport, seg.dst, seg.dport, seg.ts, not syn, self._pool)
        else:
            flow = _Flow(fid, seg.dst, seg.dport, seg.src, seg.sport, seg.ts, not syn, self._pool)
        c2s_key, s2c_key = flow.keys
        # Written in this order so that a self-connection (both keys equal) is one client direction.
        self._flows[s2c_key] = s2c_entry = (flow, flow.s2c, flow.c2s)
        self._flows[c2s_key] = c2s_entry = (flow, flow.c2s, flow.s2c)
        c2s_raw, s2c_raw = flow.raw_keys
        self._raw[s2c_raw] = s2c_entry
        self._raw[c2s_raw] = c2s_entry
        self._lru[fid] = flow
        self._unopened[fid] = flow
        if client_is_src:
            return self._process(flow, flow.c2s, flow.s2c, seg, out)
        return self._process(flow, flow.s2c, flow.c2s, seg, out)

    def _src_is_client(self, seg: Segment) -> bool:
        ports = self._server_ports
        if (seg.dport in ports) != (seg.sport in ports):
            return seg.dport in ports
        return seg.sport >= seg.dport

    def _process(
        self, flow: _Flow, hs: HalfStream, peer: HalfStream, seg: Segment, out: list[StreamEvent]
    ) -> list[StreamEvent]:
        """The general path for a segment of a known flow: handshake, ACK, payload, FIN, RST."""
        flags = seg.flags
        ts = seg.ts
        seq = seg.seq & SEQ_MASK
        payload = seg.payload
        if flags & _SYN and not flags & _RST:
            if not self._on_syn(flow, hs, peer, seg, out):
                return out
            seq = (seq + 1) & SEQ_MASK  # data in a SYN (TCP Fast Open) starts after it
        if flow.ignored:
            if payload:
                self._stats["tcp_ignored_bytes"] += len(payload)
            if flags & _FIN:
                hs.finished = True
            if flags & _RST:
                hs.finished = hs.end_rst = True
            self._check_end(flow, ts, out)
            return out
        mark = len(out)
        if flags & _ACK and hs.started:
            # Only an endpoint seen sending (its SYN, SYN-ACK or data) can acknowledge anything: an ACK
            # from one we never saw start is a stale or challenge ACK, not proof of loss.
            if peer.started:
                a = (seg.ack - peer.seq_next) & SEQ_MASK
                if a:
                    if a <= CONTROL_WINDOW:
                        peer.on_ack(peer.next + a, ts, out)
                elif peer.recent is not None:
                    peer.recent = None  # all acknowledged (see HalfStream.recent)
            elif peer.need_hint:
                peer.hint = seg.ack & SEQ_MASK
                peer.need_hint = False
        if not hs.started and (payload or flags & _FIN) and not flow.closed:
            self._start_midway(flow, hs, seq, bool(payload))
        if payload:
            hs.on_data(seq, payload, ts, out)
        if flags & _FIN:
            hs.on_fin((seq + len(payload)) & SEQ_MASK, ts, out)
        if flags & _RST:
            hs.on_rst((seq + len(payload)) & SEQ_MASK, ts, out)
        if len(out) > mark and not flow.opened:
            self._open(flow, ts, out, mark)
        self._check_end(flow, ts, out)
        return out

    def _on_syn(
        self, flow: _Flow, hs: HalfStream, peer: HalfStream, seg: Segment, out: list[StreamEvent]
    ) -> bool:
        """Handshake step or retransmission: True (go on with this segment). A new connection on this
        4-tuple: the old flow is closed (REUSED), the new one fed, False."""
        isn = seg.seq & SEQ_MASK
        if not flow.mid_stream and not flow.closed:
            expected = flow.s2c if seg.flags & _ACK else flow.c2s
            if hs is expected:
                if not hs.started:
                    hs.start(isn + 1, mid=False)
                    if hs is flow.c2s:
                        if not peer.started:
                            peer.need_hint = True
                    elif not peer.started:
                        peer.start(seg.ack, mid=False)  # capture began at the SYN-ACK
                    return True
                if hs.base == (isn + 1) & SEQ_MASK:
                    self._stats["tcp_syn_retrans"] += 1
                    return True
        self._close_flow(flow, CloseReason.REUSED, seg.ts, out)
        out.extend(self._feed_new(seg))
        return False

    @staticmethod
    def _start_midway(flow: _Flow, hs: HalfStream, seq: int, has_payload: bool) -> None:
        """First data (or FIN) of a direction whose start was not seen."""
        if hs.hint >= 0 and 0 <= seq_diff(seq, hs.hint) < SEQ_WINDOW:
            hs.start(hs.hint, mid=False)  # the peer's handshake ACK said where this stream starts
        else:
            # A mid-stream flow announces both directions' MIDSTREAM gaps when it opens.
            hs.start(seq, mid=has_payload and not flow.mid_stream)

    # -- flow lifecycle --------------------------------------------------------------------------------

    def _open(self, flow: _Flow, ts: float, out: list[StreamEvent], at: int) -> None:
        client, server = flow.endpoints()
        events: list[StreamEvent] = [FlowOpened(flow.flow_id, client, server, flow.first_ts, flow.mid_stream)]
        if flow.mid_stream:
            # Both directions' starts are unknown: say so before any byte of either, so the consumer never
            # mistakes the late announcement of one direction for a loss after the other's first message.
            for direction in (Direction.TO_SERVER, Direction.TO_CLIENT):
                events.append(StreamGap(flow.flow_id, direction, 0, None, ts, GapReason.MIDSTREAM))
            self._stats["gap_midstream"] += 2
        out[at:at] = events
        flow.opened = True
        self._unopened.pop(flow.flow_id, None)
        for hs in (flow.c2s, flow.s2c):
            hs.live = True
            hs.refresh()

    @staticmethod
    def _has_ended(flow: _Flow) -> bool:
        c, s = flow.c2s, flow.s2c
        return (c.finished and c.end_rst) or (s.finished and s.end_rst) or (c.finished and s.finished)

    def _check_end(self, flow: _Flow, ts: float, out: list[StreamEvent]) -> None:
        if flow.closed or not self._has_ended(flow):
            return
        c, s = flow.c2s, flow.s2c
        rst = (c.finished and c.end_rst) or (s.finished and s.end_rst)
        self._close_flow(flow, CloseReason.RST if rst else CloseReason.FIN, ts, out)

    def _close_flow(self, flow: _Flow, reason: CloseReason, ts: float, out: list[StreamEvent]) -> None:
        mark = len(out)
        flow.c2s.flush(GapReason.CLOSED, ts, out)
        flow.s2c.flush(GapReason.CLOSED, ts, out)
        if len(out) > mark and not flow.opened:
            self._open(flow, ts, out, mark)
        if flow.opened:
            out.append(FlowClosed(flow.flow_id, reason, ts))
        flow.closed = True
        for key in flow.keys:
            self._flows.pop(key, None)
        for raw in flow.raw_keys:
            self._raw.pop(raw, None)
        self._lru.pop(flow.flow_id, None)
        self._unopened.pop(flow.flow_id, None)
        self._stats[_CLOSED_NAMES[reason]] += 1
        if reason is CloseReason.FIN or reason is CloseReason.RST:
            tombs = self._tombs
            for key in flow.keys:
                tombs[key] = ts
                tombs.move_to_end(key)
            while len(tombs) > 2 * max(self._limits.max_flows, 1):
                tombs.popitem(last=False)
