"""One exchange being assembled on a connection, and how it is finished into an `Exchange` with its flags.

The connection (http_connection) decides which request a response answers; this module only holds the
pair while its messages are read (`PendingExchange`) and, once both are done or given up on, turns it
into the emitted `Exchange`, flagging what is partial (orphan, unanswered, incomplete, gap, truncated,
mid-stream) and counting orphans, unanswered requests and exchanges in Stats.
"""

from __future__ import annotations

from typing import Final

from reassembly.events import Endpoint, Exchange, ExchangeFlag, HttpMessage, HttpRequest, HttpResponse
from reassembly.stats import Stats

__all__ = ["PendingExchange", "finish_exchange"]


class PendingExchange:
    """One exchange being assembled."""

    __slots__ = ("flags", "held", "index", "request", "request_done", "response", "response_done", "ts_start")

    def __init__(self, index: int, ts_start: float, request: HttpRequest | None) -> None:
        self.index = index
        self.ts_start = ts_start  # capture time the request began (the response's, for an orphan)
        self.request = request
        self.response: HttpResponse | None = None
        self.request_done = False
        self.response_done = False
        self.flags: set[ExchangeFlag] = set()
        self.held = 0  # request body bytes charged to the HTTP buffer pool while the response is awaited


# (incomplete, gap, truncated) flags of each side of an exchange.
_REQUEST_FLAGS: Final = (
    ExchangeFlag.REQUEST_INCOMPLETE,
    ExchangeFlag.REQUEST_GAP,
    ExchangeFlag.REQUEST_BODY_TRUNCATED,
)
_RESPONSE_FLAGS: Final = (
    ExchangeFlag.RESPONSE_INCOMPLETE,
    ExchangeFlag.RESPONSE_GAP,
    ExchangeFlag.RESPONSE_BODY_TRUNCATED,
)


def _flag_message(
    message: HttpMessage,
    done: bool,
    flags: set[ExchangeFlag],
    names: tuple[ExchangeFlag, ExchangeFlag, ExchangeFlag],
) -> None:
    """Mark a message not read to its end incomplete, and add its side's partial-message flags."""
    if not done:
        message.complete = False
    if not message.complete:
        flags.add(names[0])
    if message.gap:
        flags.add(names[1])
    if message.body_truncated:
        flags.add(names[2])


def finish_exchange(
    entry: PendingExchange, flow_id: int, client: Endpoint, server: Endpoint, mid_stream: bool, stats: Stats
) -> Exchange:
    """The `Exchange` for an entry whose messages are done (a message not done is marked incomplete)."""
    flags = entry.flags
    request = entry.request
    response = entry.response
    # The common exchange (both messages read whole) needs no flag: tested inline, without the calls.
    if request is None:
        flags.add(ExchangeFlag.ORPHAN_RESPONSE)
        stats["http_orphan_responses"] += 1
    elif not (entry.request_done and request.complete and not request.gap and not request.body_truncated):
        _flag_message(request, entry.request_done, flags, _REQUEST_FLAGS)
    if response is None:
        flags.add(ExchangeFlag.UNANSWERED)
        stats["http_unanswered"] += 1
    elif not (entry.response_done and response.complete and not response.gap and not response.body_truncated):
        _flag_message(response, entry.response_done, flags, _RESPONSE_FLAGS)
    if mid_stream:
        flags.add(ExchangeFlag.MIDSTREAM)
    stats["exchanges"] += 1  # the one place every Exchange is made: the count
    return Exchange(flow_id, client, server, request, response, entry.index, flags)
