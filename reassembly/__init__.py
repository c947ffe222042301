"""The sans-IO core: frame bytes and capture timestamps in, HTTP exchanges out.

No sockets, no clocks, no threads, no configuration files: everything here is testable from bytes.
Stages, in data-path order: `decode` (link/IP/TCP headers) -> `flow_table` + `half_stream` (TCP
reassembly) -> `http_connection` (HTTP/1.x framing and request/response pairing) -> `pipeline` (all of
them composed, one `feed(ts, linktype, frame)` call per captured frame).
"""

from reassembly.events import (
    CloseReason,
    Direction,
    Endpoint,
    Exchange,
    ExchangeFlag,
    FlowClosed,
    FlowOpened,
    GapReason,
    HttpMessage,
    HttpRequest,
    HttpResponse,
    Segment,
    StreamData,
    StreamEvent,
    StreamGap,
    TcpFlags,
)
from reassembly.limits import Limits
from reassembly.stats import Stats

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
    "Limits",
    "Segment",
    "Stats",
    "StreamData",
    "StreamEvent",
    "StreamGap",
    "TcpFlags",
]
