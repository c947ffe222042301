"""One direction's HTTP/1.x message reader: a state machine over a receive buffer, reporting to a sink.

Theory of operation: `feed` appends bytes and runs the step for the current state until a step needs more
bytes. Each state has its step (`_step` dispatches, as h11's READERS table does); the steps live in
`http_reader_head` (START, HEAD, RESYNC) and `http_reader_body` (the body states), the shared state and
bookkeeping in `http_reader_base`. This module is the machine's input side: bytes, gaps, close, pause.
A reader knows nothing about the other direction: when a head is complete it asks the sink (the
connection) for the body framing, because a response's framing depends on the request it answers. Loss
is reported, never papered over: a gap inside a body of known length is counted and skipped; any other
gap ends the message incomplete and moves the reader to RESYNC, which scans for the next start line.

Buffering: the buffer holds at most one head (<= Limits.max_header_bytes) plus the latest chunk. In body
states bytes are sliced straight out of the fed chunk (no copy when a chunk is kept whole), the kept body
stops growing at Limits.max_body_bytes, and nothing is ever re-scanned. What is still held when a feed
returns is charged to the connections' shared `HttpBufferPool` (http_budget), once per feed, not per byte.
"""

from __future__ import annotations

from typing import Final

from reassembly.http_reader_base import Message, ReaderSink, Role, State
from reassembly.http_reader_head import HeadSteps

__all__ = ["Message", "MessageReader", "ReaderSink", "Role", "State"]

# Chunk boundaries remembered in the pending line while scanning for a start line.
_MAX_STARTS: Final = 64

_START: Final = State.START
_HEAD: Final = State.HEAD
_BODY_LENGTH: Final = State.BODY_LENGTH
_CHUNK_SIZE: Final = State.CHUNK_SIZE
_CHUNK_DATA: Final = State.CHUNK_DATA
_CHUNK_END: Final = State.CHUNK_END
_TRAILERS: Final = State.TRAILERS
_BODY_CLOSE: Final = State.BODY_CLOSE
_RESYNC: Final = State.RESYNC
_PAUSED: Final = State.PAUSED
_DEAD: Final = State.DEAD


class MessageReader(HeadSteps):
    """Reads the messages of one direction of one connection.

    Args:
        role: REQUEST for the client's bytes, RESPONSE for the server's, UNKNOWN (mid-stream) to let the
            first start line found decide; the sink may set `role` later.
        mid_stream: start in RESYNC instead of expecting a start line at the first byte.
    """

    __slots__ = ()

    def feed(self, data: bytes, offset: int, ts: float) -> None:
        """Take the next bytes of this direction (offset = stream offset of data[0])."""
        state = self.state
        if state is _DEAD or not data:
            return
        expected = self._next
        if offset != expected and expected is not None:
            if offset > expected:
                self._skip(expected, offset - expected)
                state = self.state
            elif offset + len(data) <= expected:
                return
            else:
                data = data[expected - offset :]
                offset = expected
        self._next = offset + len(data)
        self._ts = ts
        buf = self._buf
        if state is _RESYNC:
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
        while self._pos < len(self._buf):
            # START (a new message) is by far the most common state here: its step without the dispatch.
            if not (self._step_start() if self.state is _START else self._step()):
                break
        if self._pos >= len(self._buf) and self.state is not _PAUSED:
            # Everything was consumed (the common case): _compact's first branch, inline.
            self._buf = b""
            self._pos = self._scan = 0
            if self._starts:
                self._starts = []
            if self._kept != self._held:
                self._recharge()
        else:
            self._compact()
            self._recharge()

    def gap(self, offset: int, length: int | None) -> None:
        """Bytes [offset, offset+length) of this direction were lost (length None: unknown amount)."""
        self._skip(offset, length)
        if self._held:
            self._recharge()

    def _skip(self, offset: int, length: int | None) -> None:
        state = self.state
        if state is _DEAD:
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
        elif state is _BODY_LENGTH or state is _CHUNK_DATA:
            self._gap = True
            if length <= self._remaining:
                self._size += length
                self._remaining -= length
                if self._remaining == 0:
                    if state is _BODY_LENGTH:
                        self._finish(True)
                    else:
                        self.state = _CHUNK_END
                return
            self._size += self._remaining
            if state is _BODY_LENGTH:
                self._finish(True)  # the body ended inside the gap; what followed it is lost
                self._drop_buffer()
                self._sink.on_lost(self, False, False)
                self._enter_resync(True)
                return
        elif state is _BODY_CLOSE:
            self._size += length
            self._gap = True
            return
        self._drop_buffer()
        if state is _PAUSED:
            self._resync_on_resume = True
            return
        self._lose_current(exact=False)
        self._enter_resync(True)

    def close(self) -> None:
        """The flow ended: a close-delimited body is complete, anything else in flight is not."""
        state = self.state
        if state is _BODY_CLOSE:
            self._finish(True)
        elif state is not _DEAD and state is not _PAUSED:
            if state is _HEAD:
                # A head cut by the end of its flow (slowloris, a client that gave up, an eviction): no
                # message to emit, but a loss all the same.
                self._stats["drop_http_unfinished_head"] += 1
            self._lose_current(exact=True)
        self.state = _DEAD
        self.release()

    def resume(self) -> None:
        if self.state is not _PAUSED:
            return
        if self._resync_on_resume:
            self._resync_on_resume = False
            self._enter_resync(True)
        else:
            self.state = _START
        self._run()
        self._compact()
        self._recharge()

    def _run(self) -> None:
        while self._pos < len(self._buf) and self._step():
            pass

    def _step(self) -> bool:
        """Run the current state's step: True when it may be called again."""
        # An if chain, not a table of unbound methods: compiled (mypyc) it is direct calls, and the states
        # are ordered by how often a message passes through them.
        state = self.state
        if state is _START:
            return self._step_start()
        if state is _HEAD:
            return self._step_head()
        if state is _BODY_LENGTH:
            return self._step_body_length()
        if state is _CHUNK_SIZE:
            return self._step_chunk_size()
        if state is _CHUNK_DATA:
            return self._step_chunk_data()
        if state is _CHUNK_END:
            return self._step_chunk_end()
        if state is _TRAILERS:
            return self._step_trailers()
        if state is _BODY_CLOSE:
            return self._step_body_close()
        if state is _RESYNC:
            return self._step_resync()
        return False  # PAUSED, DEAD

    def _compact(self) -> None:
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            self._buf = b""
            self._pos = self._scan = 0
            if self._starts:
                self._starts = []
        elif pos:
            self._buf = buf[pos:]
            self._pos = 0
            self._scan = max(0, self._scan - pos)
            if self._starts:
                self._starts = [start - pos for start in self._starts if start >= pos]
        if self.state is _PAUSED and len(self._buf) > self._max_head:
            self._stats["cap_paused_bytes"] += 1
            self._drop_buffer()
            self._resync_on_resume = True
