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

from enum import IntFlag, StrEnum
from typing import Any, ClassVar, Final

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
    "body_bytes",
    "exchange_end",
    "replace",
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


class _Value:
    """What the values below share: compared, shown and pickled by their fields, in `FIELDS` order.

    They are plain classes rather than dataclasses so that, compiled, they are native classes: every
    stage reads and writes their attributes per packet, and a compiled dataclass keeps an interpreted
    `__init__` and generic attribute access (compiling them as dataclasses made the core slower). Each
    constructor takes its fields positionally in `FIELDS` order (or by name), which is how `__reduce__`
    and `sniffer.capture.exchange_codec` rebuild them; `replace` is `dataclasses.replace` for them.
    """

    __slots__ = ()
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def field_values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.FIELDS])

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, _Value)
        return self.field_values() == other.field_values()

    def __repr__(self) -> str:
        shown = ", ".join([f"{name}={getattr(self, name)!r}" for name in self.FIELDS])
        return f"{type(self).__name__}({shown})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), self.field_values())


class _FrozenValue(_Value):
    """A value whose fields are `Final`: hashable, and (compiled) read-only."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.field_values())


def replace(value: Any, **changes: Any) -> Any:
    """A copy of `value` with some fields changed (what `dataclasses.replace` does for a dataclass)."""
    fields = {name: getattr(value, name) for name in value.FIELDS}
    fields.update(changes)
    return type(value)(**fields)


class Segment(_Value):
    """One decoded TCP segment. Addresses are packed bytes (4 or 16) so decoding never formats text."""

    __slots__ = ("ack", "dport", "dst", "flags", "payload", "seq", "sport", "src", "ts", "window")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "ts",
        "src",
        "dst",
        "sport",
        "dport",
        "seq",
        "ack",
        "flags",
        "payload",
        "window",
    )

    def __init__(
        self,
        ts: float,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        seq: int,
        ack: int,
        flags: int,  # TcpFlags bits
        payload: bytes,
        window: int = 0,
    ) -> None:
        self.ts = ts
        self.src = src
        self.dst = dst
        self.sport = sport
        self.dport = dport
        self.seq = seq
        self.ack = ack
        self.flags = flags
        self.payload = payload
        self.window = window


class FlowOpened(_FrozenValue):
    __slots__ = ("client", "flow_id", "mid_stream", "server", "ts")
    FIELDS: ClassVar[tuple[str, ...]] = ("flow_id", "client", "server", "ts", "mid_stream")

    def __init__(self, flow_id: int, client: Endpoint, server: Endpoint, ts: float, mid_stream: bool) -> None:
        self.flow_id: Final = flow_id
        self.client: Final = client
        self.server: Final = server
        self.ts: Final = ts
        self.mid_stream: Final = mid_stream  # True when the handshake was not seen: roles were guessed


class StreamData(_FrozenValue):
    __slots__ = ("data", "direction", "flow_id", "offset", "ts")
    FIELDS: ClassVar[tuple[str, ...]] = ("flow_id", "direction", "offset", "data", "ts")

    def __init__(self, flow_id: int, direction: Direction, offset: int, data: bytes, ts: float) -> None:
        self.flow_id: Final = flow_id
        self.direction: Final = direction
        self.offset: Final = offset  # stream offset of data[0]
        self.data: Final = data
        self.ts: Final = ts  # capture time of the segment that made these bytes deliverable


class StreamGap(_FrozenValue):
    __slots__ = ("direction", "flow_id", "length", "offset", "reason", "ts")
    FIELDS: ClassVar[tuple[str, ...]] = ("flow_id", "direction", "offset", "length", "ts", "reason")

    def __init__(
        self,
        flow_id: int,
        direction: Direction,
        offset: int,
        length: int | None,
        ts: float,
        reason: GapReason,
    ) -> None:
        self.flow_id: Final = flow_id
        self.direction: Final = direction
        self.offset: Final = offset  # stream offset where the lost range begins
        self.length: Final = length  # None when unknown (mid-stream start)
        self.ts: Final = ts
        self.reason: Final = reason


class FlowClosed(_FrozenValue):
    __slots__ = ("flow_id", "reason", "ts")
    FIELDS: ClassVar[tuple[str, ...]] = ("flow_id", "reason", "ts")

    def __init__(self, flow_id: int, reason: CloseReason, ts: float) -> None:
        self.flow_id: Final = flow_id
        self.reason: Final = reason
        self.ts: Final = ts


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


class HttpMessage(_Value):
    """What is common to a request and a response as seen on the wire."""

    # The fields (what each holds is noted in __init__); a subclass lists its own first.
    __slots__ = (
        "body",
        "body_size",
        "body_truncated",
        "complete",
        "gap",
        "headers",
        "stream_offset",
        "trailers",
        "ts_end",
        "ts_start",
        "version",
    )
    FIELDS: ClassVar[tuple[str, ...]] = (
        "version",
        "headers",
        "body",
        "body_size",
        "body_truncated",
        "trailers",
        "ts_start",
        "ts_end",
        "stream_offset",
        "complete",
        "gap",
    )

    def __init__(
        self,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        body_size: int = 0,
        body_truncated: bool = False,
        trailers: list[tuple[bytes, bytes]] | None = None,
        ts_start: float = 0.0,
        ts_end: float = 0.0,
        stream_offset: int = 0,
        complete: bool = True,
        gap: bool = False,
    ) -> None:
        self.version = version  # b"HTTP/1.1", b"HTTP/1.0"
        self.headers = headers  # as sent: original case and order, values stripped
        self.body = body  # transfer coding removed (chunked framing stripped); content coding kept
        self.body_size = body_size  # entity bytes the framing carried, including any beyond the cap or lost
        self.body_truncated = body_truncated  # len(body) < body_size because of Limits.max_body_bytes
        self.trailers: list[tuple[bytes, bytes]] = [] if trailers is None else trailers
        self.ts_start = ts_start  # capture time of the first byte of the message
        self.ts_end = ts_end  # capture time of the last byte of the message seen
        self.stream_offset = stream_offset  # offset of the first byte in its direction's stream
        self.complete = complete  # False when the message was cut before its framing ended
        self.gap = gap  # bytes inside the body were lost (the exchange is kept, flagged)

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, by case-insensitive name."""
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


class HttpRequest(HttpMessage):
    __slots__ = ("method", "target")
    FIELDS: ClassVar[tuple[str, ...]] = ("method", "target", *HttpMessage.FIELDS)

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes = b"",
        body_size: int = 0,
        body_truncated: bool = False,
        trailers: list[tuple[bytes, bytes]] | None = None,
        ts_start: float = 0.0,
        ts_end: float = 0.0,
        stream_offset: int = 0,
        complete: bool = True,
        gap: bool = False,
    ) -> None:
        self.method = method
        self.target = (
            target  # request-target as sent: origin form "/p?q", absolute form, or authority (CONNECT)
        )
        HttpMessage.__init__(
            self,
            version,
            headers,
            body,
            body_size,
            body_truncated,
            trailers,
            ts_start,
            ts_end,
            stream_offset,
            complete,
            gap,
        )


class HttpResponse(HttpMessage):
    __slots__ = ("interim", "reason", "status")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "status",
        "version",
        "headers",
        "reason",
        *HttpMessage.FIELDS[2:],
        "interim",
    )

    def __init__(
        self,
        status: int,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        reason: bytes = b"",
        body: bytes = b"",
        body_size: int = 0,
        body_truncated: bool = False,
        trailers: list[tuple[bytes, bytes]] | None = None,
        ts_start: float = 0.0,
        ts_end: float = 0.0,
        stream_offset: int = 0,
        complete: bool = True,
        gap: bool = False,
        interim: list[int] | None = None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.interim: list[int] = [] if interim is None else interim  # 1xx statuses before this final one
        HttpMessage.__init__(
            self,
            version,
            headers,
            body,
            body_size,
            body_truncated,
            trailers,
            ts_start,
            ts_end,
            stream_offset,
            complete,
            gap,
        )


class Exchange(_Value):
    """One HTTP request paired with its response on one TCP connection."""

    __slots__ = ("client", "flags", "flow_id", "index", "request", "response", "server")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "flow_id",
        "client",
        "server",
        "request",
        "response",
        "index",
        "flags",
    )

    def __init__(
        self,
        flow_id: int,
        client: Endpoint,
        server: Endpoint,
        request: HttpRequest | None,  # None: an orphan response
        response: HttpResponse | None,  # None: unanswered
        index: int = 0,  # position of this exchange within its connection, 0-based
        flags: set[ExchangeFlag] | None = None,
    ) -> None:
        self.flow_id = flow_id
        self.client = client
        self.server = server
        self.request = request
        self.response = response
        self.index = index
        self.flags: set[ExchangeFlag] = set() if flags is None else flags


def exchange_end(ex: Exchange) -> float:
    """The capture time an exchange completed: its response's end, else its request's (0.0: neither)."""
    resp, req = ex.response, ex.request
    if resp is not None:
        return resp.ts_end
    return req.ts_end if req is not None else 0.0


def body_bytes(ex: Exchange) -> int:
    """The body bytes an exchange holds: what the budgets of legs held for a partner or for order count."""
    req, resp = ex.request, ex.response
    return (len(req.body) if req is not None else 0) + (len(resp.body) if resp is not None else 0)
