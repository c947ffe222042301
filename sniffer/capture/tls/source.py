"""`TlsSource`: TLS capture as the daemon runs it, beside the packet rings.

It owns the `TlsTap` (kernel side) and the `TlsStreams` (records -> exchanges) and hands exchanges to the
engine with `Engine.feed_exchanges`, the same door the capture workers' exchanges come through, so the
Kong leg joiner sees a TLS client leg exactly like a packet-captured one.

The daemon's loop waits on `fileno()`, calls `poll()` when it wakes, `tick()` about once a second
(rescans the gateway processes to follow restarted or new workers, runs the idle timeout) and `close()`
at shutdown.

Two designs, chosen at open by where the socket addresses come from:
- in the kernel (the usual case: the kernel has BTF; `TlsTap.kernel_addresses`): each SSL_set_fd
  record already holds its socket's addresses, nothing races with the connection's end, so the records
  may wait. The probes wake user space only once 64 KiB wait (`ProbeConfig.wakeup_bytes`, T1's default:
  a wakeup is an irq_work, a VM exit here) and the loop reads the ring itself at least every
  `TLS_POLL_S`. No reader process, no priority change;
- from /proc (the fallback): a reader process (`start()`), reniced to `READER_NICE` and woken per
  record (`wakeup_bytes=0`), reads the records the moment they arrive and resolves each SSL_set_fd's
  socket right away, while the connection still exists, which a loop busy with packets cannot promise,
  nor a thread of it waiting for the GIL. It sends (records, endpoints, its counters) over a pipe; the
  pipe bounds what is in flight: when the loop falls behind the reader blocks, and the kernel's ring
  buffer fills and counts its drops.
`open()` returns None when SNIFFER_TLS
is off or the host cannot do it; in that case it logged ONE line saying why, and the daemon carries on
with packet capture only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any, Protocol

from reassembly.events import Exchange
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.capture.tls.sockets import SocketResolver
from sniffer.capture.tls.streams import TlsStreams
from sniffer.capture.workers import IDLE_LAG_S
from sniffer.config import Config

if TYPE_CHECKING:
    from sniffer.capture.tls.tap import TlsTap

__all__ = ["REFRESH_S", "TLS_POLL_S", "TlsSource"]

log = logging.getLogger("sniffer.tls")

# Without kernel-read addresses the probes wake user space as soon as a record waits and it had caught
# up (wakeup_bytes=0, the kernel's adaptive wakeup), not once per 64 KiB: an SSL_set_fd must be read,
# and its socket resolved through /proc, before the connection ends (see streams.py). Measured on nginx
# + curl, one 401 per connection: 16-20 of 20 sockets resolved (median 0.56 ms after SSL_set_fd) against
# 9 of 20 with batched wakeups read every 2 ms. With kernel-read addresses batched wakeups are the rule
# and this poll timeout is how long a quiet gateway's records may wait.
TLS_POLL_S = 0.05
REFRESH_S = 1.0  # gateway processes rescanned this often (a rescan reads one comm file per process)
MAX_RECORDS_PER_READ = 65536
MAX_BATCHES_PER_POLL = 64  # then the caller's loop gets a turn (packet rings, ticks) even under a flood
STOP_S = 5.0  # the reader's last batches at shutdown
READER_NICE = -10
# Kernel counters whose growth is a loss, exported under the usual loss prefixes.
_TAP_LOSSES = {"ring_full": "drop_tls_ring_full", "rate_limited": "drop_tls_rate_limited"}


class _Feed(Protocol):
    def feed_exchanges(self, ts: float, exchanges: list[Exchange]) -> None: ...


def _reader_main(tap: TlsTap, streams: TlsStreams, conn: Any) -> None:
    """The reader process: records read the moment they arrive, sockets resolved at once, sent on.

    A process and not a thread: the resolution must not wait for the GIL of a loop busy with packets.
    It stops on "stop" (after one last read) or when the daemon's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the daemon decides when to stop, and says so
    with contextlib.suppress(OSError):
        # Woken by the ring buffer, it must run before the connection it is told about ends, also when
        # the gateway keeps every CPU busy: ahead of them in the run queue. It sleeps most of the time.
        os.setpriority(os.PRIO_PROCESS, 0, READER_NICE)
    ring = tap.fileno()
    resolve, stats = streams.resolve, streams.resolver.stats
    stop = False
    proof_due = False  # the read after a batch proves its SSL objects were still open at their lookups
    try:
        while not stop:
            ready = select.select([ring, conn], [], [], TLS_POLL_S)[0]
            if conn in ready:
                conn.recv()  # "stop", or EOF
                stop = True
            began = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            records = tap.read(MAX_RECORDS_PER_READ)
            if records or proof_due:
                # A full read may have left records behind: then it proves nothing about what is missing.
                read_ns = began if len(records) < MAX_RECORDS_PER_READ else None
                conn.send((records, resolve(records), read_ns, dict(stats), streams.bind_lag_max_ms))
            proof_due = bool(records)
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        conn.close()


class TlsSource:
    def __init__(self, tap: TlsTap, streams: TlsStreams) -> None:
        self.tap = tap
        self.streams = streams
        self.stats = streams.stats
        self._next_refresh = time.monotonic() + REFRESH_S
        self._refresh_failed = False
        self._proc: Any = None  # the reader process, once started
        self._conn: Any = None  # our end of its pipe
        self._stopping = False
        self._resolver_stats: dict[str, int] = {}
        # The last poll read everything waiting (no full read, no message left in the pipe): only then
        # may a tick move this source's clock to the wall's (see `tick`).
        self._caught_up = True

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
            from sniffer.capture.tls.sock_read import kernel_layout

            # batched wakeups (the default) unless the /proc fallback's reader must race the connection
            wakeup = {} if kernel_layout() is not None else {"wakeup_bytes": 0}
            probe_config = ProbeConfig(
                per_call_cap=config.tls_max_call_bytes, rate_limit=config.tls_rate_limit, **wakeup
            )
            tap = TlsTap.open(config.tls_process, probe_config)
            if not tap.kernel_addresses and probe_config.wakeup_bytes:
                # BTF was there but the verifier refused the walk: the /proc reader needs every wakeup
                tap.close()
                probe_config = dataclasses.replace(probe_config, wakeup_bytes=0)
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
        if not tap.kernel_addresses:
            log.warning(
                "TLS capture: socket addresses from /proc, not the kernel (%s); short connections may "
                "get placeholder addresses", tap.kernel_addresses_error,
            )  # fmt: skip
        pids = tap.watched_pids()
        log.info(
            "TLS capture: uprobes on %s, watching %d %s process%s",
            ", ".join(tap.libraries()) or "(no library yet)", len(pids), "/".join(config.tls_process),
            "" if len(pids) == 1 else "es",
        )  # fmt: skip
        return source

    def start(self) -> None:
        """For the /proc fallback only: fork the reader process (before any thread exists: after the
        capture workers, before the metrics and sender threads). With kernel-read addresses the loop
        reads the ring itself and this does nothing."""
        if self._proc is not None or self.tap.kernel_addresses:
            return
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe(duplex=True)
        self._proc = ctx.Process(
            target=_reader_main, args=(self.tap, self.streams, child), name="tls-reader", daemon=True
        )
        self._proc.start()
        child.close()
        self._conn = parent

    def fileno(self) -> int:
        """Readable when records wait for `poll()` (before `start()`: the ring buffer itself)."""
        return self._conn.fileno() if self._conn is not None else self.tap.fileno()

    def poll(self, engine: _Feed) -> int:
        """Hand the exchanges completed by the records read so far to `engine`; returns records taken."""
        feed = self.streams.feed
        conn = self._conn
        if conn is None:  # not started: read and resolve here
            began = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            records = self.tap.read(MAX_RECORDS_PER_READ)
            read_ns = began if len(records) < MAX_RECORDS_PER_READ else None
            self._caught_up = read_ns is not None
            exchanges = feed(records, self.streams.resolve(records), read_ns)
            engine.feed_exchanges(self._watermark(read_ns), exchanges)
            return len(records)
        taken = 0
        try:
            for _ in range(MAX_BATCHES_PER_POLL):
                if not conn.poll():
                    break
                records, resolved, read_ns, self._resolver_stats, lag = conn.recv()
                self._caught_up = read_ns is not None
                self.streams.bind_lag_max_ms = max(self.streams.bind_lag_max_ms, lag)
                taken += len(records)
                exchanges = feed(records, resolved, read_ns)
                engine.feed_exchanges(self._watermark(read_ns), exchanges)
            else:
                self._caught_up = False  # messages may be left in the pipe
        except (EOFError, OSError):
            if self._proc is not None and not self._stopping:
                log.warning("TLS capture: the reader process exited (%s)", self._proc.exitcode)
            self._conn = None
            self._stopping = True
        return taken

    def tick(self, engine: _Feed, now: float | None = None) -> None:
        """About once a second: follow the gateway's processes; close idle connections (capture time =
        the wall clock, which the probes' timestamps are converted to, when the last poll read all that
        was waiting; else the newest record's)."""
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
        streams = self.streams
        if not self._caught_up:
            # Records are waiting (the last read was full, or the pipe not emptied): they are older than
            # the wall says, so neither the idle timeouts nor the clock may run ahead of them.
            engine.feed_exchanges(streams.last_ts, streams.advance(streams.last_ts))
            return
        wall = time.time()
        exchanges = streams.advance(wall)
        # Every record made IDLE_LAG_S ago has been read by now (the ring is read at least every
        # TLS_POLL_S, and the last read took all): the other sources need not wait for this one beyond
        # that, and a quiet tap's clock runs as far behind the wall as a quiet capture worker's
        # (`capture.time_merge`).
        engine.feed_exchanges(max(streams.last_ts, wall - IDLE_LAG_S), exchanges)

    def _watermark(self, read_ns: int | None) -> float:
        """The capture time up to which every record has been read: when the read began, unless it was
        full (records may have been left); else the newest record's."""
        streams = self.streams
        if read_ns is None:
            return streams.last_ts
        return max(streams.last_ts, streams.capture_time(read_ns))

    def counters(self) -> tuple[dict[str, int], dict[str, float]]:
        """(counters, gauges) for /metrics: the kernel side's counters as `tls_tap_<name>` (losses under
        their loss names), the open connections and watched processes as gauges."""
        try:
            raw = dict(self.tap.counters())
        except OSError:
            raw = {}
        counters: dict[str, int] = dict(self.streams.resolver.stats)
        counters.update(self._resolver_stats)
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
        """Stop the reader, take what it still sends, finish every connection, detach the probes."""
        self._stopping = True
        try:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send("stop")  # it reads once more, sends that, and closes its end
                deadline = time.monotonic() + STOP_S
                while self._conn is not None and time.monotonic() < deadline:
                    if self._conn.poll(0.05):  # then poll() reads it, or sees the end (and drops _conn)
                        self.poll(engine if engine is not None else _Discard())
            elif engine is not None:
                self.poll(engine)
            if engine is not None:
                exchanges = self.streams.close()
                if exchanges:
                    engine.feed_exchanges(self.streams.last_ts, exchanges)
        finally:
            if self._proc is not None:
                self._proc.join(1.0)
                if self._proc.is_alive():
                    self._proc.kill()
                    self._proc.join(1.0)
                self._proc = None
            self.tap.close()


class _Discard:
    def feed_exchanges(self, ts: float, exchanges: list[Exchange]) -> None:
        pass
