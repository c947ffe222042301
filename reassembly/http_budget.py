"""The global budget of bytes the HTTP layer holds across all connections (`HttpBufferPool`).

Each direction's reader holds at most one partial head (<= Limits.max_header_bytes) plus the kept body of
the message in flight (<= Limits.max_body_bytes); without a shared cap, thousands of connections each
holding an open head would add up to gigabytes. Readers charge the pool only where their buffer changes
size across a `feed` (a partial head, a body spanning segments), never per byte, so the common message
(head and body in one segment, nothing held after the feed) costs one comparison. A connection also
charges the body of each finished request while it waits for its response (up to
Limits.max_pending_requests of them when pipelined), and gives it back when the exchange is emitted.

Policy when a reader's growth takes the pool over its limit (Limits.max_http_buffer_bytes): that reader,
the one asking for more, sheds what it holds, as the TCP layer does with out-of-order bytes:
  - a kept body stops being kept (the message goes out flagged body-truncated, its size still counted):
    `cap_http_buffer_body`, `drop_http_buffer_body_bytes`;
  - a partial head is dropped as if over Limits.max_header_bytes (the request becomes a placeholder, its
    response an orphan flagged REQUEST_INCOMPLETE) and the reader resyncs: `cap_http_buffer_head`,
    `drop_http_buffer_head_bytes`;
  - anything else held (a resync scan, a chunk-size or trailer line, bytes held while paused) is dropped
    and the reader resyncs: `cap_http_buffer_other`, `drop_http_buffer_other_bytes`;
  - a finished request that would take the pool over waits for its response without its body (flagged
    body-truncated, its size still known): `cap_http_buffer_pending`, `drop_http_buffer_body_bytes`.
"""

from __future__ import annotations

__all__ = ["HttpBufferPool"]


class HttpBufferPool:
    """Bytes held by every reader sharing it (`used`) against `limit`; readers update `used` themselves."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
