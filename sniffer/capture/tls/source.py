"""`TlsSource`: TLS capture as the daemon runs it, beside the packet rings.

It owns the `TlsTap` (kernel side) and the `TlsStreams` (records -> exchanges) and hands exchanges to the
engine with `Engine.feed_exchanges`, the same door the capture workers' exchanges come through, so the
Kong leg joiner sees a TLS client leg exactly like a packet-captured one.

The daemon's loop calls `poll()` whenever it wakes (the tap's fd is in its poll set in single-worker
mode), `tick()` about once a second (rescans the gateway processes to follow restarted or new workers,
runs the idle timeout) and `close()` at shutdown. `open()` returns None when SNIFFER_TLS is off or the
host cannot do it; in that case it logged ONE line saying why, and the daemon carries on with packet
capture only.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

from reassembly.events import Exchange
from reassembly.limits import Limits
from reassembly.stats import Stats
from sniffer.capture.tls.streams import TlsStreams
from sniffer.config import Config

if TYPE_CHECKING:
    from sniffer.capture.tls.tap import TlsTap

__all__ = ["REFRESH_S", "TlsSource"]

log = logging.getLogger("sniffer.tls")

REFRESH_S = 1.0  # gateway processes rescanned this often (a rescan reads one comm file per process)
MAX_RECORDS_PER_POLL = 65536  # then the caller's loop gets a turn (packet rings, ticks) even under a flood
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
                per_call_cap=config.tls_max_call_bytes, rate_limit=config.tls_rate_limit
            )
            tap = TlsTap.open(config.tls_process, probe_config)
        except TlsUnavailable as exc:
            log.warning("%s; carrying on with packet capture only", exc)
            return None
        except (OSError, ValueError) as exc:
            log.warning("TLS capture unavailable: %s; carrying on with packet capture only", exc)
            return None
        source = cls(tap, TlsStreams(limits or config.limits(), stats, max_connections=config.max_flows))
        pids = tap.watched_pids()
        log.info(
            "TLS capture: uprobes on %s, watching %d %s process%s",
            ", ".join(tap.libraries()) or "(no library yet)", len(pids), "/".join(config.tls_process),
            "" if len(pids) == 1 else "es",
        )  # fmt: skip
        return source

    def fileno(self) -> int:
        return self.tap.fileno()

    def poll(self, engine: _Feed) -> int:
        """Read what the probes reported, hand the completed exchanges to `engine`; records read."""
        records = self.tap.read(MAX_RECORDS_PER_POLL)
        if not records:
            return 0
        exchanges = self.streams.feed(records)
        engine.feed_exchanges(self.streams.last_ts, exchanges)
        return len(records)

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
        counters: dict[str, int] = {}
        gauges: dict[str, float] = {"tls_connections": float(len(self.streams))}
        for name, value in raw.items():
            if name in ("watched_processes", "unprobed_processes", "libraries"):
                gauges[f"tls_{name}"] = float(value)
            else:
                counters[_TAP_LOSSES.get(name, f"tls_tap_{name}")] = int(value)
        return counters, gauges

    def close(self, engine: _Feed | None = None) -> None:
        """Drain what is left, finish every connection, detach the probes."""
        try:
            if engine is not None:
                self.poll(engine)
                exchanges = self.streams.close()
                if exchanges:
                    engine.feed_exchanges(self.streams.last_ts, exchanges)
        finally:
            self.tap.close()
