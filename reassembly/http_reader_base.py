"""The state of one direction's HTTP/1.x message reader, and the bookkeeping every step of it shares.

`MessageReader` (http_reader) is one chain of single inheritance, a shape mypyc can compile: this base,
then the body steps (http_reader_body), the head steps (http_reader_head) and the reader's input side.
This module holds what they all touch: the roles and states, the sink protocol the reader reports to,
the attributes (slots) and the primitives that end a message (`_finish`), give up on one
(`_lose_current`, `_desync`) or start looking for the next one (`_enter_resync`).
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import TYPE_CHECKING, Any, Final, Protocol

from reassembly.events import HttpMessage, HttpRequest, HttpResponse
from reassembly.http_budget import HttpBufferPool
from reassembly.http_framing import Framing
from reassembly.http_head import NO_FIELDS, Fields
from reassembly.limits import Limits
from reassembly.stats import Stats

if TYPE_CHECKING:
    from reassembly.http_connection import HttpConnectionParser

__all__ = ["Message", "ReaderBase", "ReaderSink", "Role", "State"]


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

# Enum members as module constants: a class attribute lookup on an Enum costs several times more, and
# these are read a few times per message.
START: Final = State.START
RESYNC: Final = State.RESYNC


class ReaderSink(Protocol):
    """What a reader reports to (`reader` is the `MessageReader` reporting). The reader's sink is typed as
    the one implementation, `HttpConnectionParser`, so that compiled (mypyc) these are direct calls; any
    object with these methods works in pure Python (the reader's tests use their own)."""

    def on_head(self, reader: Any, msg: Message) -> Framing: ...

    def on_message(self, reader: Any, msg: Message) -> None: ...

    def on_lost(self, reader: Any, started: bool, exact: bool) -> None: ...

    def on_role(self, reader: Any, role: Role) -> None: ...

    def on_not_http(self, reader: Any) -> None: ...


class ReaderBase:
    """Attributes and shared primitives of a message reader (see `MessageReader` for the whole)."""

    __slots__ = (
        "_body_cap",
        "_buf",
        "_first",
        "_gap",
        "_held",
        "_kept",
        "_line_checked",
        "_line_start",
        "_max_body",
        "_max_head",
        "_msg",
        "_msg_offset",
        "_msg_ts",
        "_next",
        "_parts",
        "_pool",
        "_pos",
        "_remaining",
        "_resync_on_resume",
        "_scan",
        "_sink",
        "_size",
        "_starts",
        "_stats",
        "_truncated",
        "_ts",
        "head_fields",
        "role",
        "state",
    )

    def __init__(
        self,
        role: Role,
        limits: Limits,
        stats: Stats,
        sink: HttpConnectionParser,
        *,
        mid_stream: bool,
        pool: HttpBufferPool | None = None,
    ) -> None:
        self.role = role
        self._sink = sink
        self._stats = stats
        self._max_head = limits.max_header_bytes
        self._max_body = limits.max_body_bytes
        self._body_cap = self._max_body  # body bytes kept for the message in flight (0 once shed)
        # Shared by every reader of a pipeline; a reader made alone gets its own.
        self._pool = pool if pool is not None else HttpBufferPool(limits.max_http_buffer_bytes)
        self._held = 0  # bytes this reader has charged to the pool
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
        # Content-Length, Transfer-Encoding and Upgrade of the latest head, by lower-case name: read by
        # the sink in on_head (framing) and on_message (protocol switch) so it need not scan headers.
        self.head_fields: Fields = NO_FIELDS
        self.state = RESYNC if mid_stream else START

    def unlink(self, placeholder: HttpConnectionParser) -> None:
        """Stop pointing at this reader's parser, which closed (see `HttpConnectionParser.close`)."""
        self._sink = placeholder

    def kill(self) -> None:
        self._drop_buffer()
        self._clear_message()
        self.state = State.DEAD
        self.release()

    def pause(self) -> None:
        """Hold the bytes after this message until `resume` (a request that may switch protocols)."""
        if self.state is START:
            self.state = State.PAUSED

    def reset(self) -> None:
        """After an internal error: forget everything buffered and look for the next start line."""
        self._drop_buffer()
        self._clear_message()
        self._enter_resync(False)
        self.release()

    def release(self) -> None:
        """Give back everything this reader charged to the pool (it is closed or holds nothing)."""
        if self._held:
            self._pool.used -= self._held
            self._held = 0

    def _recharge(self) -> None:
        """Charge the pool for what this reader holds now; shed it if that takes the pool over its limit.

        Called where the buffer may have changed size (the end of a feed, a gap, a resume), never per byte.
        """
        held = self.buffered_bytes
        grew = held > self._held
        pool = self._pool
        pool.used += held - self._held
        self._held = held
        if grew and pool.used > pool.limit:
            self._shed()
            held = self.buffered_bytes
            pool.used += held - self._held
            self._held = held

    def _shed(self) -> None:
        """The pool is over its limit and this reader asked for more: give up what it holds (http_budget)."""
        stats = self._stats
        if self._kept:
            # Stop keeping this body; its size is still counted and the message is flagged truncated.
            stats["cap_http_buffer_body"] += 1
            stats["drop_http_buffer_body_bytes"] += self._kept
            self._parts = []
            self._kept = 0
            self._body_cap = 0
            self._truncated = True
            return
        size = len(self._buf) - self._pos
        if self.state is State.HEAD:
            # As a head over max_header_bytes: the message is lost where it stands, then resync.
            stats["cap_http_buffer_head"] += 1
            stats["drop_http_buffer_head_bytes"] += size
            self._first = False
            self._drop_buffer()
            self._sink.on_lost(self, True, True)
            self._enter_resync(False)
            return
        stats["cap_http_buffer_other"] += 1
        stats["drop_http_buffer_other_bytes"] += size
        self._drop_buffer()
        state = self.state
        if state is State.PAUSED:
            self._resync_on_resume = True
        elif state is RESYNC:
            self._line_start = False
        else:
            # A chunk-size or trailer line of a message in flight: its framing is lost with the bytes.
            self._finish(False)
            self._enter_resync(False)

    @property
    def buffered_bytes(self) -> int:
        """Bytes this reader holds: unparsed input plus the kept body of the message in flight."""
        return len(self._buf) - self._pos + self._kept

    @property
    def message_ts(self) -> float:
        """Capture time of the first byte of the message in flight (or the last one begun)."""
        return self._msg_ts

    def _drop_buffer(self) -> None:
        self._buf = b""
        self._pos = 0
        self._scan = 0
        if self._starts:
            self._starts = []

    def _offset_at(self, index: int) -> int:
        # Only called while bytes are flowing, when _next is known.
        return (self._next or 0) - len(self._buf) + index

    def _enter_resync(self, line_start: bool) -> None:
        self.state = RESYNC
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

    def _clear_message(self) -> None:
        self._msg = None
        if self._parts:
            self._parts = []
        self._kept = self._size = 0
        self._gap = self._truncated = False
        self._body_cap = self._max_body

    def _finish(self, complete: bool) -> None:
        msg = self._msg
        if msg is None:
            return
        # The same message as the base class: compiled, a union's attributes are set generically.
        m: HttpMessage = msg
        self._msg = None
        parts = self._parts
        if parts:
            first = parts[0]
            m.body = first if len(parts) == 1 and type(first) is bytes else b"".join(parts)
            self._parts = []
        else:
            m.body = b""
        m.body_size = self._size
        m.complete = complete
        m.ts_end = self._ts
        if self._truncated:
            m.body_truncated = True
            self._stats["truncated_http_body"] += 1
            self._truncated = False
            self._body_cap = self._max_body  # the pool may have shed this body; the next one starts whole
        else:
            m.body_truncated = False
        m.gap = self._gap
        self._kept = self._size = 0
        self._gap = False
        self.state = START
        self._first = False
        self._sink.on_message(self, msg)
        self.head_fields = NO_FIELDS  # read up to on_message; an idle connection need not keep them
