"""A capture worker's pipe to the main process: the time a worker spends blocked handing its messages
over is counted (`send_to_main`), so an operator can tell a main process that cannot keep up (it joins
and builds every Kong call) from workers that cannot."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from types import SimpleNamespace

import pytest
from test_kong_join import client_leg

from reassembly.stats import Stats
from sniffer.capture.exchange_codec import decode, encode
from sniffer.capture.workers import send_to_main
from sniffer.config import Config
from sniffer.daemon_loop import DaemonLoop, main_process_limit

BUSY_S = 0.4


def test_a_send_blocked_while_the_main_process_is_busy_is_counted_and_a_free_one_hardly() -> None:
    stats = Stats()
    parent, child = multiprocessing.get_context("fork").Pipe(duplex=True)
    # Larger than the socket pair's buffers: the send cannot complete until the other end reads.
    big = ("x", 1.0, b"\0" * (8 << 20), None, b"")
    got: list[object] = []

    def busy_main() -> None:
        time.sleep(BUSY_S)  # joining and building some other worker's batch
        got.append(parent.recv())

    reader = threading.Thread(target=busy_main)
    start = time.perf_counter()
    reader.start()
    send_to_main(child, big, stats)
    took = time.perf_counter() - start
    reader.join()
    assert got == [big]
    waited = stats["main_wait_us"] / 1e6
    assert BUSY_S * 0.9 <= waited <= took, (waited, took)

    # A main process waiting for the message takes it at once: a real batch of legs, well under the wait.
    legs = ("x", 2.0, encode([client_leg(None, 1.0, 1.1, rid=f"r{i}") for i in range(64)]), None, b"")
    before = stats["main_wait_us"]
    reader = threading.Thread(target=lambda: got.append(parent.recv()))
    reader.start()
    time.sleep(0.05)  # the reader is in recv()
    send_to_main(child, legs, stats)
    reader.join()
    assert len(decode(got[-1][2])) == 64  # type: ignore[index]
    assert 0 < stats["main_wait_us"] - before < BUSY_S * 1e6 / 4
    parent.close()
    child.close()


def test_the_summary_warns_when_the_workers_wait_on_the_main_process_while_the_kernel_drops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The daemon's periodic summary reads the workers' counters since the last one: a worker blocked for
    # half the interval while the kernel dropped packets says the main process is the limit; blocked as
    # long without drops, or briefly with drops, does not.
    assert main_process_limit([{}, {}], [{"main_wait_us": 30_000_000, "drop_kernel": 5}, {}], 60.0) == (
        0.5,
        5,
    )
    assert main_process_limit([{}, {}], [{"main_wait_us": 30_000_000}, {"drop_kernel": 0}], 60.0) is None
    assert main_process_limit([{}, {}], [{"main_wait_us": 6_000_000}, {"drop_kernel": 900}], 60.0) is None
    before = [{"main_wait_us": 10_000_000, "drop_kernel": 100}, {"main_wait_us": 2_000_000}]
    after = [{"main_wait_us": 40_000_000, "drop_kernel": 100}, {"main_wait_us": 5_000_000, "drop_kernel": 7}]
    assert main_process_limit(before, after, 60.0) == (0.5, 7)  # deltas, the longest wait of the two

    loop = DaemonLoop(Config(), None, lambda c: None)
    pool = SimpleNamespace(stats=[{"packets": 10}, {"packets": 12}])
    loop.pool = pool  # type: ignore[assignment]  # summary() reads only its counters
    with caplog.at_level(logging.INFO, logger="sniffer.daemon"):
        loop.summary()  # an interval with no wait
        loop._summary_at -= 60.0  # a minute later: one worker blocked 45 s of it, 300 packets dropped
        pool.stats = [{"packets": 900, "main_wait_us": 45_000_000, "drop_kernel": 300}, {"packets": 800}]
        loop.summary()
        loop._summary_at -= 60.0  # the next minute: no more drops
        pool.stats = [{"packets": 1900, "main_wait_us": 90_000_000, "drop_kernel": 300}, {"packets": 1700}]
        loop.summary()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(
        "a capture worker waited on the main process 75% of the last 60 s while the"
    )
    assert "dropped 300 packets" in warnings[0]
