"""The values that flow between the stages of the sans-IO core.

Every stage of `reassembly` has the same shape: `feed(...) -> list[event]`, `advance(ts) -> list[event]`,
`close(ts) -> list[event]`. This module holds those events, so each stage can be tested by feeding it
lists of the previous stage's output (as h11 does with its event classes).

Data path: frame bytes --decode--> `Segment` --FlowTable--> `FlowOpened` / `StreamData` / `StreamGap` /
`FlowClosed` --HttpConnectionParser--> `Exchange`.

Conventions: `ts` is capture time in float seconds since the epoch (never the wall clock); offsets are
0-based byte positions in one direction's stream (64-bit, past any 32-bit sequence wraparound); headers
and bodies stay `bytes` here and are only decoded to text in `sniffer.moesif`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntFlag, StrEnum

__all__ = [
    "CloseReason",
    "Direction",
    "Endpoint",
    "Exchange",
    "ExchangeFlag",
    "FlowClosed",
    "FlowOpened",
    "GapReason",
    "HttpMessage",
    "HttpRequest",
    "HttpResponse",
    "Segment",
    "StreamData",
    "StreamEvent",
    "StreamGap",
    "TcpFlags",
]


class TcpFlags(IntFlag):
    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class Direction(StrEnum):
    """Which half of a TCP connection: the client's bytes or the server's bytes."""

    TO_SERVER = "to_server"
    TO_CLIENT = "to_client"


class GapReason(StrEnum):
    """Why bytes of a stream were declared lost. The values double as metric labels."""

    ACKED_UNSEEN = "acked_unseen"  # the peer acknowledged bytes the capture never saw
    TIMEOUT = "timeout"  # a hole outlived Limits.reorder_timeout_s
    OVERFLOW = "overflow"  # a buffer cap forced us to skip past a hole
    MIDSTREAM = "midstream"  # flow adopted without its start: length unknown
    CLOSED = "closed"  # flow ended (FIN/RST/idle/end of capture) with a hole still open


class CloseReason(StrEnum):
    FIN = "fin"
    RST = "rst"
    IDLE = "idle"  # no packet for Limits.idle_timeout_s of capture time
    EVICTED = "evicted"  # the flow table was full and this flow was the oldest idle one
    END = "end"  # close() at the end of the capture / shutdown
    REUSED = "reused"  # a new SYN on the same 4-tuple replaced a finished connection


Endpoint = tuple[str, int]
"""An (ip text, port) pair; IPv6 text without brackets."""


@dataclass(slots=True)
class Segment:
    """One decoded TCP segment. Addresses are packed bytes (4 or 16) so decoding never formats text."""

    ts: float
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int  # TcpFlags bits
    payload: bytes
    window: int = 0


@dataclass(slots=True, frozen=True)
class FlowOpened:
    flow_id: int
    client: Endpoint
    server: Endpoint
    ts: float
    mid_stream: bool  # True when the handshake was not seen: roles were guessed


@dataclass(slots=True, frozen=True)
class StreamData:
    flow_id: int
    direction: Direction
    offset: int  # stream offset of data[0]
    data: bytes
    ts: float  # capture time of the segment that made these bytes deliverable


@dataclass(slots=True, frozen=True)
class StreamGap:
    flow_id: int
    direction: Direction
    offset: int  # stream offset where the lost range begins
    length: int | None  # None when unknown (mid-stream start)
    ts: float
    reason: GapReason


@dataclass(slots=True, frozen=True)
class FlowClosed:
    flow_id: int
    reason: CloseReason
    ts: float


StreamEvent = FlowOpened | StreamData | StreamGap | FlowClosed


class ExchangeFlag(StrEnum):
    """Why an exchange is partial. Sorted into `metadata.capture` of the Moesif event."""

    UNANSWERED = "unanswered"  # request seen, no response (flow ended, timed out, or lost)
    ORPHAN_RESPONSE = "orphan_response"  # response seen, its request was not
    REQUEST_INCOMPLETE = "request_incomplete"  # request cut before its framing ended
    RESPONSE_INCOMPLETE = "response_incomplete"  # response cut before its framing ended
    REQUEST_GAP = "request_gap"  # bytes lost inside the request body (known length, kept)
    RESPONSE_GAP = "response_gap"  # bytes lost inside the response body (known length, kept)
    REQUEST_BODY_TRUNCATED = "request_body_truncated"  # body longer than Limits.max_body_bytes
    RESPONSE_BODY_TRUNCATED = "response_body_truncated"
    MIDSTREAM = "midstream"  # the flow was picked up without its handshake
    TUNNEL = "tunnel"  # CONNECT 2xx or 101 Upgrade: the rest of the flow is not HTTP
    PAIRING_GUESSED = "pairing_guessed"  # paired by capture time after lost bytes, not by FIFO order


@dataclass(slots=True, kw_only=True)
class HttpMessage:
    """What is common to a request and a response as seen on the wire."""

    version: bytes  # b"HTTP/1.1", b"HTTP/1.0"
    headers: list[tuple[bytes, bytes]]  # as sent: original case and order, values stripped
    body: bytes = b""  # transfer coding removed (chunked framing stripped); content coding kept
    body_size: int = 0  # entity bytes the framing carried, including any beyond the cap or lost
    body_truncated: bool = False  # len(body) < body_size because of Limits.max_body_bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ts_start: float = 0.0  # capture time of the first byte of the message
    ts_end: float = 0.0  # capture time of the last byte of the message seen
    stream_offset: int = 0  # offset of the first byte in its direction's stream
    complete: bool = True  # False when the message was cut before its framing ended
    gap: bool = False  # bytes inside the body were lost (the exchange is kept, flagged)

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, by case-insensitive name."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(slots=True, kw_only=True)
class HttpRequest(HttpMessage):
    method: bytes
    target: bytes  # request-target as sent: origin form "/p?q", absolute form, or authority (CONNECT)


@dataclass(slots=True, kw_only=True)
class HttpResponse(HttpMessage):
    status: int
    reason: bytes = b""
    interim: list[int] = field(default_factory=list)  # 1xx statuses seen before this final response


@dataclass(slots=True, kw_only=True)
class Exchange:
    """One HTTP request paired with its response on one TCP connection."""

    flow_id: int
    client: Endpoint
    server: Endpoint
    request: HttpRequest | None  # None: an orphan response
    response: HttpResponse | None  # None: unanswered
    index: int = 0  # position of this exchange within its connection, 0-based
    flags: set[ExchangeFlag] = field(default_factory=set)
