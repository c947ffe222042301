"""`TlsStreams`: the TLS tap's records -> HTTP `Exchange`s in capture time, ready for `Engine.feed_exchanges`.

The glue between the kernel side (`TlsTap.read()`: TlsData / TlsBound / TlsFreed with CLOCK_MONOTONIC
timestamps) and the sans-IO core (`reassembly.plaintext.PlaintextStreams`):
- time: the probes stamp with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); packets carry the kernel's
  CLOCK_REALTIME capture time. The offset between the two clocks is measured once, at start, as the
  tightest of a few back-to-back readings, so a TLS leg and the packet-captured leg of the same Kong call
  nest in time as the leg joiner expects (its slack is 0.5 ms; the measurement error is microseconds);
- endpoints: the SSL_set_fd probe reads the socket's addresses in the kernel, in the gateway's own
  thread as it binds the socket (`sock_read`), so a TlsBound normally carries them: the client leg's
  server endpoint is then the gateway's real address and port (8443), and the leg classifier and joiner
  treat it exactly like a packet-captured client leg. Nothing races: the record holds the truth;
- everything else (roles, offsets, truncation gaps, reuse, idle timeout, bounds) is `PlaintextStreams`.

Fallback, for a TlsBound without addresses (a kernel without BTF, or whose verifier refused the walk):
the socket is looked up through the process's /proc (`SocketResolver`). That lookup races with the
connection's end: it happens when user space reads the SSL_set_fd, and once the SSL object was freed its
fd may belong to the next connection already. It is kept, with its check below, because on such hosts
it is the only source of addresses, and because a wrong address is worse than a marked placeholder.
Every lookup is stamped with the CLOCK_MONOTONIC time it finished (`resolve`, run right after each read)
and checked against the probes' own timestamps, since the gateway frees the SSL object before it
closes the fd:
- a later call on the same SSL object that returned after the lookup, or a batch of records whose
  reading began after the lookup without its SSL_free in it, proves the fd was still its own then:
  confirmed (`tls_socket_confirmed`);
- its SSL_free entered before the lookup (or its fd or SSL address was bound again before it):
  refuted (`tls_socket_refuted`); its exchanges get marked placeholder endpoints instead of another
  connection's addresses.
Until then the connection's exchanges are held back: at most until the next batch is read (the reader
reads at least every `source.TLS_POLL_S`). Connections that end without either (idle, evicted,
shutdown) release theirs as resolved (`tls_socket_unchecked`). Kernel-read addresses never enter this
check (`tls_socket_from_kernel` counts them).
Counters go to the shared `Stats` (names starting `tls_`, and the usual loss prefixes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from reassembly.events import Endpoint, Exchange
from reassembly.limits import Limits
from reassembly.plaintext import PlaintextStreams, placeholder_endpoints
from reassembly.stats import Stats
from sniffer.capture.tls.records import TlsBound, TlsData, TlsFreed, TlsRecord
from sniffer.capture.tls.sockets import SocketResolver

__all__ = ["Resolved", "TlsStreams", "monotonic_to_epoch_offset"]

_SAMPLES = 5
Resolution = tuple[tuple[Endpoint, Endpoint] | None, int]  # (local, remote) or None; when, monotonic ns
Resolved = dict[int, Resolution]  # index of a TlsBound in its batch -> its resolution


def monotonic_to_epoch_offset() -> float:
    """Seconds to add to CLOCK_MONOTONIC to get CLOCK_REALTIME (the packets' capture time), now."""
    best: tuple[int, int] | None = None
    for _ in range(_SAMPLES):
        a = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        b = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or b - a < best[0]:
            best = (b - a, real - (a + b) // 2)
    assert best is not None
    return best[1] / 1e9


@dataclass(slots=True, eq=False)
class _Unconfirmed:
    """A connection whose resolved endpoints are not proven yet, and its exchanges held meanwhile."""

    pid: int
    ssl: int
    fd: int
    flow_id: int
    checked_ns: int
    local: Endpoint
    held: list[Exchange] = field(default_factory=list)


class TlsStreams:
    """TlsRecords in, exchanges out. Not thread-safe (the daemon's loop owns it)."""

    def __init__(
        self,
        limits: Limits | None = None,
        stats: Stats | None = None,
        *,
        resolver: SocketResolver | None = None,
        epoch_offset: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        self.stats = stats if stats is not None else Stats()
        self.resolver = resolver if resolver is not None else SocketResolver(stats=self.stats)
        self.offset = monotonic_to_epoch_offset() if epoch_offset is None else epoch_offset
        self.plaintext = PlaintextStreams(limits, self.stats, max_connections=max_connections)
        self.last_ts = 0.0  # capture time of the newest record seen
        # The longest time an SSL_set_fd waited before its socket was looked up, since the start: what
        # decides whether short connections are resolved.
        self.bind_lag_max_ms = 0.0
        self._unconfirmed: dict[tuple[int, int], _Unconfirmed] = {}  # by (pid, ssl)
        self._by_flow: dict[int, _Unconfirmed] = {}

    def __len__(self) -> int:
        return len(self.plaintext)

    def capture_time(self, ts_ns: int) -> float:
        return ts_ns / 1e9 + self.offset

    def resolve(self, records: list[TlsRecord]) -> Resolved:
        """Look up the socket of every TlsBound in `records` that came without addresses (the /proc
        fallback) now, stamped with the time each lookup finished: call it right after reading."""
        found: Resolved = {}
        endpoints = self.resolver.endpoints
        clock = time.clock_gettime_ns
        mono = time.CLOCK_MONOTONIC
        for i, rec in enumerate(records):
            if type(rec) is TlsBound and rec.local is None:
                ends = endpoints(rec.pid, rec.fd)
                done = clock(mono)
                found[i] = (ends, done)
                lag = (done - rec.ts_ns) / 1e6
                if lag > self.bind_lag_max_ms:
                    self.bind_lag_max_ms = lag
        return found

    def feed(
        self, records: Iterable[TlsRecord], resolved: Resolved | None = None, read_ns: int | None = None
    ) -> list[Exchange]:
        """Records in the order the ring buffer gave them, with their `resolve()` result (looked up here
        when not given) and the CLOCK_MONOTONIC time their reading began (every record made before it is
        in this batch; None: unknown). Returns the exchanges completed, and held ones now decided."""
        out: list[Exchange] = []
        streams = self.plaintext
        offset = self.offset
        ts = self.last_ts
        if not isinstance(records, list):
            records = list(records)
        if resolved is None:
            resolved = self.resolve(records)
        made: list[Exchange] = []
        route = self._route
        for i, rec in enumerate(records):
            ts = rec.ts_ns / 1e9 + offset
            kind = type(rec)
            if kind is TlsData:
                d: TlsData = rec  # type: ignore[assignment]
                if self._unconfirmed:
                    self._check(rec, out)
                streams.data(d.pid, d.ssl, ts, d.is_read, d.total_len, d.data, made, d.offset)
                if made:
                    route(made, out)
            elif kind is TlsBound:
                b: TlsBound = rec  # type: ignore[assignment]
                if b.local is not None:  # read in the kernel as the socket was bound: no check needed
                    self.stats["tls_socket_from_kernel"] += 1
                    streams.bind(b.pid, b.ssl, ts, b.local, b.remote, made)
                    route(made, out)
                    if self._unconfirmed:
                        self._check(rec, out)
                    continue
                ends, checked = resolved.get(i, (None, 0))
                local, remote = ends if ends is not None else (None, None)
                streams.bind(b.pid, b.ssl, ts, local, remote, made)
                route(made, out)
                if self._unconfirmed:
                    self._check(rec, out)
                if ends is not None:
                    self._watch(b, checked, ends[0])
            elif kind is TlsFreed:
                streams.free(rec.pid, rec.ssl, ts, made)
                route(made, out)
                if self._unconfirmed:
                    self._check(rec, out)
            else:
                self.stats["drop_tls_unknown_record"] += 1
        if read_ns is not None and self._unconfirmed:
            # Read after their lookup and no SSL_free among these records: their fds were theirs then.
            for u in [u for u in self._unconfirmed.values() if u.checked_ns < read_ns]:
                self._decide(u, True, out)
        if ts > self.last_ts:
            self.last_ts = ts
        return out

    def advance(self, ts: float) -> list[Exchange]:
        """Capture time moved on (wall clock when idle): idle connections close."""
        out: list[Exchange] = []
        self._route(self.plaintext.advance(ts), out)
        self._release_closed(out)
        return out

    def close(self, ts: float | None = None) -> list[Exchange]:
        """Shutdown: every open connection finished, everything held released."""
        out: list[Exchange] = []
        self._route(self.plaintext.close(self.last_ts if ts is None else ts), out)
        self._release_closed(out)
        return out

    # -- the endpoint check ------------------------------------------------------------------------------

    def _watch(self, b: TlsBound, checked_ns: int, local: Endpoint) -> None:
        flow_id = self.plaintext.flow_id(b.pid, b.ssl)
        if flow_id is None:
            return
        u = _Unconfirmed(b.pid, b.ssl, b.fd, flow_id, checked_ns, local)
        self._unconfirmed[(b.pid, b.ssl)] = u
        self._by_flow[flow_id] = u

    def _check(self, rec: TlsRecord, out: list[Exchange]) -> None:
        """Decide the pending connections this record tells about."""
        unconfirmed = self._unconfirmed
        if type(rec) is TlsBound:
            fd = rec.fd
            for other in [
                v for v in unconfirmed.values() if v.pid == rec.pid and (v.fd == fd or v.ssl == rec.ssl)
            ]:
                # its fd or its SSL address bound again: it was over by then
                self._decide(other, rec.ts_ns > other.checked_ns, out)
            return
        u = unconfirmed.get((rec.pid, rec.ssl))
        if u is None:
            return
        if rec.ts_ns > u.checked_ns:
            self._decide(u, True, out)
        elif type(rec) is TlsFreed:
            self._decide(u, False, out)

    def _decide(self, u: _Unconfirmed, confirmed: bool, out: list[Exchange]) -> None:
        del self._unconfirmed[(u.pid, u.ssl)]
        self._by_flow.pop(u.flow_id, None)
        if confirmed:
            self.stats["tls_socket_confirmed"] += 1
        else:
            self.stats["tls_socket_refuted"] += 1
            for ex in u.held:
                self._unresolve(u, ex)
        out.extend(u.held)

    @staticmethod
    def _unresolve(u: _Unconfirmed, ex: Exchange) -> None:
        """Marked placeholders for the wrong addresses, keeping the roles the parser found."""
        local, remote = placeholder_endpoints(u.pid, u.ssl)
        ex.client, ex.server = (local, remote) if ex.client == u.local else (remote, local)

    def _route(self, made: list[Exchange], out: list[Exchange]) -> None:
        """Move `made` to `out`, or to the held exchanges of its connection while that is unconfirmed."""
        by_flow = self._by_flow
        for ex in made:
            u = by_flow.get(ex.flow_id) if by_flow else None
            if u is None:
                out.append(ex)
            else:
                u.held.append(ex)
        made.clear()

    def _release_closed(self, out: list[Exchange]) -> None:
        for u in list(self._unconfirmed.values()):
            if self.plaintext.flow_id(u.pid, u.ssl) != u.flow_id:
                self.stats["tls_socket_unchecked"] += 1
                del self._unconfirmed[(u.pid, u.ssl)]
                self._by_flow.pop(u.flow_id, None)
                out.extend(u.held)
