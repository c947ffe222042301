"""`TlsStreams`: the TLS tap's records -> HTTP `Exchange`s in capture time, ready for `Engine.feed_exchanges`.

The glue between the kernel side (`TlsTap.read()`: TlsData / TlsBound / TlsFreed with CLOCK_MONOTONIC
timestamps) and the sans-IO core (`reassembly.plaintext.PlaintextStreams`):
- time: the probes stamp with `bpf_ktime_get_ns()` (CLOCK_MONOTONIC); packets carry the kernel's
  CLOCK_REALTIME capture time. The offset between the two clocks is measured once, at start, as the
  tightest of a few back-to-back readings, so a TLS leg and the packet-captured leg of the same Kong call
  nest in time as the leg joiner expects (its slack is 0.5 ms; the measurement error is microseconds);
- endpoints: on TlsBound the socket under the SSL object is resolved through the process's /proc
  (`SocketResolver`): the client leg's server endpoint is then the gateway's real address and port
  (8443), so the leg classifier and joiner treat it exactly like a packet-captured client leg.
  Resolution happens when user space reads the record, so it races with the connection's end: once the
  SSL object was freed its fd may already belong to the next connection. A TlsBound followed, in the
  same batch of records, by the SSL_free of its SSL object or by another SSL_set_fd on the same fd is
  therefore not resolved (`tls_socket_stale`; placeholders are used) rather than given another
  connection's addresses. The daemon reads the records in a thread of their own, woken by the ring
  buffer, and resolves right after each read (`resolve`), to keep this rare;
- everything else (roles, offsets, truncation gaps, reuse, idle timeout, bounds) is `PlaintextStreams`.
Counters go to the shared `Stats` (names starting `tls_`, and the usual loss prefixes).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from reassembly.events import Endpoint, Exchange
from reassembly.limits import Limits
from reassembly.plaintext import PlaintextStreams
from reassembly.stats import Stats
from sniffer.capture.tls.records import TlsBound, TlsData, TlsFreed, TlsRecord
from sniffer.capture.tls.sockets import SocketResolver

__all__ = ["Resolved", "TlsStreams", "monotonic_to_epoch_offset"]

_SAMPLES = 5
Resolved = dict[int, tuple[Endpoint, Endpoint] | None]


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


def _stale_binds(records: list[TlsRecord]) -> set[int]:
    """Indexes of the TlsBound records whose fd may no longer be theirs (see the module docstring)."""
    stale: set[int] = set()
    freed_after: set[tuple[int, int]] = set()
    bound_after: set[tuple[int, int]] = set()
    for i in range(len(records) - 1, -1, -1):
        rec = records[i]
        kind = type(rec)
        if kind is TlsFreed:
            freed_after.add((rec.pid, rec.ssl))
        elif kind is TlsBound:
            if (rec.pid, rec.ssl) in freed_after or (rec.pid, rec.fd) in bound_after:  # type: ignore[union-attr]
                stale.add(i)
            bound_after.add((rec.pid, rec.fd))  # type: ignore[union-attr]
    return stale


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

    def __len__(self) -> int:
        return len(self.plaintext)

    def capture_time(self, ts_ns: int) -> float:
        return ts_ns / 1e9 + self.offset

    def resolve(self, records: list[TlsRecord]) -> Resolved:
        """The endpoints of every TlsBound in `records` (by index; None: unknown or stale), looked up now:
        call it right after reading the records (the daemon does, in its reader thread)."""
        stale = _stale_binds(records)
        found: Resolved = {}
        endpoints = self.resolver.endpoints
        now_ns = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        for i, rec in enumerate(records):
            if type(rec) is TlsBound:
                lag = (now_ns - rec.ts_ns) / 1e6
                if lag > self.bind_lag_max_ms:
                    self.bind_lag_max_ms = lag
                if i in stale:
                    self.resolver.stats["tls_socket_stale"] += 1
                    found[i] = None
                else:
                    found[i] = endpoints(rec.pid, rec.fd)
        return found

    def feed(self, records: Iterable[TlsRecord], resolved: Resolved | None = None) -> list[Exchange]:
        """Records in the order the ring buffer gave them, with their `resolve()` result (looked up here
        when not given); returns the exchanges they completed."""
        out: list[Exchange] = []
        streams = self.plaintext
        offset = self.offset
        ts = self.last_ts
        if not isinstance(records, list):
            records = list(records)
        if resolved is None:
            resolved = self.resolve(records)
        for i, rec in enumerate(records):
            ts = rec.ts_ns / 1e9 + offset
            kind = type(rec)
            if kind is TlsData:
                d: TlsData = rec  # type: ignore[assignment]
                streams.data(d.pid, d.ssl, ts, d.is_read, d.total_len, d.data, out)
            elif kind is TlsBound:
                b: TlsBound = rec  # type: ignore[assignment]
                ends = resolved.get(i)
                local, remote = ends if ends is not None else (None, None)
                streams.bind(b.pid, b.ssl, ts, local, remote, out)
            elif kind is TlsFreed:
                streams.free(rec.pid, rec.ssl, ts, out)
            else:
                self.stats["drop_tls_unknown_record"] += 1
        if ts > self.last_ts:
            self.last_ts = ts
        return out

    def advance(self, ts: float) -> list[Exchange]:
        """Capture time moved on (wall clock when idle): idle connections close."""
        return self.plaintext.advance(ts)

    def close(self, ts: float | None = None) -> list[Exchange]:
        """Shutdown: every open connection finished."""
        return self.plaintext.close(self.last_ts if ts is None else ts)
