"""One direction's HTTP/1.x message reader: a state machine over a receive buffer, reporting to a sink.

Theory of operation: `feed` appends bytes and runs the step for the current state until a step needs more
bytes. States and their steps are a table (`_STEPS`), as in h11's READERS. A reader knows nothing about
the other direction: when a head is complete it asks the sink (the connection) for the body framing,
because a response's framing depends on the request it answers. Loss is reported, never papered over:
a gap inside a body of known length is counted and skipped; any other gap ends the message incomplete and
moves the reader to RESYNC, which scans for the next start line.

Buffering: the buffer holds at most one head (<= Limits.max_header_bytes) plus the latest chunk. In body
states bytes are sliced straight out of the fed chunk (no copy when a chunk is kept whole), the kept body
stops growing at Limits.max_body_bytes, and nothing is ever re-scanned.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Protocol

from reassembly.events import HttpRequest, HttpResponse
from reassembly.http_framing import Framing, FramingKind, parse_chunk_size
from reassembly.http_head import (
    HeadError,
    check_start_line,
    find_head_end,
    find_start_line,
    parse_fields,
    parse_head,
    plausible_request_prefix,
    plausible_response_prefix,
    split_lines,
)
from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = ["MessageReader", "ReaderSink", "Role", "State"]

# Bytes kept while scanning for a start line when no line end is in sight (a request line longer than this
# is not one we could parse anyway).
_RESYNC_TAIL = 16
# Chunk boundaries remembered in the pending line while scanning for a start line.
_MAX_STARTS = 64
# Body pieces kept as separate slices before they are folded together (a whole body usually is one).
_MAX_PARTS = 32


class Role(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"
    UNKNOWN = "unknown"  # a mid-stream direction before its first start line is found


class State(IntEnum):
    START = 0  # between messages
    HEAD = 1  # a start line began; waiting for the empty line
    BODY_LENGTH = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5  # the CRLF after a chunk's data
    TRAILERS = 6
    BODY_CLOSE = 7  # response read until the connection closes
    RESYNC = 8  # bytes were lost: scanning for the next start line
    PAUSED = 9  # a request that may switch protocols (CONNECT, Upgrade) awaits its response
    DEAD = 10  # not HTTP, a tunnel, or closed


Message = HttpRequest | HttpResponse


class ReaderSink(Protocol):
    """What a reader reports to; the connection implements it."""

    def on_head(self, reader: MessageReader, msg: Message) -> Framing: ...

    def on_message(self, reader: MessageReader, msg: Message) -> None: ...

    def on_lost(self, reader: MessageReader, started: bool, exact: bool) -> None: ...

    def on_role(self, reader: MessageReader, role: Role) -> None: ...

    def on_not_http(self, reader: MessageReader) -> None: ...


class MessageReader:
    """Reads the messages of one direction of one connection.

    Args:
        role: REQUEST for the client's bytes, RESPONSE for the server's, UNKNOWN (mid-stream) to let the
            first start line found decide; the sink may set `role` later.
        mid_stream: start in RESYNC instead of expecting a start line at the first byte.
    """

    def __init__(
        self, role: Role, limits: Limits, stats: Stats, sink: ReaderSink, *, mid_stream: bool
    ) -> None:
        self.role = role
        self._sink = sink
        self._stats = stats
        self._max_head = limits.max_header_bytes
        self._max_body = limits.max_body_bytes
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._next: int | None = 0  # stream offset expected next; None after a gap of unknown length
        self._ts = 0.0  # capture time of the latest bytes fed
        self._first = not mid_stream  # the first start line decides whether this is HTTP at all
        self._line_start = True  # (RESYNC) does buf[pos] begin a line?
        self._scan = 0  # where the current search may resume
        self._line_checked = False  # (HEAD) start line already validated
        self._msg: Message | None = None
        self._msg_offset = 0
        self._msg_ts = 0.0
        self._remaining = 0
        self._parts: list[bytes | bytearray] = []
        self._kept = 0
        self._size = 0
        self._gap = False  # bytes of the body in flight were lost
        self._truncated = False  # bytes of the body in flight were over the cap
        self._resync_on_resume = False
        self._starts: list[int] = []  # (RESYNC) buffer indexes where a fed chunk began
        self.state = State.RESYNC if mid_stream else State.START

    # -- input -------------------------------------------------------------------------------------------

    def feed(self, data: bytes, offset: int, ts: float) -> None:
        """Take the next bytes of this direction (offset = stream offset of data[0])."""
        if self.state is State.DEAD or not data:
            return
        expected = self._next
        if expected is not None and offset != expected:
            if offset > expected:
                self.gap(expected, offset - expected)
            elif offset + len(data) <= expected:
                return
            else:
                data = data[expected - offset :]
                offset = expected
        self._next = offset + len(data)
        self._ts = ts
        buf = self._buf
        if self.state is State.RESYNC:
            # Writers start a message with a fresh write, so a chunk boundary is a likely message
            # boundary even when the bytes before it (a JSON body, say) did not end a line.
            # Keep the earliest boundaries of the pending line (a line split into many chunks) and the
            # latest ones (a message right after a long body line); drop from the middle.
            starts = self._starts
            if len(starts) >= _MAX_STARTS:
                del starts[_MAX_STARTS // 4]
            starts.append(len(buf) if self._pos < len(buf) else 0)
        if self._pos >= len(buf):
            self._buf = data
            self._pos = self._scan = 0
        else:
            if type(buf) is bytes:
                self._buf = buf = bytearray(buf)
            buf += data  # type: ignore[operator]
        self._run()
        self._compact()

    def gap(self, offset: int, length: int | None) -> None:
        """Bytes [offset, offset+length) of this direction were lost (length None: unknown amount)."""
        state = self.state
        if state is State.DEAD:
            return
        expected = self._next
        if length is not None and expected is not None and offset != expected:
            # Keep the bookkeeping exact even if the gap does not start where the bytes ended.
            length += offset - expected
            offset = expected
        if length is not None and length <= 0:
            return
        if length is None and expected == 0 and self._msg is None and not self._buf:
            # The flow was picked up mid-stream before any byte of ours: nothing we knew of is lost.
            self._first = False
            self._next = None
            self._enter_resync(True)
            return
        self._next = None if length is None else offset + length
        self._first = False
        if length is None:
            pass
        elif state is State.BODY_LENGTH or state is State.CHUNK_DATA:
            self._gap = True
            if length <= self._remaining:
                self._size += length
                self._remaining -= length
                if self._remaining == 0:
                    if state is State.BODY_LENGTH:
                        self._finish(True)
                    else:
                        self.state = State.CHUNK_END
                return
            self._size += self._remaining
            if state is State.BODY_LENGTH:
                self._finish(True)  # the body ended inside the gap; what followed it is lost
                self._drop_buffer()
                self._sink.on_lost(self, False, False)
                self._enter_resync(True)
                return
        elif state is State.BODY_CLOSE:
            self._size += length
            self._gap = True
            return
        self._drop_buffer()
        if state is State.PAUSED:
            self._resync_on_resume = True
            return
        self._lose_current(exact=False)
        self._enter_resync(True)

    def close(self) -> None:
        """The flow ended: a close-delimited body is complete, anything else in flight is not."""
        state = self.state
        if state is State.BODY_CLOSE:
            self._finish(True)
        elif state is not State.DEAD and state is not State.PAUSED:
            self._lose_current(exact=True)
        self.state = State.DEAD

    def pause(self) -> None:
        if self.state is State.START:
            self.state = State.PAUSED

    def resume(self) -> None:
        if self.state is not State.PAUSED:
            return
        if self._resync_on_resume:
            self._resync_on_resume = False
            self._enter_resync(True)
        else:
            self.state = State.START
        self._run()
        self._compact()

    def kill(self) -> None:
        self._drop_buffer()
        self._clear_message()
        self.state = State.DEAD

    def reset(self) -> None:
        """After an internal error: forget everything buffered and look for the next start line."""
        self._drop_buffer()
        self._clear_message()
        self._enter_resync(False)

    @property
    def buffered_bytes(self) -> int:
        """Bytes this reader holds: unparsed input plus the kept body of the message in flight."""
        return len(self._buf) - self._pos + self._kept

    @property
    def message_ts(self) -> float:
        """Capture time of the first byte of the message in flight (or the last one begun)."""
        return self._msg_ts

    # -- machinery ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        steps = _STEPS
        while self._pos < len(self._buf) and steps[self.state](self):
            pass

    def _compact(self) -> None:
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            self._drop_buffer()
        elif pos:
            self._buf = buf[pos:]
            self._pos = 0
            self._scan = max(0, self._scan - pos)
            if self._starts:
                self._starts = [start - pos for start in self._starts if start >= pos]
        if self.state is State.PAUSED and len(self._buf) > self._max_head:
            self._stats["cap_paused_bytes"] += 1
            self._drop_buffer()
            self._resync_on_resume = True

    def _drop_buffer(self) -> None:
        self._buf = b""
        self._pos = 0
        self._scan = 0
        self._starts = []

    def _offset_at(self, index: int) -> int:
        # Only called while bytes are flowing, when _next is known.
        return (self._next or 0) - len(self._buf) + index

    def _enter_resync(self, line_start: bool) -> None:
        self.state = State.RESYNC
        self._line_start = line_start
        self._scan = self._pos
        self._msg = None

    def _lose_current(self, exact: bool) -> None:
        """End whatever message is in flight as incomplete (a head not yet parsed is reported lost)."""
        if self._msg is not None:
            self._finish(False)
            if not exact:
                # The loss may reach past this message: the sink cannot know how many followed it.
                self._sink.on_lost(self, False, False)
        elif self.state is State.HEAD:
            self._sink.on_lost(self, True, exact)
        elif not exact:
            self._sink.on_lost(self, False, False)

    def _desync(self) -> bool:
        """The bytes at pos break the framing: count it, end the message incomplete, look for the next one."""
        # No byte was lost, so no whole message can have vanished: FIFO pairing stays trusted.
        self._stats["http_desync"] += 1
        self._finish(False)
        self._enter_resync(True)
        return True

    def _take(self, n: int) -> None:
        """Account n body bytes at pos; keep them while under the body cap."""
        pos = self._pos
        self._size += n
        room = self._max_body - self._kept
        if n > room:
            self._truncated = True
        if room > 0:
            k = n if n < room else room
            parts = self._parts
            parts.append(self._buf[pos : pos + k])
            self._kept += k
            if len(parts) > _MAX_PARTS:
                # Tiny segments must not cost an object each: fold them into one growing bytearray.
                first = parts[0]
                if type(first) is bytearray:
                    first += b"".join(parts[1:])
                    del parts[1:]
                else:
                    parts[:] = [bytearray(b"".join(parts))]
        self._pos = pos + n

    def _clear_message(self) -> None:
        self._msg = None
        self._parts = []
        self._kept = self._size = 0
        self._gap = self._truncated = False

    def _finish(self, complete: bool) -> None:
        msg = self._msg
        if msg is None:
            return
        self._msg = None
        parts = self._parts
        msg.body = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)
        msg.body_size = self._size
        msg.body_truncated = self._truncated
        msg.complete = complete
        msg.gap = self._gap
        msg.ts_end = self._ts
        if msg.body_truncated:
            self._stats["truncated_http_body"] += 1
        self._clear_message()
        self.state = State.START
        self._first = False
        self._sink.on_message(self, msg)

    # -- steps: each returns True when it made progress and may be called again -----------------------------

    def _step_start(self) -> bool:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        while pos < n and buf[pos] in (13, 10):
            pos += 1
        self._pos = pos
        if pos >= n:
            return False
        self._msg_offset = self._offset_at(pos)
        self._msg_ts = self._ts
        self._scan = pos
        self._line_checked = False
        self.state = State.HEAD
        return True

    def _step_head(self) -> bool:
        buf = self._buf
        pos = self._pos
        # Usually the whole head is here already: parse it in one go.
        end, after = find_head_end(buf, self._scan)
        if end < 0:
            return self._wait_for_head(buf, pos)
        if self._head_too_long(end - pos):
            return False
        try:
            msg = parse_head(bytes(buf[pos:end]), self.role is Role.REQUEST)
        except HeadError:
            return self._bad_start_line(buf.find(b"\n", pos))
        self._pos = after
        msg.ts_start = self._msg_ts
        msg.stream_offset = self._msg_offset
        self._first = False
        self._msg = msg
        self._begin_body(self._sink.on_head(self, msg))
        return True

    def _wait_for_head(self, buf: bytes | bytearray, pos: int) -> bool:
        """A partial head: judge its start line as soon as it is whole, and bound the buffer."""
        if not self._line_checked:
            # Invariant while the line is unchecked: buf[pos:_scan] holds no LF.
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                if self._first and not (
                    plausible_request_prefix(buf, pos)
                    if self.role is Role.REQUEST
                    else plausible_response_prefix(buf, pos)
                ):
                    return self._not_http()
                if not self._head_too_long(len(buf) - pos):
                    self._scan = len(buf)
                return False
            if not check_start_line(bytes(buf[pos:nl]).rstrip(b"\r"), self.role is Role.REQUEST):
                return self._bad_start_line(nl)
            self._line_checked = True
            self._scan = nl
        if not self._head_too_long(len(buf) - pos):
            self._scan = max(self._scan, len(buf) - 2)
        return False

    def _bad_start_line(self, nl: int) -> bool:
        if self._first:
            return self._not_http()
        # Not a start line where one must be: most likely the tail of a misframed body.
        self._stats["http_desync"] += 1
        self._pos = nl + 1
        self._enter_resync(True)
        return True

    def _head_too_long(self, size: int) -> bool:
        """Drop an oversized head (True) so the buffer never holds more than Limits.max_header_bytes."""
        if size <= self._max_head:
            return False
        self._stats["cap_header_bytes"] += 1
        self._first = False
        self._sink.on_lost(self, True, True)
        # Everything up to here is one oversized head: skip it and look for the next start line.
        self._pos = len(self._buf)
        self._enter_resync(False)
        return True

    def _not_http(self) -> bool:
        self.kill()
        self._sink.on_not_http(self)
        return False

    def _begin_body(self, framing: Framing) -> None:
        kind = framing.kind
        if framing.te_and_cl:
            self._stats["http_te_and_cl"] += 1
        if kind is FramingKind.NONE:
            self._finish(True)
        elif kind is FramingKind.LENGTH:
            self._remaining = framing.length
            self.state = State.BODY_LENGTH
        elif kind is FramingKind.CHUNKED:
            self.state = State.CHUNK_SIZE
        elif kind is FramingKind.CLOSE:
            self.state = State.BODY_CLOSE
        elif kind is FramingKind.TUNNEL:
            self._finish(True)
            self.kill()
        else:
            self._desync()

    def _step_body_length(self) -> bool:
        avail = len(self._buf) - self._pos
        remaining = self._remaining
        n = avail if avail < remaining else remaining
        self._take(n)
        self._remaining = remaining - n
        if remaining == n:
            self._finish(True)
            return True
        return False

    def _step_chunk_size(self) -> bool:
        buf = self._buf
        pos = self._pos
        nl = buf.find(b"\n", pos)
        if nl < 0:
            if len(buf) - pos > self._max_head:
                return self._desync()
            return False
        size = parse_chunk_size(bytes(buf[pos:nl]))
        if size is None:
            return self._desync()
        self._pos = nl + 1
        if size:
            self._remaining = size
            self.state = State.CHUNK_DATA
        else:
            self._scan = nl + 1
            self.state = State.TRAILERS
        return True

    def _step_chunk_data(self) -> bool:
        avail = len(self._buf) - self._pos
        remaining = self._remaining
        n = avail if avail < remaining else remaining
        self._take(n)
        self._remaining = remaining - n
        if remaining == n:
            self.state = State.CHUNK_END
            return True
        return False

    def _step_chunk_end(self) -> bool:
        buf = self._buf
        pos = self._pos
        first = buf[pos]
        if first == 10:
            self._pos = pos + 1
        elif first == 13:
            if pos + 1 >= len(buf):
                return False
            if buf[pos + 1] != 10:
                return self._desync()
            self._pos = pos + 2
        else:
            return self._desync()
        self.state = State.CHUNK_SIZE
        return True

    def _step_trailers(self) -> bool:
        buf = self._buf
        pos = self._pos
        first = buf[pos]
        if first == 10 or first == 13:
            # No trailer fields: just the empty line.
            if first == 13:
                if pos + 1 >= len(buf):
                    return False
                if buf[pos + 1] != 10:
                    return self._desync()
                pos += 1
            self._pos = pos + 1
            self._finish(True)
            return True
        end, after = find_head_end(buf, max(self._scan, pos))
        if end < 0:
            if len(buf) - pos > self._max_head:
                return self._desync()
            self._scan = max(pos, len(buf) - 2)
            return False
        msg = self._msg
        if msg is not None and end > self._pos:
            msg.trailers = parse_fields(split_lines(bytes(buf[self._pos : end])))
        self._pos = after
        self._finish(True)
        return True

    def _step_body_close(self) -> bool:
        self._take(len(self._buf) - self._pos)
        return False

    def _step_resync(self) -> bool:
        buf = self._buf
        pos = self._pos
        role = self.role
        found, is_request, scan = find_start_line(
            buf,
            pos,
            max(self._scan, pos),
            self._line_start,
            role is not Role.RESPONSE,
            role is not Role.REQUEST,
            self._starts,
        )
        if found >= 0:
            self._starts = []
            self._stats["http_resync"] += 1
            if role is Role.UNKNOWN:
                self._sink.on_role(self, Role.REQUEST if is_request else Role.RESPONSE)
            self._pos = found
            self.state = State.START
            return True
        n = len(buf)
        nl = buf.rfind(b"\n", pos)
        if nl >= 0:
            pos = nl + 1
            self._line_start = True
        if n - pos > self._max_head:
            pos = n - _RESYNC_TAIL
            self._line_start = False
        self._pos = pos
        self._scan = max(scan, pos)
        return False

    def _step_idle(self) -> bool:
        return False


_STEPS = {
    State.START: MessageReader._step_start,
    State.HEAD: MessageReader._step_head,
    State.BODY_LENGTH: MessageReader._step_body_length,
    State.CHUNK_SIZE: MessageReader._step_chunk_size,
    State.CHUNK_DATA: MessageReader._step_chunk_data,
    State.CHUNK_END: MessageReader._step_chunk_end,
    State.TRAILERS: MessageReader._step_trailers,
    State.BODY_CLOSE: MessageReader._step_body_close,
    State.RESYNC: MessageReader._step_resync,
    State.PAUSED: MessageReader._step_idle,
    State.DEAD: MessageReader._step_idle,
}
