"""The metrics endpoint: every counter exported in Prometheus text, health and readiness answers, and a
live daemon's counters moving with real traffic."""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sniffer.metrics import Health, MetricsServer, Snapshot

CORE = {
    "packets": 120,
    "flows": 7,
    "exchanges": 9,
    "events": 8,
    "events_partial": 2,
    "gap_midstream": 2,
    "gap_bytes": 1500,
    "drop_kernel": 3,
    "drop_malformed": 1,
    "evict_flows": 4,
    "tcp_keepalives": 5,
}
SENDER = {
    "events_sent": 6,
    "events_dropped_queue_full": 2,
    "events_dropped_4xx": 1,
    "http_503": 3,
    "network_errors": 1,
    "batches_sent": 2,
    "queue_depth": 11,
    "in_flight": 1,
}


P = ("moesif_sniffer_packets_total", ())


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@contextmanager
def server(health: Health | None = None) -> Iterator[MetricsServer]:
    srv = MetricsServer("127.0.0.1:0", health or Health())
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def test_every_counter_is_exported_with_headline_families() -> None:
    with server() as srv:
        srv.snapshot = Snapshot(core=dict(CORE), sender=dict(SENDER), gauges={"flows_active": 3})
        status, text = fetch(f"http://127.0.0.1:{srv.port}/metrics")
    assert status == 200
    got = samples(text)
    for name, value in CORE.items():
        assert got[("moesif_sniffer_core_total", (("name", name),))] == value
    for name, value in SENDER.items():
        if name not in ("queue_depth", "in_flight"):
            assert got[("moesif_sniffer_sender_total", (("name", name),))] == value
    assert got[("moesif_sniffer_packets_total", ())] == 120
    assert got[("moesif_sniffer_kernel_drops_total", ())] == 3
    assert got[("moesif_sniffer_events_partial_total", ())] == 2
    assert got[("moesif_sniffer_gaps_total", (("reason", "midstream"),))] == 2
    assert got[("moesif_sniffer_gap_bytes_total", ())] == 1500
    assert got[("moesif_sniffer_losses_total", (("reason", "evict_flows"),))] == 4
    assert ("moesif_sniffer_losses_total", (("reason", "tcp_keepalives"),)) not in got
    assert got[("moesif_sniffer_events_dropped_total", (("reason", "queue_full"),))] == 2
    assert got[("moesif_sniffer_send_failures_total", (("reason", "http_503"),))] == 3
    assert got[("moesif_sniffer_send_failures_total", (("reason", "network"),))] == 1
    assert got[("moesif_sniffer_queue_depth", ())] == 11
    assert got[("moesif_sniffer_flows_active", ())] == 3


def test_packets_and_kernel_drops_per_worker() -> None:
    workers = [
        {"packets": 90, "drop_kernel": 7, "main_wait_us": 2_500_000},
        {"packets": 30, "drop_kernel": 0},
    ]
    with server() as srv:
        srv.snapshot = Snapshot(core=dict(CORE), workers=workers)
        got = samples(fetch(f"http://127.0.0.1:{srv.port}/metrics")[1])
        srv.snapshot = Snapshot(core=dict(CORE))  # one worker: no per-worker family
        alone = samples(fetch(f"http://127.0.0.1:{srv.port}/metrics")[1])
    assert got[("moesif_sniffer_worker_packets_total", (("worker", "0"),))] == 90
    assert got[("moesif_sniffer_worker_packets_total", (("worker", "1"),))] == 30
    assert got[("moesif_sniffer_worker_kernel_drops_total", (("worker", "0"),))] == 7
    assert got[("moesif_sniffer_worker_kernel_drops_total", (("worker", "1"),))] == 0
    assert got[("moesif_sniffer_worker_main_wait_seconds_total", (("worker", "0"),))] == 2.5
    assert got[("moesif_sniffer_worker_main_wait_seconds_total", (("worker", "1"),))] == 0
    assert not any(name.startswith("moesif_sniffer_worker_") for name, _ in alone)


def test_health_and_readiness() -> None:
    health = Health(tick_timeout_s=30.0, transport_fail_s=0.05)
    with server(health) as srv:
        base = f"http://127.0.0.1:{srv.port}"
        assert fetch(base + "/healthz")[0] == 200
        assert fetch(base + "/readyz") == (503, "capture not open\n")
        health.capture_open = True
        assert fetch(base + "/readyz")[0] == 200
        health.observe_sender({"batches_sent": 1})
        health.observe_sender({"batches_sent": 1, "http_503": 1})  # failing from now on
        time.sleep(0.1)
        status, why = fetch(base + "/readyz")
        assert status == 503 and "failed for" in why
        health.observe_sender({"batches_sent": 2, "http_503": 1})  # a batch went through again
        assert fetch(base + "/readyz")[0] == 200
        health.last_tick -= 60  # the capture loop stopped ticking
        assert fetch(base + "/healthz")[0] == 503
        assert fetch(base + "/nope")[0] == 404


@pytest.mark.skipif(os.geteuid() != 0, reason="live capture needs root (CAP_NET_RAW)")
@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_live_daemon_metrics_count_real_traffic(tmp_path: Path) -> None:
    from test_daemon import curl, http_server, running_daemon

    with http_server() as port, running_daemon(tmp_path, port, SNIFFER_WORKERS="1") as d:
        before = samples(d.get("/metrics")[1])
        for i in range(5):
            curl(f"http://127.0.0.1:{port}/m/{i}")
        deadline = time.monotonic() + 10
        while True:
            after = samples(d.get("/metrics")[1])
            kernel = after[("moesif_sniffer_kernel_packets_total", ())]
            if after[("moesif_sniffer_events_total", ())] == 5 and kernel == after[P]:
                break  # the kernel's count (read every 2 s) caught up with ours
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert d.stop() == 0
    assert before[("moesif_sniffer_events_total", ())] == 0
    assert after[("moesif_sniffer_capture_open", ())] == 1
    packets = after[P]
    assert packets >= 5 * 8  # a handshake, a request, a response and a close for each call
    # the kernel passed one loopback copy of every packet (checked above), none twice
    assert after[("moesif_sniffer_loopback_duplicates_total", ())] == 0
    assert after[("moesif_sniffer_kernel_drops_total", ())] == 0
