"""`TlsSource`: TLS capture as the daemon runs it, beside the packet rings.

It owns the `TlsTap` (kernel side) and the `TlsStreams` (records -> exchanges) and hands exchanges to the
engine with `Engine.feed_exchanges`, the same door the capture workers' exchanges come through, so the
Kong leg joiner sees a TLS client leg exactly like a packet-captured one.

A reader thread (`start()`, after any fork) waits on the ring buffer, reads the records the moment they
arrive and resolves the socket of each SSL_set_fd right away: that lookup goes through /proc and must
happen while the connection still exists, which a loop busy with packets cannot promise (measured in
the HTTPS topology: about half the sockets of one-call connections were gone when the records were read
by the capture loop, none when read by this thread). Everything else stays in the daemon's loop: it
waits on `fileno()` (readable when a batch is queued), calls `poll()` when it wakes, `tick()` about once
a second (rescans the gateway processes to follow restarted or new workers, runs the idle timeout) and
`close()` at shutdown. The queue between them is bounded in records: when it is full the thread stops
reading, and the kernel's ring buffer fills and counts its drops. `open()` returns None when SNIFFER_TLS
is off or the host cannot do it; in that case it logged ONE line saying why, and the daemon carries on
with packet capture only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Protocol

from reassembly.events import Exchange
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.capture.tls.sockets import SocketResolver
from sniffer.capture.tls.streams import Resolved, TlsStreams
from sniffer.config import Config

if TYPE_CHECKING:
    from sniffer.capture.tls.records import TlsRecord
    from sniffer.capture.tls.tap import TlsTap

__all__ = ["REFRESH_S", "TLS_POLL_S", "TlsSource"]

log = logging.getLogger("sniffer.tls")

# The probes wake user space as soon as a record waits and it had caught up (wakeup_bytes=0, the kernel's
# adaptive wakeup), not once per 64 KiB: an SSL_set_fd must be read, and its socket resolved through
# /proc, before the connection ends (see streams.py). Measured on nginx + curl, one 401 per connection:
# 16-20 of 20 sockets resolved (median 0.56 ms after SSL_set_fd) against 9 of 20 with batched wakeups
# read every 2 ms. The cost is a wakeup per batch of records when the reader is idle. This poll timeout
# is only a safety net.
TLS_POLL_S = 0.05
REFRESH_S = 1.0  # gateway processes rescanned this often (a rescan reads one comm file per process)
MAX_RECORDS_PER_READ = 65536
MAX_QUEUED_RECORDS = 1 << 18  # between the reader thread and the loop; then the kernel ring absorbs
MAX_BATCHES_PER_POLL = 64  # then the caller's loop gets a turn (packet rings, ticks) even under a flood
# The reader thread needs the GIL as soon as it wakes; the default 5 ms switch interval would be most of
# the time a short connection lives.
SWITCH_INTERVAL_S = 0.001
# Kernel counters whose growth is a loss, exported under the usual loss prefixes.
_TAP_LOSSES = {"ring_full": "drop_tls_ring_full", "rate_limited": "drop_tls_rate_limited"}


class _Feed(Protocol):
    def feed_exchanges(self, ts: float, exchanges: list[Exchange]) -> None: ...


class TlsSource:
    def __init__(self, tap: TlsTap, streams: TlsStreams) -> None:
        self.tap = tap
        self.streams = streams
        self.stats = streams.stats
        self._next_refresh = time.monotonic() + REFRESH_S
        self._refresh_failed = False
        self._queue: deque[tuple[list[TlsRecord], Resolved]] = deque()
        self._queued = 0  # records in the queue (the thread adds, the loop subtracts: GIL-atomic enough)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, config: Config, stats: Stats, limits: Limits | None = None) -> TlsSource | None:
        """The tap attached to the SNIFFER_TLS_PROCESS processes, or None (off, or one line logged)."""
        if config.tls != "uprobe":
            return None
        try:
            from sniffer.capture.tls import ProbeConfig, TlsTap, TlsUnavailable
        except Exception as exc:  # a broken install must not stop packet capture
            log.warning("TLS capture unavailable: %s; carrying on with packet capture only", exc)
            return None
        try:
            probe_config = ProbeConfig(
                per_call_cap=config.tls_max_call_bytes, rate_limit=config.tls_rate_limit, wakeup_bytes=0
            )
            tap = TlsTap.open(config.tls_process, probe_config)
        except TlsUnavailable as exc:
            log.warning("%s; carrying on with packet capture only", exc)
            return None
        except (OSError, ValueError) as exc:
            log.warning("TLS capture unavailable: %s; carrying on with packet capture only", exc)
            return None
        # The resolver runs in the reader thread: counters of its own, merged in counters().
        streams = TlsStreams(
            limits or config.limits(),
            stats,
            resolver=SocketResolver(stats=Stats()),
            max_connections=config.max_flows,
        )
        source = cls(tap, streams)
        pids = tap.watched_pids()
        log.info(
            "TLS capture: uprobes on %s, watching %d %s process%s",
            ", ".join(tap.libraries()) or "(no library yet)", len(pids), "/".join(config.tls_process),
            "" if len(pids) == 1 else "es",
        )  # fmt: skip
        return source

    def start(self) -> None:
        """Start the reader thread (after the capture workers were forked: no thread may exist then)."""
        if self._thread is not None:
            return
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._read_loop, name="tls-reader", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        tap, resolve, queue = self.tap, self.streams.resolve, self._queue
        ring = tap.fileno()
        while not self._stop.is_set():
            if self._queued >= MAX_QUEUED_RECORDS:
                self.stats["tls_queue_full_waits"] += 1
                self._stop.wait(0.01)
                continue
            select.select([ring], [], [], TLS_POLL_S)
            records = tap.read(MAX_RECORDS_PER_READ)
            if records:
                queue.append((records, resolve(records)))
                self._queued += len(records)
                with contextlib.suppress(BlockingIOError):  # the pipe is full of wake-ups already
                    os.write(self._wake_w, b"\0")

    def fileno(self) -> int:
        """Readable when records wait for `poll()` (or, before `start()`, the ring buffer itself)."""
        return self._wake_r if self._thread is not None else self.tap.fileno()

    def poll(self, engine: _Feed) -> int:
        """Hand the exchanges completed by the records read so far to `engine`; returns records taken."""
        if self._thread is None:  # not started: read here
            records = self.tap.read(MAX_RECORDS_PER_READ)
            if records:
                self._queue.append((records, self.streams.resolve(records)))
                self._queued += len(records)
        else:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        taken = 0
        queue, feed = self._queue, self.streams.feed
        for _ in range(MAX_BATCHES_PER_POLL):
            if not queue:
                break
            records, resolved = queue.popleft()
            self._queued -= len(records)
            taken += len(records)
            exchanges = feed(records, resolved)
            engine.feed_exchanges(self.streams.last_ts, exchanges)
        if queue:  # more to do: make sure the loop comes back at once
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"\0")
        return taken

    def tick(self, engine: _Feed, now: float | None = None) -> None:
        """About once a second: follow the gateway's processes; close idle connections (capture time =
        the wall clock, which the probes' timestamps are converted to)."""
        mono = time.monotonic() if now is None else now
        if mono >= self._next_refresh:
            self._next_refresh = mono + REFRESH_S
            try:
                self.tap.refresh()
                self._refresh_failed = False
            except OSError as exc:
                self.stats["tls_refresh_errors"] += 1
                if not self._refresh_failed:  # once per run of failures, not every second
                    log.warning("TLS capture: following the gateway's processes failed: %s", exc)
                self._refresh_failed = True
        exchanges = self.streams.advance(time.time())
        if exchanges:
            engine.feed_exchanges(self.streams.last_ts, exchanges)

    def counters(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters, gauges) for /metrics: the kernel side's counters as `tls_tap_<name>` (losses under
        their loss names), the open connections and watched processes as gauges."""
        try:
            raw = dict(self.tap.counters())
        except OSError:
            raw = {}
        counters: dict[str, int] = dict(self.streams.resolver.stats)
        gauges: dict[str, float] = {
            "tls_connections_open": float(len(self.streams)),
            "tls_bind_lag_max_ms": self.streams.bind_lag_max_ms,
        }
        for name, value in raw.items():
            if name in ("watched_processes", "unprobed_processes", "libraries"):
                gauges[f"tls_{name}"] = float(value)
            else:
                counters[_TAP_LOSSES.get(name, f"tls_tap_{name}")] = int(value)
        return counters, gauges

    def close(self, engine: _Feed | None = None) -> None:
        """Stop the reader, drain what is left, finish every connection, detach the probes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None
        try:
            if engine is not None:
                while self.poll(engine):
                    pass
                self.poll(engine)
                exchanges = self.streams.close()
                if exchanges:
                    engine.feed_exchanges(self.streams.last_ts, exchanges)
        finally:
            self.tap.close()
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
