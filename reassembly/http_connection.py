"""Both directions of one TCP connection as HTTP/1.x: pairs requests with responses into `Exchange`s.

Theory of operation: one `MessageReader` per direction reports heads, finished messages and losses to this
class (the reader sink). Requests wait in a FIFO (pipelining); a response head takes the request it
answers before its framing is decided, because HEAD and CONNECT change it. An exchange is emitted as soon
as both of its messages are finished, usually the moment the response completes.

Pairing on a flow picked up mid-stream (`_pickup`): the start is not a loss. Every request we see was
sent after the pick-up, so responses pair FIFO, except that a response beginning before the first request
we saw (capture time) answers one sent before the capture and is an ORPHAN_RESPONSE.

Pairing policy when bytes were lost (`_realign`): a loss of unknown extent on either side (a gap between
messages, or one reaching past a message or cutting a head) means whole messages may be gone, so FIFO
order can no longer be trusted. The next response then pairs with a waiting request that began before it
(capture time), and the pair is flagged PAIRING_GUESSED:
  - on a connection never seen pipelining (the norm: Kong, browsers and most clients wait for each
    response), the NEWEST such request, since a client that waits sent it after the previous response;
    older waiting requests lost their responses and are emitted UNANSWERED;
  - on a connection seen pipelining, the OLDEST such request (assume no whole message was lost);
  - with no such request, the response is an ORPHAN_RESPONSE (its request was lost).
Guessing goes on until a pairing leaves no request waiting: only then are both directions provably at
the same exchange again. On a non-pipelining connection that is the first guess, and it is right; a
pipelining one may stay flagged for longer, never silently shifted. A desync (bad framing, no byte lost)
keeps FIFO order. A head of known position that is dropped (a gap inside it, or over
Limits.max_header_bytes) keeps its place: on the request side as a request-less placeholder (its response
becomes an orphan flagged REQUEST_INCOMPLETE); on the response side the front request is emitted with
RESPONSE_INCOMPLETE.

A request head still unfinished when its flow ends (slowloris, a client that gave up, an eviction) is
counted (`drop_http_unfinished_head`, by the reader) and not emitted: the server cannot have acted on a
request it never fully received, and a partial head may lack the very headers (Authorization, the user
and company ids) the event would be identified by, so an event for it would mislead; a slowloris flood
would also turn into one event per attacking connection.
"""

from __future__ import annotations

from typing import Final, cast

from reassembly.events import (
    Direction,
    Endpoint,
    Exchange,
    ExchangeFlag,
    HttpRequest,
    HttpResponse,
    StreamData,
    StreamGap,
)
from reassembly.http_budget import HttpBufferPool
from reassembly.http_exchange import PendingExchange, finish_exchange
from reassembly.http_framing import NO_BODY, Framing, FramingKind, body_framing
from reassembly.http_reader import Message, MessageReader, Role, State
from reassembly.http_reader_base import ReaderBase
from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = ["HttpConnectionParser"]

# Where `_out` points between calls. Exchanges are only emitted while feed, feed_data or close runs;
# keeping the caller's list after it returned would keep the last exchanges of every idle connection
# alive (bodies and all: up to the body limits times the flow cap, outside every memory budget).
_NOWHERE: Final[list[Exchange]] = []

# More interim (1xx) responses than this before one final response are not worth keeping.
_MAX_INTERIM: Final = 16
# A flow whose start we did not see (mid-stream, or its first bytes lost) is scanned for a start line;
# after this many bytes without one it is declared not HTTP (TLS, a database...) so the pipeline stops
# feeding it. 8 MiB lets a mid-stream pickup sit out a long download before the next exchange.
UNPROVEN_BYTES_LIMIT: Final = 8 << 20

_TO_SERVER: Final = Direction.TO_SERVER
_PAUSED: Final = State.PAUSED
_TUNNEL: Final = FramingKind.TUNNEL


class HttpConnectionParser:
    """HTTP/1.x parser for one TCP connection, fed with the TCP layer's stream events.

    `feed` and `close` return the exchanges completed; pass `out` to have them appended to a list of
    yours instead (the pipeline does, so no list is built per event).

    Args:
        flow_id, client, server: copied into every emitted `Exchange` (swapped if the roles turn out to be
            the other way round on a mid-stream flow).
        mid_stream: the handshake was not seen, so both directions start by scanning for a start line
            and the first one found decides which side is the client.
        pool: the HTTP buffer budget shared with the pipeline's other connections (http_budget); by
            default one of this connection's own, of Limits.max_http_buffer_bytes.
    """

    __slots__ = (
        "_client",
        "_closed",
        "_dead",
        "_flow_id",
        "_from_client",
        "_from_server",
        "_had_loss",
        "_interim",
        "_max_pending",
        "_mid_stream",
        "_next_index",
        "_out",
        "_pickup",
        "_pipelined",
        "_pool",
        "_realign",
        "_req_entry",
        "_resp_entry",
        "_server",
        "_stats",
        "_swapped",
        "_unproven_bytes",
        "_waiting",
    )

    def __init__(
        self,
        flow_id: int,
        client: Endpoint,
        server: Endpoint,
        limits: Limits,
        stats: Stats,
        *,
        mid_stream: bool = False,
        pool: HttpBufferPool | None = None,
    ) -> None:
        self._flow_id = flow_id
        self._client = client
        self._server = server
        self._stats = stats
        self._max_pending = max(1, limits.max_pending_requests)
        self._mid_stream = mid_stream
        role_c, role_s = (Role.UNKNOWN, Role.UNKNOWN) if mid_stream else (Role.REQUEST, Role.RESPONSE)
        if pool is None:
            pool = HttpBufferPool(limits.max_http_buffer_bytes)
        self._pool = pool
        self._from_client = MessageReader(role_c, limits, stats, self, mid_stream=mid_stream, pool=pool)
        self._from_server = MessageReader(role_s, limits, stats, self, mid_stream=mid_stream, pool=pool)
        # Requests (or placeholders) whose response has not begun. A list, not a deque: nearly always
        # 0 or 1 long (at most max_pending_requests), and an empty deque costs 760 bytes on every one
        # of the tens of thousands of idle connections a gateway keeps, a list 56.
        self._waiting: list[PendingExchange] = []
        self._req_entry: PendingExchange | None = None  # the request being read
        self._resp_entry: PendingExchange | None = None  # the exchange whose response is being read
        self._interim: list[int] = []
        self._next_index = 0
        self._swapped = False
        self._realign = False
        self._pickup = mid_stream  # picked up mid-stream: responses to requests sent before are orphans
        self._pipelined = False
        self._had_loss = False
        self._dead = False
        self._closed = False
        self._unproven_bytes = 0  # bytes fed before any head was parsed; -1 once one was
        self._out: list[Exchange] = _NOWHERE  # the caller's list, only while a feed or close runs

    # -- public API ----------------------------------------------------------------------------------------

    @property
    def is_dead(self) -> bool:
        """True once the flow is not (or no longer) HTTP: feeding it further is pointless."""
        return self._dead

    def feed(self, event: StreamData | StreamGap, out: list[Exchange] | None = None) -> list[Exchange]:
        """Take one stream event of this flow; return the exchanges it completed (appended to `out`).

        Raises:
            RuntimeError: after `close()` (misuse). Bad traffic never raises: an internal error is counted
            as `http_desync` and the direction concerned resynchronises.
        """
        if out is None:
            out = []
        if type(event) is StreamData:
            self.feed_data(event.direction == _TO_SERVER, event.data, event.offset, event.ts, out)
            return out
        if self._closed:
            raise RuntimeError("HttpConnectionParser.feed() after close()")
        if self._dead:
            return out
        self._out = out
        gap = cast(StreamGap, event)
        reader = self._from_client if gap.direction == _TO_SERVER else self._from_server
        try:
            if gap.length is None and gap.offset == 0:
                self._pickup = True
            reader.gap(gap.offset, gap.length)
        except Exception:
            self._recover(reader)
        finally:
            self._out = _NOWHERE
        return out

    def feed_data(self, to_server: bool, data: bytes, offset: int, ts: float, out: list[Exchange]) -> None:
        """`feed` of a StreamData by its fields (the pipeline's fast path makes no event object)."""
        if self._closed:
            raise RuntimeError("HttpConnectionParser.feed() after close()")
        if self._dead:
            return
        self._out = out
        reader = self._from_client if to_server else self._from_server
        try:
            if self._unproven_bytes >= 0:
                self._unproven_bytes += len(data)
                if self._unproven_bytes > UNPROVEN_BYTES_LIMIT:
                    self.on_not_http(reader)
                    return
            reader.feed(data, offset, ts)
        except Exception:
            self._recover(reader)
        finally:
            self._out = _NOWHERE

    def close(self, ts: float, out: list[Exchange] | None = None) -> list[Exchange]:
        """The flow ended: finish close-delimited bodies and emit everything pending, flagged."""
        if out is None:
            out = []
        if self._closed:
            return out
        self._closed = True
        self._out = out
        try:
            if not self._dead:
                # Requests first, so a response that was waiting for its request's end can go out.
                self._request_reader().close()
                self._response_reader().close()
                if self._resp_entry is not None:
                    self._emit(self._resp_entry)
                while self._waiting:
                    entry = self._waiting.pop(0)
                    if entry.request is not None:
                        self._emit(entry)
        except Exception:
            self._stats["http_desync"] += 1
            self._from_client.release()
            self._from_server.release()
            self._release_entries()
        finally:
            self._out = _NOWHERE
            # Each reader points back at this parser. Unlinked, a closed connection is freed by reference
            # counting the moment the pipeline lets it go; linked, it is cyclic garbage that waits for a
            # full collection (rare under gc_policy's thresholds): a flood of evicted connections held
            # 305 MB instead of 122 (bench/memory_flood.py's capture).
            self._from_client.unlink(_UNLINKED)
            self._from_server.unlink(_UNLINKED)
        return out

    # -- reader sink ---------------------------------------------------------------------------------------

    def on_head(self, reader: ReaderBase, msg: Message) -> Framing:
        self._unproven_bytes = -1
        if type(msg) is HttpRequest:
            return self._request_head(msg, reader)
        assert isinstance(msg, HttpResponse)
        status = msg.status
        if status < 200 and status != 101:
            return NO_BODY
        entry = self._pick_request(msg.ts_start)
        if entry is None:
            entry = self._new_entry(msg.ts_start, None)
            entry.request_done = True
        entry.response = msg
        self._resp_entry = entry
        if self._interim:
            msg.interim = self._interim
            self._interim = []
        request = entry.request
        framing = body_framing(
            request.method if request is not None else None, status, msg.headers, reader.head_fields
        )
        requests = self._from_server if self._swapped else self._from_client
        if requests.state is _PAUSED and framing.kind is not _TUNNEL:
            # Not a tunnel after all: what the client sent meanwhile is HTTP. Read it now, before the
            # rest of this response, so a response that follows finds its request waiting.
            requests.resume()
        return framing

    def on_message(self, reader: ReaderBase, msg: Message) -> None:
        if type(msg) is HttpRequest:
            entry = self._req_entry
            self._req_entry = None
            if entry is None or entry.request is not msg:
                return
            entry.request_done = True
            if entry.response_done:
                self._emit(entry)
                return
            if msg.body:
                self._hold_body(entry, msg)
            if (
                entry.response is None
                and msg.complete
                and (msg.method == b"CONNECT" or b"upgrade" in reader.head_fields)
            ):
                # The next client bytes may be a tunnel's: hold them until the response says which.
                reader.pause()
            return
        assert isinstance(msg, HttpResponse)
        status = msg.status
        if status < 200 and status != 101:
            if len(self._interim) < _MAX_INTERIM:
                self._interim.append(status)
            return
        entry = self._resp_entry
        self._resp_entry = None
        if entry is None or entry.response is not msg:
            return
        entry.response_done = True
        request = entry.request
        if msg.complete and (
            status == 101 or (request is not None and request.method == b"CONNECT" and 200 <= status < 300)
        ):
            entry.flags.add(ExchangeFlag.TUNNEL)
            self._stats["http_tunnels"] += 1
            self._emit(entry)
            self._kill()
            return
        if entry.request_done:
            self._emit(entry)

    def on_lost(self, reader: ReaderBase, started: bool, exact: bool) -> None:
        self._had_loss = True
        if started:
            if reader.role is Role.REQUEST:
                # A request began and was lost: keep its place so later responses stay in step.
                placeholder = self._new_entry(reader.message_ts, None)
                placeholder.request_done = True
                placeholder.flags.add(ExchangeFlag.REQUEST_INCOMPLETE)
                self._enqueue(placeholder)
            elif not self._realign and self._waiting:
                # A response head was cut: it answered the front request (FIFO is still trusted here).
                entry = self._waiting.pop(0)
                if entry.request is not None:
                    entry.flags.add(ExchangeFlag.RESPONSE_INCOMPLETE)
                    self._emit_when_done(entry)
        if not exact:
            self._realign = True

    def on_role(self, reader: ReaderBase, role: Role) -> None:
        other = self._from_server if reader is self._from_client else self._from_client
        reader.role = role
        other.role = Role.RESPONSE if role is Role.REQUEST else Role.REQUEST
        self._swapped = (reader is self._from_client) == (role is Role.RESPONSE)
        if self._swapped:
            self._stats["http_roles_swapped"] += 1

    def on_not_http(self, reader: ReaderBase) -> None:
        self._stats["flows_not_http"] += 1
        self._kill()

    # -- pairing -------------------------------------------------------------------------------------------

    def _request_head(self, msg: HttpRequest, reader: ReaderBase) -> Framing:
        entry = PendingExchange(self._next_index, msg.ts_start, msg)
        self._next_index += 1
        if self._waiting and not self._had_loss and not self._pipelined:
            # Another request still waits for its response: this client pipelines.
            self._pipelined = any(e.request is not None for e in self._waiting)
        self._enqueue(entry)
        self._req_entry = entry
        return body_framing(msg.method, None, msg.headers, reader.head_fields)

    def _enqueue(self, entry: PendingExchange) -> None:
        waiting = self._waiting
        waiting.append(entry)
        if len(waiting) > self._max_pending:
            oldest = waiting.pop(0)
            self._stats["evict_http_pending"] += 1
            if oldest.request is not None:
                self._emit_when_done(oldest)

    def _pick_request(self, ts: float) -> PendingExchange | None:
        """The waiting entry a response beginning at capture time ts answers (None: an orphan)."""
        waiting = self._waiting
        if not self._realign:
            if not waiting:
                return None
            if self._pickup:
                # The first response of a flow picked up mid-stream may answer a request sent before the
                # capture began: it does when it began before any request we saw.
                if waiting[0].ts_start > ts:
                    return None
                self._pickup = False
            return waiting.pop(0)
        self._pickup = False
        candidates = [e for e in waiting if e.ts_start <= ts]
        if not candidates:
            return None
        self._stats["http_pairing_guessed"] += 1
        chosen = candidates[0] if self._pipelined else candidates[-1]
        chosen.flags.add(ExchangeFlag.PAIRING_GUESSED)
        while waiting[0] is not chosen:
            entry = waiting.pop(0)
            if entry.request is not None:
                self._emit_when_done(entry)
        waiting.pop(0)
        # Only with nothing left waiting are both directions provably at the same exchange again.
        self._realign = bool(waiting)
        return chosen

    def _new_entry(self, ts: float, request: HttpRequest | None) -> PendingExchange:
        entry = PendingExchange(self._next_index, ts, request)
        self._next_index += 1
        return entry

    def _emit_when_done(self, entry: PendingExchange) -> None:
        """Emit an unanswered entry now, or when the request still being read ends."""
        entry.response_done = True
        if entry.request_done or entry is not self._req_entry:
            self._emit(entry)

    def _hold_body(self, entry: PendingExchange, msg: HttpRequest) -> None:
        """A finished request waits for its response with its body: charge it to the pool (http_budget)."""
        pool = self._pool
        size = len(msg.body)
        if pool.used + size > pool.limit:
            # Over the budget: the body is let go (size still known, flagged truncated), not the request.
            self._stats["cap_http_buffer_pending"] += 1
            self._stats["drop_http_buffer_body_bytes"] += size
            msg.body = b""
            msg.body_truncated = True
            return
        pool.used += size
        entry.held = size

    def _emit(self, entry: PendingExchange) -> None:
        if entry.held:
            self._pool.used -= entry.held
            entry.held = 0
        client, server = (self._server, self._client) if self._swapped else (self._client, self._server)
        self._out.append(finish_exchange(entry, self._flow_id, client, server, self._mid_stream, self._stats))

    # -- lifecycle -----------------------------------------------------------------------------------------

    def _request_reader(self) -> MessageReader:
        return self._from_server if self._swapped else self._from_client

    def _response_reader(self) -> MessageReader:
        return self._from_client if self._swapped else self._from_server

    def _kill(self) -> None:
        self._dead = True
        self._from_client.kill()
        self._from_server.kill()
        self._release_entries()
        self._waiting.clear()
        self._req_entry = self._resp_entry = None

    def _release_entries(self) -> None:
        """Give back the pool charges of entries that will never be emitted."""
        for entry in (*self._waiting, self._resp_entry):
            if entry is not None and entry.held:
                self._pool.used -= entry.held
                entry.held = 0

    def _recover(self, reader: MessageReader) -> None:
        """An internal error while reading: count it, end what that direction had in flight, resync."""
        self._stats["http_desync"] += 1
        try:
            if reader.role is Role.REQUEST and self._req_entry is not None:
                entry, self._req_entry = self._req_entry, None
                entry.request_done = True
                if entry.request is not None:
                    entry.request.complete = False
                if entry.response_done:
                    self._emit(entry)
            elif reader.role is Role.RESPONSE and self._resp_entry is not None:
                entry, self._resp_entry = self._resp_entry, None
                entry.response_done = True
                if entry.response is not None:
                    entry.response.complete = False
                if entry.request_done:
                    self._emit(entry)
            self._realign = self._had_loss = True
            reader.reset()
        except Exception:
            self._kill()


# What a closed connection's readers point at instead of their parser (see `close`): a parser no one feeds.
_UNLINKED: Final = HttpConnectionParser(-1, ("", 0), ("", 0), Limits(max_http_buffer_bytes=0), Stats())
