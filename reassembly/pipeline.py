"""`Pipeline`: the whole core composed, one `feed(ts, linktype, frame)` per captured frame.

decode (`Decoder`) -> TCP reassembly (`FlowTable`) -> HTTP per connection (`HttpConnectionParser`).
The pipeline owns the routing between them and nothing else: which parser a stream event goes to, when a
parser is created and closed, and telling the TCP layer to stop buffering flows the HTTP layer gave up on
(TLS, binary protocols, tunnels after CONNECT/101). Time only ever comes from the capture timestamps the
caller passes in, so replaying a file and capturing live run the same code and give the same exchanges.
"""

from __future__ import annotations

from reassembly.decode import Decoder
from reassembly.events import Exchange, FlowOpened, StreamData, StreamEvent, StreamGap
from reassembly.flow_table import FlowTable
from reassembly.http_budget import HttpBufferPool
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = ["Pipeline"]

# How often (in capture seconds) timeouts are checked. Finer adds cost per packet for no visible gain:
# the reorder and idle timeouts it serves are measured in seconds.
ADVANCE_INTERVAL_S = 1.0


class Pipeline:
    """Frames in, `Exchange`s out. Not thread-safe: one pipeline per capture worker."""

    __slots__ = (
        "_closed",
        "_decode",
        "_decoder",
        "_flows",
        "_flows_feed",
        "_http_pool",
        "_ignored_ports",
        "_next_advance_ts",
        "_parsers",
        "_server_ports",
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
        self._closed = False
        # Bound once: these run for every frame.
        self._decode = self._decoder.decode
        self._flows_feed = self._flows.feed

    @property
    def flow_count(self) -> int:
        return len(self._flows)

    @property
    def http_buffer_bytes(self) -> int:
        """Bytes the HTTP layer holds now (partial heads, bodies spanning segments)."""
        return self._http_pool.used

    def feed(self, ts: float, linktype: int, frame: bytes, wire_len: int | None = None) -> list[Exchange]:
        """One captured frame; returns the exchanges it completed (usually none)."""
        if self._closed:
            raise RuntimeError("feed() after close()")
        out: list[Exchange] = []
        next_ts = self._next_advance_ts
        if next_ts is None:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
        elif ts >= next_ts:
            self._next_advance_ts = ts + ADVANCE_INTERVAL_S
            self._route(self._flows.advance(ts), out)
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

    def advance(self, ts: float) -> list[Exchange]:
        """Capture time moved on without packets (live capture idle): run the timeouts."""
        out: list[Exchange] = []
        self._route(self._flows.advance(ts), out)
        return out

    def close(self, ts: float | None = None) -> list[Exchange]:
        """End of capture: flush every flow and every parser; the pipeline cannot be fed afterwards."""
        out: list[Exchange] = []
        if self._closed:
            return out
        self._closed = True
        end_ts = ts if ts is not None else (self._next_advance_ts or ADVANCE_INTERVAL_S) - ADVANCE_INTERVAL_S
        self._route(self._flows.close(end_ts), out)
        for parser in self._parsers.values():  # flows the table closed without telling us (defensive)
            parser.close(end_ts, out)
        self._parsers.clear()
        return out

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
