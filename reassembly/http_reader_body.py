"""The reader steps that read message bodies: by length, chunked (sizes, data, trailers) or until close.

Bytes are sliced straight out of the fed chunk (no copy when a body arrives whole in one chunk, the
common case); the kept body stops growing at Limits.max_body_bytes while its size is still counted, and
many tiny pieces are folded into one bytearray so they never cost an object each.
"""

from __future__ import annotations

from typing import Final

from reassembly.events import HttpMessage
from reassembly.http_framing import Framing, FramingKind, parse_chunk_size
from reassembly.http_head import find_head_end, parse_fields, split_lines
from reassembly.http_reader_base import ReaderBase, State

__all__ = ["BodySteps"]

# Body pieces kept as separate slices before they are folded together (a whole body usually is one).
_MAX_PARTS: Final = 32

_BODY_LENGTH: Final = State.BODY_LENGTH
_CHUNK_SIZE: Final = State.CHUNK_SIZE
_CHUNK_DATA: Final = State.CHUNK_DATA
_CHUNK_END: Final = State.CHUNK_END
_TRAILERS: Final = State.TRAILERS
_BODY_CLOSE: Final = State.BODY_CLOSE
_NONE: Final = FramingKind.NONE
_LENGTH: Final = FramingKind.LENGTH
_CHUNKED: Final = FramingKind.CHUNKED
_CLOSE: Final = FramingKind.CLOSE
_TUNNEL: Final = FramingKind.TUNNEL


class BodySteps(ReaderBase):
    """Steps of `MessageReader` from the end of a head to the end of its message."""

    __slots__ = ()

    def _begin_body(self, framing: Framing) -> bool:
        """Enter the body state the framing says; True when the reader may step on."""
        kind = framing.kind
        if framing.te_and_cl:
            self._stats["http_te_and_cl"] += 1
        if kind is _LENGTH:
            length = framing.length
            pos = self._pos
            end = pos + length
            buf = self._buf
            if end <= len(buf) and length <= self._max_body and not self._size and not self._parts:
                # The whole body followed its head in this chunk and fits the cap (the common case):
                # what _step_body_length would do, in one slice.
                self._parts = [buf[pos:end]]
                self._size = length
                self._remaining = 0
                self._pos = end
                self._finish(True)
                return True
            self._remaining = length
            self.state = _BODY_LENGTH
            return self._pos < len(self._buf) and self._step_body_length()
        if kind is _NONE:
            self._finish(True)
        elif kind is _CHUNKED:
            self.state = _CHUNK_SIZE
        elif kind is _CLOSE:
            self.state = _BODY_CLOSE
        elif kind is _TUNNEL:
            self._finish(True)
            self.kill()
        else:
            self._desync()
        return True

    def _take(self, n: int) -> None:
        """Account n body bytes at pos; keep them while under the body cap."""
        pos = self._pos
        self._size += n
        room = self._body_cap - self._kept
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
            self.state = _CHUNK_DATA
        else:
            self._scan = nl + 1
            self.state = _TRAILERS
        return True

    def _step_chunk_data(self) -> bool:
        avail = len(self._buf) - self._pos
        remaining = self._remaining
        n = avail if avail < remaining else remaining
        self._take(n)
        self._remaining = remaining - n
        if remaining == n:
            self.state = _CHUNK_END
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
        self.state = _CHUNK_SIZE
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
        msg: HttpMessage | None = self._msg
        if msg is not None and end > self._pos:
            msg.trailers = parse_fields(split_lines(bytes(buf[self._pos : end])))
        self._pos = after
        self._finish(True)
        return True

    def _step_body_close(self) -> bool:
        self._take(len(self._buf) - self._pos)
        return False
