"""`PlaintextStreams`: TLS plaintext per connection (what SSL_read/SSL_write moved) -> HTTP `Exchange`s.

The packet path needs TCP reassembly before HTTP; decrypted TLS does not: each SSL object's reads and
writes are already ordered and free of retransmissions. So this stage only keeps the two stream offsets
of each connection and feeds the same `HttpConnectionParser` the packet path uses, with the same
`StreamData` / `StreamGap` events, so a TLS exchange is identical in form to a plaintext one.

A connection is keyed by (pid, ssl): the process and the address of its SSL object. It starts with
`bind` (SSL_set_fd: the caller passes the socket's local and remote endpoints when it could resolve
them) and ends with `free` (SSL_free), a `bind` that re-binds the key (the address was reused while the
free was lost), an idle timeout in capture time, eviction when `max_connections` are open, or `close`.

Roles. HTTP/1.x clients speak first, so on a connection seen from its start the direction that carries
the first bytes is the client's: when the process first READS a request it is the server (a gateway
terminating client TLS: its reads are to_server); when it first WRITES a request it is the client (a
gateway calling a TLS upstream: its writes are to_server). A first message starting `HTTP/` is a
response (its request was lost): then that direction is the server's. The decision waits for 5 bytes of
the first direction (calls may move a single byte) or for the other direction's first bytes. A
connection never bound (it was open before the probes were attached, or its SSL_set_fd was lost) is
picked up mid-stream: the parser scans both directions for a start line and decides roles itself.

Endpoints: from the caller; when unknown, clearly marked placeholders (`unresolved-tls-pid-<pid>`,
`unresolved-tls-ssl-<hex>`, port 0) so such an event can never pass for a resolved address.

Losses, all counted in `Stats`: bytes a call moved beyond what the kernel copied (`total_len >
len(data)`) become a `StreamGap` (GapReason.OVERFLOW, `truncated_tls_bytes`); so do whole calls lost on
the way (ring buffer full, rate limit), told by the kernel's stream offset of the next record jumping
past the bytes seen (`lost_tls_bytes`, `lost_tls_gaps`; an offset going back means the kernel lost
count, `tls_offset_reset`, and is followed from there); connections evicted
(`evict_tls_connection`); bytes of connections that turned out not to be HTTP (`drop_tls_not_http_bytes`).
Sans-IO: no /proc, no clocks; `ts` is capture time in epoch seconds, as everywhere in `reassembly`.
"""

from __future__ import annotations

from collections import OrderedDict

from reassembly.events import Direction, Endpoint, Exchange, GapReason, StreamData, StreamGap
from reassembly.http_budget import HttpBufferPool
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.stats import Stats

__all__ = ["TLS_FLOW_ID_BASE", "PlaintextStreams", "placeholder_endpoints"]

# Exchange.flow_id of TLS connections starts here, far above any packet flow id, so the two never meet.
TLS_FLOW_ID_BASE = 1 << 48
# First-direction bytes needed to tell a request start from a response start ("HTTP/").
_ROLE_BYTES = 5
_RESPONSE_START = b"HTTP/"
_TO_SERVER = Direction.TO_SERVER
_TO_CLIENT = Direction.TO_CLIENT

_Key = tuple[int, int]
_Pending = tuple[bool, float, int, bytes, int | None]  # is_read, ts, total_len, data, kernel offset


def placeholder_endpoints(pid: int, ssl: int) -> tuple[Endpoint, Endpoint]:
    """(local, remote) for a connection whose socket could not be resolved: marked, never an address."""
    return (f"unresolved-tls-pid-{pid}", 0), (f"unresolved-tls-ssl-{ssl:x}", 0)


class _Conn:
    __slots__ = (
        "bound", "flow_id", "kernel_next", "last_ts", "local", "parser", "pending", "read_dir", "remote",
        "sizes",
    )  # fmt: skip

    def __init__(self, flow_id: int, local: Endpoint, remote: Endpoint, bound: bool, ts: float) -> None:
        self.flow_id = flow_id
        self.local = local
        self.remote = remote
        self.bound = bound  # seen from SSL_set_fd: its first bytes are the stream's first bytes
        self.last_ts = ts
        self.parser: HttpConnectionParser | None = None
        self.read_dir: Direction | None = None  # the direction of what the process reads; None: undecided
        self.pending: list[_Pending] = []  # records held until the roles are decided
        self.sizes = [0, 0]  # stream offsets: [read side, write side]
        # the kernel's offset expected next per side (None: not known yet); it counts from SSL_set_fd,
        # so on a bound connection from 0, on one picked up mid-stream from its first record
        self.kernel_next: list[int | None] = [0, 0] if bound else [None, None]


class PlaintextStreams:
    """Per-connection TLS plaintext in, `Exchange`s out. Not thread-safe.

    Every method returns the exchanges it completed (appended to `out` when given).
    """

    __slots__ = ("_conns", "_idle_s", "_limits", "_max", "_next_flow_id", "_pool", "stats")

    def __init__(
        self,
        limits: Limits | None = None,
        stats: Stats | None = None,
        *,
        max_connections: int | None = None,
        first_flow_id: int = TLS_FLOW_ID_BASE,
    ) -> None:
        self._limits = limits if limits is not None else Limits()
        self.stats = stats if stats is not None else Stats()
        self._max = max(1, max_connections if max_connections is not None else self._limits.max_flows)
        self._idle_s = self._limits.idle_timeout_s
        self._pool = HttpBufferPool(self._limits.max_http_buffer_bytes)
        self._conns: OrderedDict[_Key, _Conn] = OrderedDict()  # least recently active first
        self._next_flow_id = first_flow_id

    def __len__(self) -> int:
        return len(self._conns)

    def flow_id(self, pid: int, ssl: int) -> int | None:
        """The `Exchange.flow_id` of the connection open under (pid, ssl), if any."""
        conn = self._conns.get((pid, ssl))
        return None if conn is None else conn.flow_id

    @property
    def http_buffer_bytes(self) -> int:
        return self._pool.used

    # -- records ---------------------------------------------------------------------------------------

    def bind(
        self,
        pid: int,
        ssl: int,
        ts: float,
        local: Endpoint | None = None,
        remote: Endpoint | None = None,
        out: list[Exchange] | None = None,
    ) -> list[Exchange]:
        """SSL_set_fd: a new connection under `(pid, ssl)`; one still open there is closed first."""
        out = [] if out is None else out
        key = (pid, ssl)
        old = self._conns.get(key)
        if old is not None:
            if old.parser is None and not old.pending and not any(old.sizes):
                del self._conns[key]  # bound twice before any byte: the later socket counts
            else:
                self.stats["tls_closed_rebound"] += 1
                self._close(key, ts, out)
        if local is None or remote is None:
            self.stats["tls_endpoints_unresolved"] += 1
            local, remote = placeholder_endpoints(pid, ssl)
        self._open(key, local, remote, True, ts, out)
        return out

    def data(
        self,
        pid: int,
        ssl: int,
        ts: float,
        is_read: bool,
        total_len: int,
        data: bytes,
        out: list[Exchange] | None = None,
        offset: int | None = None,
    ) -> list[Exchange]:
        """One SSL_read (is_read) or SSL_write call: `total_len` bytes moved, the first `len(data)` kept;
        `offset`: where they start in the direction's stream as the kernel counted (None: unknown)."""
        out = [] if out is None else out
        stats = self.stats
        if total_len <= 0 or len(data) > total_len:
            stats["drop_tls_bad_record"] += 1
            return out
        stats["tls_records"] += 1
        stats["tls_bytes"] += total_len
        key = (pid, ssl)
        conn = self._conns.get(key)
        if conn is None:
            stats["tls_midstream"] += 1
            local, remote = placeholder_endpoints(pid, ssl)
            conn = self._open(key, local, remote, False, ts, out)
        else:
            self._conns.move_to_end(key)
            conn.last_ts = ts
        if conn.read_dir is None:
            conn.pending.append((is_read, ts, total_len, data, offset))
            if self._decidable(conn):
                self._decide(conn, out)
            return out
        self._feed(conn, is_read, ts, total_len, data, offset, out)
        return out

    def free(self, pid: int, ssl: int, ts: float, out: list[Exchange] | None = None) -> list[Exchange]:
        """SSL_free: the connection is over (the address may come back for a new one)."""
        out = [] if out is None else out
        if (pid, ssl) in self._conns:
            self.stats["tls_closed_freed"] += 1
            self._close((pid, ssl), ts, out)
        return out

    def advance(self, ts: float, out: list[Exchange] | None = None) -> list[Exchange]:
        """Capture time moved on: close connections silent for longer than Limits.idle_timeout_s."""
        out = [] if out is None else out
        conns = self._conns
        limit = ts - self._idle_s
        while conns:
            key, conn = next(iter(conns.items()))
            if conn.last_ts > limit:
                break
            self.stats["tls_closed_idle"] += 1
            self._close(key, ts, out)
        return out

    def close(self, ts: float, out: list[Exchange] | None = None) -> list[Exchange]:
        """End of capture: every connection finished, pending exchanges emitted (flagged when partial)."""
        out = [] if out is None else out
        while self._conns:
            self._close(next(iter(self._conns)), ts, out)
        return out

    # -- internals ---------------------------------------------------------------------------------------

    def _open(
        self, key: _Key, local: Endpoint, remote: Endpoint, bound: bool, ts: float, out: list[Exchange]
    ) -> _Conn:
        conns = self._conns
        while len(conns) >= self._max:
            self.stats["evict_tls_connection"] += 1
            self._close(next(iter(conns)), ts, out)
        conn = _Conn(self._next_flow_id, local, remote, bound, ts)
        self._next_flow_id += 1
        conns[key] = conn
        self.stats["tls_connections"] += 1
        return conn

    @staticmethod
    def _decidable(conn: _Conn) -> bool:
        if not conn.bound:
            return True  # mid-stream: the parser decides the roles from the first start line
        first = conn.pending[0][0]
        seen = 0
        for is_read, _, total_len, _, _ in conn.pending:
            if is_read != first:
                return True
            seen += total_len
        return seen >= _ROLE_BYTES

    def _decide(self, conn: _Conn, out: list[Exchange]) -> None:
        """Roles from the held records (see the module docstring), then the parser gets them all."""
        pending, conn.pending = conn.pending, []
        if conn.bound:
            first = pending[0][0]
            head = b"".join(d for r, _, _, d, _ in pending if r == first)[:_ROLE_BYTES]
            first_is_request = not (len(head) == _ROLE_BYTES and head == _RESPONSE_START)
            reads_to_server = first if first_is_request else not first
            if not first_is_request:
                self.stats["tls_first_message_response"] += 1
        else:
            reads_to_server = True  # a gateway mostly serves: the parser swaps if it turns out otherwise
        self.stats["tls_role_server" if reads_to_server else "tls_role_client"] += 1
        conn.read_dir = _TO_SERVER if reads_to_server else _TO_CLIENT
        client, server = (conn.remote, conn.local) if reads_to_server else (conn.local, conn.remote)
        parser = conn.parser = HttpConnectionParser(
            conn.flow_id, client, server, self._limits, self.stats, mid_stream=not conn.bound, pool=self._pool
        )
        if not conn.bound:
            ts = pending[0][1]
            for direction in (_TO_SERVER, _TO_CLIENT):
                parser.feed(StreamGap(conn.flow_id, direction, 0, None, ts, GapReason.MIDSTREAM), out)
        for is_read, ts, total_len, data, kernel_offset in pending:
            self._feed(conn, is_read, ts, total_len, data, kernel_offset, out)

    def _feed(
        self,
        conn: _Conn,
        is_read: bool,
        ts: float,
        total_len: int,
        data: bytes,
        kernel_offset: int | None,
        out: list[Exchange],
    ) -> None:
        side = 0 if is_read else 1
        missing = 0
        if kernel_offset is not None:
            expected = conn.kernel_next[side]
            if expected is not None and kernel_offset > expected:
                missing = kernel_offset - expected  # calls the ring or the rate limit dropped
            elif expected is not None and kernel_offset < expected:
                self.stats["tls_offset_reset"] += 1  # the kernel's entry was evicted: count from here
            conn.kernel_next[side] = kernel_offset + total_len
        offset = conn.sizes[side]
        conn.sizes[side] = offset + missing + total_len
        parser = conn.parser
        if parser is None:  # given up on: not HTTP
            self.stats["drop_tls_not_http_bytes"] += total_len
            return
        direction = conn.read_dir if is_read else (_TO_CLIENT if conn.read_dir is _TO_SERVER else _TO_SERVER)
        assert direction is not None
        fid = conn.flow_id
        if missing:
            self.stats["lost_tls_bytes"] += missing
            self.stats["lost_tls_gaps"] += 1
            parser.feed(StreamGap(fid, direction, offset, missing, ts, GapReason.OVERFLOW), out)
            offset += missing
        if data:
            parser.feed(StreamData(fid, direction, offset, data, ts), out)
        lost = total_len - len(data)
        if lost:
            self.stats["truncated_tls_bytes"] += lost
            self.stats["truncated_tls_calls"] += 1
            parser.feed(StreamGap(fid, direction, offset + len(data), lost, ts, GapReason.OVERFLOW), out)
        if parser.is_dead:
            parser.close(ts, out)
            conn.parser = None
            self.stats["tls_not_http"] += 1

    def _close(self, key: _Key, ts: float, out: list[Exchange]) -> None:
        conn = self._conns.pop(key)
        if conn.read_dir is None and conn.pending:
            self._decide(conn, out)
        if conn.parser is not None:
            conn.parser.close(ts, out)
            conn.parser = None
