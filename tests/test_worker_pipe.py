"""A capture worker's pipe to the main process: the time a worker spends blocked handing its messages
over is counted (`send_to_main`), so an operator can tell a main process that cannot keep up (it joins
and builds every Kong call) from workers that cannot."""

from __future__ import annotations

import multiprocessing
import threading
import time

from test_kong_join import client_leg

from reassembly.stats import Stats
from sniffer.capture.exchange_codec import decode, encode
from sniffer.capture.workers import send_to_main

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
