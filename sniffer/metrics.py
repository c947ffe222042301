"""The daemon's HTTP endpoint: `/metrics` (Prometheus, via prometheus-client), `/healthz`, `/readyz`.

The daemon's loop publishes a `Snapshot` about once a second (plain dict copies made in the loop's own
thread); the HTTP thread only ever reads the latest snapshot, so a scrape never races the counters.

Every core `Stats` counter is exported as `moesif_sniffer_core_total{name=...}` and every sender counter
as `moesif_sniffer_sender_total{name=...}`; the headline figures also get their own families (packets,
kernel drops, flows, gaps, losses and events dropped by reason, exchanges, events, partial events, send
failures by reason, queue depth, load shedding: `shed_level` gauge and the shed counts, TLS capture:
records, connections, ring-full and rate-limit drops, truncated bytes; `tls_connections_open` and
`tls_watched_processes` are gauges...). With several capture workers, packets and kernel drops are also
exported per worker (`worker_packets_total{worker=...}`, `worker_kernel_drops_total{worker=...}`), with
the seconds each spent handing its messages to the main process (`worker_main_wait_seconds_total`: a
large share of the wall clock when the main process, not the workers, is the limit).

`/healthz`: 200 while the capture loop ticked within `tick_timeout_s` (a wedged loop fails it).
`/readyz`: 200 when the capture is open and the transport has not been failing for longer than
`transport_fail_s` (events still queue and spool meanwhile; this tells the operator, not the kubelet's
restart logic, so it is a readiness and not a liveness check).

The listening socket is bound in `__init__` (before privileges are dropped, so any port works) and
served from a daemon thread started by `start()` (after the capture workers were forked).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from sniffer import __version__
from sniffer.config import split_addr

__all__ = ["Health", "MetricsServer", "Snapshot", "collect"]

P = "moesif_sniffer_"

# Core counters with a family of their own: name -> (metric, help).
_CORE = {
    "packets": ("packets", "Packets handed to the core"),
    "drop_kernel": ("kernel_drops", "Packets the kernel dropped because a capture ring was full"),
    "capture_kernel_packets": ("kernel_packets", "Packets that passed the kernel filter (drops included)"),
    "capture_loopback_duplicates": ("loopback_duplicates", "Outgoing copies on loopback, skipped"),
    "flows": ("flows", "TCP flows handed to the HTTP layer"),
    "exchanges": ("exchanges", "HTTP exchanges completed by the core"),
    "events": ("events", "Moesif events built"),
    "events_partial": ("events_partial", "Events flagged as partial (something was not captured)"),
    "shed_bodies": ("bodies_shed", "Bodies left out of events by load shedding (level >= 1)"),
    "shed_flows_sampled_out": ("flows_sampled_out", "New flows not captured by load shedding's sampling"),
    "shed_flows_sampled_in": ("flows_sampled_in", "New flows kept while sampling (their events weigh N)"),
    "shed_flows_kong_upstream": (
        "flows_kong_upstream_kept",
        "New Kong connections to services kept whole while sampling (they carry every call)",
    ),
    "shed_packets_sampled_out": ("packets_sampled_out", "Packets of sampled-out flows, skipped"),
    "shed_level_changes": ("shed_level_changes", "Load-shedding level changes (each one is logged)"),
    "tls_records": ("tls_records", "TLS plaintext records (SSL_read/SSL_write calls) from the uprobes"),
    "tls_connections": ("tls_connections", "TLS connections (SSL objects) handed to the HTTP layer"),
    "drop_tls_ring_full": (
        "tls_ring_full_drops",
        "TLS records lost because the uprobes' ring buffer was full",
    ),
    "drop_tls_rate_limited": ("tls_rate_limited", "SSL calls not captured: over SNIFFER_TLS_RATE_LIMIT"),
    "truncated_tls_bytes": ("tls_truncated_bytes", "TLS bytes beyond SNIFFER_TLS_MAX_CALL_BYTES, not copied"),
}
_LOSS_PREFIXES = ("drop_", "evict_", "cap_", "truncated_", "conflict_", "http_desync")
# Sender values that are levels, not counts.
_SENDER_GAUGES = {
    "queue_depth": ("queue_depth", "Events waiting in the sender's queue"),
    "queue_bytes": ("queue_bytes", "Bytes the sender's queue holds (MOESIF_EVENT_QUEUE_BYTES caps it)"),
    "queue_fill_permille": ("queue_fill_permille", "Sender queue fill, by count or bytes, in 1/1000"),
    "in_flight": ("batches_in_flight", "Batch POSTs in flight"),
    "spool_batches": ("spool_batches", "Batches waiting in the spool directory"),
    "spool_bytes": ("spool_bytes", "Bytes in the spool directory"),
    "last_success_ts": ("last_send_success_timestamp_seconds", "Time of the last accepted batch"),
}


# Per-worker families: (counter, metric, help, scale).
_WORKER = (
    ("packets", "worker_packets", "Packets handed to the core, by capture worker", 1),
    ("drop_kernel", "worker_kernel_drops", "Packets the kernel dropped because a worker's ring was full", 1),
    (
        "main_wait_us",
        "worker_main_wait_seconds",
        "Seconds a capture worker spent handing its messages to the main process (blocked while the"
        " main process, which joins and builds Kong calls and writes or sends every event, is busy)",
        1e-6,
    ),
)


@dataclass
class Snapshot:
    core: dict[str, int] = field(default_factory=dict)
    sender: dict[str, int] | None = None
    gauges: dict[str, float] = field(default_factory=dict)  # name -> value, exported as given
    # Per capture worker (SNIFFER_WORKERS > 1), in worker order: its counters ("packets" and
    # "drop_kernel" are exported). The fanout keeps each flow on one worker, so with few busy
    # connections one worker can carry most of the traffic and drop while another idles: these show it.
    workers: list[dict[str, int]] = field(default_factory=list)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(P + name, doc, value=value)


def _by_label(name: str, doc: str, label: str, values: dict[str, float]) -> Metric:
    fam = CounterMetricFamily(P + name, doc, labels=[label])
    for key, value in sorted(values.items()):
        fam.add_metric([key], value)
    return fam


def collect(snap: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot."""
    core = snap.core
    for key, (name, doc) in _CORE.items():
        yield _counter(name, doc, core.get(key, 0))
    yield _by_label(
        "gaps", "Holes in TCP streams, by reason", "reason",
        {k[4:]: v for k, v in core.items() if k.startswith("gap_") and k != "gap_bytes"},
    )  # fmt: skip
    yield _counter("gap_bytes", "Stream bytes lost in holes", core.get("gap_bytes", 0))
    yield _by_label(
        "losses", "Packets, bytes, flows or legs shed or degraded, by counter", "reason",
        {k: v for k, v in core.items() if k.startswith(_LOSS_PREFIXES)},
    )  # fmt: skip
    yield _by_label("core", "Every counter of the capture core and the leg joiner", "name", core)
    sender = snap.sender
    if sender is not None:
        counts = {k: v for k, v in sender.items() if k not in _SENDER_GAUGES}
        yield _counter("events_sent", "Events the collector accepted", counts.get("events_sent", 0))
        yield _by_label(
            "events_dropped", "Events lost for good, by reason", "reason",
            {k.removeprefix("events_dropped_"): v for k, v in counts.items()
             if k.startswith("events_dropped_")},
        )  # fmt: skip
        failures = {k: v for k, v in counts.items() if k.startswith("http_")}
        failures["network"] = counts.get("network_errors", 0)
        failures["auth"] = counts.get("auth_failures", 0)
        yield _by_label("send_failures", "Failed batch POST attempts, by reason", "reason", failures)
        yield _by_label("sender", "Every counter of the Moesif sender", "name", counts)
        for key, (name, doc) in _SENDER_GAUGES.items():
            yield GaugeMetricFamily(P + name, doc, value=sender.get(key, 0))
    if snap.workers:
        for key, name, doc, scale in _WORKER:
            values = {str(i): w.get(key, 0) * scale for i, w in enumerate(snap.workers)}
            yield _by_label(name, doc, "worker", values)
    for name, value in sorted(snap.gauges.items()):
        yield GaugeMetricFamily(P + name, name.replace("_", " "), value=value)
    info = GaugeMetricFamily(P + "info", "Build information", labels=["version"])
    info.add_metric([__version__], 1)
    yield info


class Health:
    """What /healthz and /readyz answer; updated by the daemon's loop, read by the HTTP thread."""

    def __init__(self, tick_timeout_s: float = 30.0, transport_fail_s: float = 300.0) -> None:
        self.tick_timeout_s = tick_timeout_s
        self.transport_fail_s = transport_fail_s
        self.last_tick = time.monotonic()
        self.capture_open = False
        self.failing_since: float | None = None
        self._sent = 0
        self._failures = 0

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def observe_sender(self, stats: dict[str, int]) -> None:
        """Track since when the transport fails: failures grew and nothing was accepted meanwhile."""
        sent = stats.get("batches_sent", 0)
        failures = stats.get("network_errors", 0) + stats.get("auth_failures", 0)
        failures += sum(v for k, v in stats.items() if k.startswith("http_"))
        if sent > self._sent:
            self.failing_since = None
        elif failures > self._failures and self.failing_since is None:
            self.failing_since = time.monotonic()
        self._sent, self._failures = sent, failures

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last_tick
        if age > self.tick_timeout_s:
            return False, f"capture loop last ticked {age:.0f} s ago"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if not self.capture_open:
            return False, "capture not open"
        if self.failing_since is not None:
            failing = time.monotonic() - self.failing_since
            if failing > self.transport_fail_s:
                return False, f"sending to the collector has failed for {failing:.0f} s"
        return True, "ok"


class _Collector:
    def __init__(self, server: MetricsServer) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        return collect(self._server.snapshot)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._reply(200, generate_latest(owner.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            ok, why = owner.health.healthy() if path == "/healthz" else owner.health.ready()
            self._reply(200 if ok else 503, (why + "\n").encode(), "text/plain; charset=utf-8")
        else:
            self._reply(404, b"not found\n", "text/plain; charset=utf-8")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every few seconds are not worth a log line


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: MetricsServer


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsServer:
    def __init__(self, addr: str, health: Health) -> None:
        """Bind `host:port` (IPv6 as `[addr]:port`); OSError if the address is unusable."""
        host, port = split_addr(addr)
        server_class = _Server6 if ":" in host else _Server
        self._httpd = server_class((host, port), _Handler)
        self._httpd.owner = self
        self.health = health
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))  # type: ignore[arg-type]
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
        self._httpd.server_close()
