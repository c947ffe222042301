"""The reader steps that find and read message heads: START, HEAD and RESYNC.

A head is parsed once, whole, when its empty line has arrived (usually in the same chunk as its start
line, so the common message costs one search for the empty line and one `read_head`). A partial head is
judged as soon as its start line is whole (not HTTP at the first line of a flow; a desync later), and
the buffer never holds more than Limits.max_header_bytes of it. After lost or misframed bytes, RESYNC
scans for the next plausible start line (`http_resync.find_start_line`), never examining a byte twice.
"""

from __future__ import annotations

from typing import Final

from reassembly.http_head import (
    EmptyLine,
    HeadError,
    check_start_line,
    lf_lines,
    plausible_request_prefix,
    plausible_response_prefix,
    read_head,
    read_lines,
)
from reassembly.http_reader_base import Role, State
from reassembly.http_reader_body import BodySteps
from reassembly.http_resync import find_start_line

__all__ = ["HeadSteps"]

# Bytes kept while scanning for a start line when no line end is in sight (a request line longer than this
# is not one we could parse anyway).
_RESYNC_TAIL: Final = 16

_REQUEST: Final = Role.REQUEST
_RESPONSE: Final = Role.RESPONSE
_UNKNOWN: Final = Role.UNKNOWN
_HEAD: Final = State.HEAD
_START: Final = State.START


class HeadSteps(BodySteps):
    """Steps of `MessageReader` up to the end of a head; each returns True when it may be called again."""

    __slots__ = ()

    def _step_start(self) -> bool:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        while pos < n and buf[pos] in (13, 10):
            pos += 1
        self._pos = pos
        if pos >= n:
            return False
        self._msg_offset = (self._next or 0) - n + pos  # _offset_at(pos), inline: once per message
        self._msg_ts = self._ts
        self._scan = pos
        self._line_checked = False
        self.state = _HEAD
        return self._step_head()

    def _step_head(self) -> bool:
        buf = self._buf
        pos = self._pos
        # Usually the whole head is here already: parse it in one go. The head ends at the first empty
        # line, whichever of LF LF or LF CR LF comes first (as http_head.find_head_end).
        scan = self._scan
        crlf = buf.find(b"\n\r\n", scan)
        lines = None
        if crlf >= 0:
            end, after = crlf + 1, crlf + 3
            if end - pos <= self._max_head:
                # (isinstance narrows the union: compiled, the common bytes slice is native)
                block = buf[pos:end] if isinstance(buf, bytes) else bytes(buf[pos:end])
                lines = lf_lines(block)  # an LF LF before this LF CR LF: read_lines says so (EmptyLine)
            else:
                lf = buf.find(b"\n\n", scan, crlf + 2)
                if lf >= 0:
                    end, after = lf + 1, lf + 2
        else:
            lf = buf.find(b"\n\n", scan)
            if lf < 0:
                return self._wait_for_head(buf, pos)
            end, after = lf + 1, lf + 2
        if end - pos > self._max_head and self._head_too_long(end - pos):
            return False
        is_request = self.role is _REQUEST
        try:
            if lines is not None:
                try:
                    msg, fields = read_lines(lines, is_request, self._msg_ts, self._msg_offset, True)
                except EmptyLine:
                    lf = buf.find(b"\n\n", scan, crlf + 2)
                    end, after = lf + 1, lf + 2
                    lines = None
            if lines is None:
                msg, fields = read_head(
                    buf[pos:end] if isinstance(buf, bytes) else bytes(buf[pos:end]),
                    is_request,
                    self._msg_ts,
                    self._msg_offset,
                )
        except HeadError:
            return self._bad_start_line(buf.find(b"\n", pos))
        self._pos = after
        self._first = False
        self._msg = msg
        self.head_fields = fields
        return self._begin_body(self._sink.on_head(self, msg))

    def _wait_for_head(self, buf: bytes | bytearray, pos: int) -> bool:
        """A partial head: judge its start line as soon as it is whole, and bound the buffer."""
        if not self._line_checked:
            # Invariant while the line is unchecked: buf[pos:_scan] holds no LF.
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                if self._first and not (
                    plausible_request_prefix(buf, pos)
                    if self.role is _REQUEST
                    else plausible_response_prefix(buf, pos)
                ):
                    return self._not_http()
                if not self._head_too_long(len(buf) - pos):
                    self._scan = len(buf)
                return False
            if not check_start_line(bytes(buf[pos:nl]).rstrip(b"\r"), self.role is _REQUEST):
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

    def _step_resync(self) -> bool:
        buf = self._buf
        pos = self._pos
        role = self.role
        found, is_request, scan = find_start_line(
            buf,
            pos,
            max(self._scan, pos),
            self._line_start,
            role is not _RESPONSE,
            role is not _REQUEST,
            self._starts,
        )
        if found >= 0:
            self._starts = []
            self._stats["http_resync"] += 1
            if role is _UNKNOWN:
                self._sink.on_role(self, _REQUEST if is_request else _RESPONSE)
            self._pos = found
            self.state = _START
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
