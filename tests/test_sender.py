"""MoesifSender against the local fake collector (tests/collector.py), over real sockets."""

from __future__ import annotations

import gzip
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector import APP_ID, CollectorThread, running_collector

from sniffer.moesif import batcher
from sniffer.moesif.batcher import EventQueue, encode_event
from sniffer.moesif.sampling import sampling_view
from sniffer.moesif.sender import MoesifSender
from sniffer.moesif.transport import Backoff, RetryPolicy, parse_retry_after, safe_url

FAST = RetryPolicy(backoff_base_s=0.05, backoff_max_s=0.4, auth_retry_s=0.2, config_min_interval_s=0.05)


def make_event(i: int, user: str | None = None, path: str = "/items", body: Any = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "request": {
            "time": "2026-11-24T10:00:00.000Z",
            "uri": f"http://api.example.com:8000{path}?n={i}",
            "verb": "GET",
            "headers": {"host": "api.example.com", "accept": "*/*"},
            "ip_address": "10.0.0.1",
        },
        "response": {
            "time": "2026-11-24T10:00:00.012Z",
            "status": 200,
            "headers": {"content-type": "application/json"},
        },
        "direction": "Incoming",
        "transaction_id": str(uuid.UUID(int=i + 1)),
        "metadata": {"capture": {"legs": "client"}},
    }
    if user is not None:
        ev["user_id"] = user
    if body is not None:
        ev["response"]["body"] = body
        ev["response"]["transfer_encoding"] = "json"
    return ev


def tid(i: int) -> str:
    return str(uuid.UUID(int=i + 1))


def make_sender(url: str, **kw: Any) -> MoesifSender:
    args: dict[str, Any] = {
        "application_id": APP_ID,
        "endpoint": url,
        "connect_timeout_s": 1.0,
        "send_timeout_s": 2.0,
        "user_agent": "moesif-sniffer/test",
        "batch_max_time_s": 0.05,
        "retry_policy": FAST,
    }
    args.update(kw)
    return MoesifSender(**args)


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


@pytest.fixture
def collector() -> Iterator[CollectorThread]:
    with running_collector() as c:
        yield c


def test_delivers_every_event_exactly_once(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=50)
    s.start()
    for i in range(2000):
        s.submit(make_event(i))
    report = s.close()
    c = collector.collector
    assert c.counts() == {tid(i): 1 for i in range(2000)}
    assert c.invalid == []
    assert report.complete and report.sent == 2000
    assert max(c.batches) <= 50 and sum(c.batches) == 2000
    assert report.stats["batches_sent"] == len(c.batches)
    assert c.encodings == {"gzip": len(c.batches)}
    assert c.user_agents == {"moesif-sniffer/test"}
    assert all(e["weight"] == 1 for e in c.events())
    assert report.stats["last_success_ts"] >= int(time.time()) - 60
    assert report.stats["bytes_sent"] < report.stats["bytes_sent_uncompressed"]


def test_age_flushes_a_small_batch_without_close(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=50, batch_max_time_s=0.2)
    s.start()
    for i in range(3):
        s.submit(make_event(i))
    assert wait_until(lambda: collector.collector.event_count == 3)
    assert collector.collector.batches == [3]
    s.close()


def test_outage_of_several_seconds_loses_nothing(collector: CollectorThread) -> None:
    c = collector.collector
    s = make_sender(
        collector.url, batch_size=20, retry_policy=RetryPolicy(backoff_base_s=0.2, backoff_max_s=1.0)
    )
    s.start()
    for i in range(300):
        s.submit(make_event(i))
    assert wait_until(lambda: c.event_count == 300)
    c.control(fail_503_for=4.0)
    for i in range(300, 700):  # trickle in during the outage, like live capture would
        s.submit(make_event(i))
        if i % 50 == 0:
            time.sleep(0.25)
    report = s.close(timeout_s=20)
    assert c.counts() == {tid(i): 1 for i in range(700)}
    assert c.statuses[503] > 0
    assert report.complete
    assert report.stats["batches_retried"] >= c.statuses[503]


def test_429_retry_after_is_honoured(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(fail_429=1, retry_after="1")
    s = make_sender(collector.url, batch_size=10, max_in_flight=1)
    s.start()
    for i in range(10):
        s.submit(make_event(i))
    report = s.close(timeout_s=10)
    assert c.counts() == {tid(i): 1 for i in range(10)}
    (t429, st1), (t201, st2) = c.answers
    assert (st1, st2) == (429, 201)
    assert t201 - t429 >= 1.0  # a lower bound: the sender waited at least what the server asked
    assert report.stats["http_429"] == 1


def test_413_splits_until_batches_fit(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(max_batch_events=7)
    s = make_sender(collector.url, batch_size=50)
    s.start()
    for i in range(200):
        s.submit(make_event(i))
    report = s.close()
    assert c.counts() == {tid(i): 1 for i in range(200)}
    assert max(c.batches) <= 7
    assert report.stats["batches_split"] >= 200 // 50
    assert report.complete


def test_413_on_a_single_event_drops_only_that_event(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(max_body_bytes=20_000)
    s = make_sender(collector.url, batch_size=10)
    s.start()
    for i in range(10):
        s.submit(make_event(i, body={"blob": "x" * 30_000} if i == 4 else None))
    report = s.close()
    assert set(c.counts()) == {tid(i) for i in range(10) if i != 4}
    assert report.dropped == {"too_large": 1}


def test_other_4xx_drops_the_batch_and_counts_it(collector: CollectorThread, caplog: Any) -> None:
    c = collector.collector
    c.control(fail_400=2)
    s = make_sender(collector.url, batch_size=10, max_in_flight=1)
    s.start()
    with caplog.at_level(logging.ERROR, logger="sniffer.transport"):
        for i in range(100):
            s.submit(make_event(i))
        report = s.close()
    missing = 100 - c.event_count
    assert missing > 0
    assert report.dropped == {"4xx": missing}
    assert report.stats["batches_rejected"] == 2
    assert sum("told to refuse" in r.getMessage() for r in caplog.records) == 2  # the body is logged


def test_invalid_event_is_refused_by_the_collector(collector: CollectorThread) -> None:
    bad = make_event(0)
    del bad["request"]["time"]
    s = make_sender(collector.url, batch_size=1)
    s.start()
    s.submit(bad)
    s.submit(make_event(1))
    report = s.close()
    assert set(collector.collector.counts()) == {tid(1)}
    assert report.dropped == {"4xx": 1}
    assert "request.time" in collector.collector.invalid[0]


def test_401_keeps_events_retries_and_logs_once(collector: CollectorThread, caplog: Any) -> None:
    c = collector.collector
    c.control(fail_401_for=1.5)
    s = make_sender(collector.url, batch_size=10)
    with caplog.at_level(logging.ERROR, logger="sniffer.transport"):
        s.start()
        for i in range(100):
            s.submit(make_event(i))
        report = s.close(timeout_s=15)
    assert c.counts() == {tid(i): 1 for i in range(100)}
    assert c.statuses[401] >= 2 and report.stats["auth_failures"] == c.statuses[401]
    loud = [r for r in caplog.records if "refused application id" in r.getMessage()]
    assert len(loud) == 1
    assert APP_ID not in loud[0].getMessage() and APP_ID[-4:] in loud[0].getMessage()


def test_connection_resets_and_slow_answers(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(reset_next=3, delay_s=0.2)
    s = make_sender(collector.url, batch_size=25)
    s.start()
    for i in range(300):
        s.submit(make_event(i))
    report = s.close(timeout_s=20)
    assert c.counts() == {tid(i): 1 for i in range(300)}
    assert report.stats["network_errors"] >= 3
    assert report.complete


def test_answers_slower_than_the_timeout_are_retried(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(delay_s=1.0)
    s = make_sender(collector.url, batch_size=50, send_timeout_s=0.3, connect_timeout_s=0.3)
    s.start()
    for i in range(100):
        s.submit(make_event(i))
    assert wait_until(lambda: s.stats.get("network_errors", 0) >= 2)
    c.control(delay_s=0.0)
    report = s.close(timeout_s=15)
    # The collector kept batches whose answers timed out: duplicates, same transaction_id only.
    assert set(c.counts()) == {tid(i) for i in range(100)}
    assert report.complete


def test_sampling_half_arrives_with_weight_2(collector: CollectorThread) -> None:
    c = collector.collector
    c.set_config({"sample_rate": 50})
    s = make_sender(collector.url, batch_size=100, rng=random.Random(1234))
    s.start()
    n = 4000
    for i in range(n):
        s.submit(make_event(i))
    report = s.close()
    kept = c.event_count
    assert abs(kept - n / 2) < 5 * (n * 0.25) ** 0.5  # five sigma of Binomial(4000, 0.5)
    assert {e["weight"] for e in c.events()} == {2}
    assert report.sampled_out == n - kept
    assert report.stats["config_fetches"] >= 1


def test_capture_side_weight_multiplies_with_the_sampling_weight(collector: CollectorThread) -> None:
    # An event from a flow the daemon sampled 1 in 4 under load stands for 4 calls; kept again by a
    # 50 % app config, it stands for 8.
    c = collector.collector
    c.set_config({"sample_rate": 50})
    s = make_sender(collector.url, batch_size=100, rng=random.Random(99))
    s.start()
    for i in range(200):
        ev = make_event(i)
        ev["weight"] = 4
        s.submit(ev)
    s.close()
    assert c.event_count > 0
    assert {e["weight"] for e in c.events()} == {8}


def test_events_a_worker_encoded_are_sampled_weighed_and_sent_whole(collector: CollectorThread) -> None:
    """`submit_encoded`, what the main process does with the events a capture worker built: sampled on
    their view (alice at rate 0), the 50 % rate and the flow weight multiplied into the bytes, every
    other field as the worker encoded it; a big event for this sender's limit goes the dict way."""
    c = collector.collector
    c.set_config({"sample_rate": 50, "user_sample_rate": {"alice": 0}})
    s = make_sender(collector.url, batch_size=100, rng=random.Random(7), max_event_bytes=20_000)
    s.start()
    events = [make_event(i, user=("alice", "bob", None)[i % 3]) for i in range(600)]
    events.append(make_event(600, user="bob", body={"blob": "x" * 30_000}))
    items = []
    for i, event in enumerate(events):
        data, outcome = encode_event(event)
        assert data is not None and outcome == ""
        items.append((data, sampling_view(event), 3 if i % 2 else 1))
    s.submit_encoded(items, {"events_bodies_omitted_oversize": 2})
    report = s.close()
    got = {e["transaction_id"]: e for e in c.events()}
    assert c.invalid == [] and 150 < len(got) < 250 and report.sampled_out == len(events) - len(got)
    for i, event in enumerate(events[:600]):
        if tid(i) in got:
            assert event.get("user_id") != "alice"
            assert got[tid(i)] == {**event, "weight": 2 * (3 if i % 2 else 1)}
    # Kept (seeded), and over this sender's limit: its body left out and counted, as `submit` does.
    assert "body" not in got[tid(600)]["response"] and got[tid(600)]["weight"] == 2
    assert report.stats["events_bodies_omitted_oversize"] == 2 + 1


def test_user_rate_zero_drops_exactly_that_user(collector: CollectorThread) -> None:
    c = collector.collector
    c.set_config({"sample_rate": 100, "user_sample_rate": {"alice": 0}})
    s = make_sender(collector.url, batch_size=50)
    s.start()
    users = ["alice", "bob", None]
    for i in range(600):
        s.submit(make_event(i, user=users[i % 3]))
    s.close()
    assert set(c.counts()) == {tid(i) for i in range(600) if i % 3 != 0}


def test_etag_change_refetches_config(collector: CollectorThread) -> None:
    c = collector.collector
    s = make_sender(collector.url, batch_size=1)
    s.start()
    fetches = c.config_fetches
    c.set_config({"sample_rate": 100, "user_sample_rate": {"alice": 0}})
    s.submit(make_event(0, user="bob"))  # its response carries the new ETag
    assert wait_until(lambda: s.stats.get("config_fetches", 0) >= 2)
    assert c.config_fetches > fetches
    s.submit(make_event(1, user="alice"))
    s.submit(make_event(2, user="bob"))
    s.close()
    assert set(c.counts()) == {tid(0), tid(2)}


def test_config_fetch_failure_keeps_everything(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(fail_config=True, config={"sample_rate": 0})
    s = make_sender(collector.url, batch_size=50)
    s.start()
    for i in range(100):
        s.submit(make_event(i))
    report = s.close()
    assert c.event_count == 100
    assert report.stats["config_fetch_errors"] >= 1


def test_full_queue_drops_the_oldest_and_counts_exactly(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=10, queue_size=100)
    for i in range(1000):  # before start: nothing drains the queue
        s.submit(make_event(i))
    s.start()
    report = s.close()
    assert set(collector.collector.counts()) == {tid(i) for i in range(900, 1000)}
    assert report.dropped == {"queue_full": 900}
    assert report.stats["events_queued"] == 1000


def test_full_queue_during_outage_counter_equals_missing(collector: CollectorThread) -> None:
    c = collector.collector
    c.control(fail_503_for=1.5)
    s = make_sender(collector.url, batch_size=10, queue_size=200, max_in_flight=2)
    s.start()
    for i in range(1000):
        s.submit(make_event(i))
    report = s.close(timeout_s=15)
    dropped = report.dropped.get("queue_full", 0)
    assert dropped > 0
    assert c.event_count == 1000 - dropped
    assert all(n == 1 for n in c.counts().values())


def test_queued_events_hold_their_counted_bytes_not_the_encoders_buffers() -> None:
    """What the byte cap counts is what the queue holds: orjson's output keeps its buffer's capacity
    (16 KiB for a 1.4 KB event), so queueing it as such held ten times the counted bytes."""
    q = EventQueue(maxsize=100_000, batch_size=50, max_bytes=1 << 30)
    event = make_event(0, body={"note": "n" * 1200})
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2000):
            data, outcome = encode_event(event)
            assert data is not None and outcome == ""
            q.put(data)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(data) > 1300 and q.bytes == 2000 * (len(data) + 120)
    assert held < 1.1 * q.bytes


def test_outage_queue_is_bounded_by_bytes_not_only_by_count(collector: CollectorThread) -> None:
    """Events with 50 KB bodies during an outage: the count cap alone (100,000) would let them hold
    5 GB; the byte cap keeps the queue's memory under 2 MB and says how many were dropped."""
    c = collector.collector
    c.control(fail_503_for=60)
    s = make_sender(collector.url, batch_size=10, max_in_flight=1, queue_bytes=2_000_000)
    s.start()
    body = {"blob": "b" * 50_000}
    peak = peak_fill = 0
    for i in range(400):
        s.submit(make_event(i, body=body))
        now = s.stats
        peak, peak_fill = max(peak, now["queue_bytes"]), max(peak_fill, now["queue_fill_permille"])
    stats = s.stats
    assert 1_800_000 < peak <= 2_000_000
    # the gauge says full while the queue is at its byte cap (read as the queue fills: at the end the
    # sender thread may just have taken a batch out, which once left 885 in CI)
    assert peak_fill >= 900
    # At most one batch of 10 left the queue for the retry loop; the rest waited or were dropped.
    assert 400 - 10 - 40 <= stats["events_dropped_queue_full"] <= 400 - 39
    report = s.close(timeout_s=0.3)
    assert report.dropped["queue_full"] == stats["events_dropped_queue_full"]
    assert report.left_unsent + report.dropped["queue_full"] == 400 and c.event_count == 0


def test_close_flushes_everything_queued(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=1000, batch_max_time_s=60)
    s.start()
    for i in range(500):
        s.submit(make_event(i))
    assert collector.collector.event_count == 0
    report = s.close()
    assert collector.collector.counts() == {tid(i): 1 for i in range(500)}
    assert report.complete
    s.submit(make_event(501))
    assert s.stats["events_dropped_after_close"] == 1


def test_close_deadline_during_outage_reports_unsent(collector: CollectorThread) -> None:
    collector.collector.control(fail_503_for=60)
    s = make_sender(collector.url, batch_size=10)
    s.start()
    for i in range(95):
        s.submit(make_event(i))
    report = s.close(timeout_s=0.5)
    assert report.sent == 0 and report.left_unsent == 95 and not report.complete


def test_oversize_event_loses_bodies_then_is_dropped(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=10)
    s.start()
    s.submit(make_event(0, body={"blob": "x" * 1_200_000}))
    huge_headers = make_event(1)
    huge_headers["request"]["headers"]["x-big"] = "y" * 1_200_000
    s.submit(huge_headers)
    s.submit(make_event(2, body={"ok": True}))
    report = s.close()
    got = {e["transaction_id"]: e for e in collector.collector.events()}
    assert set(got) == {tid(0), tid(2)}
    assert "body" not in got[tid(0)]["response"]
    assert got[tid(0)]["metadata"]["capture"]["body_omitted_event_bytes"] > 1_200_000
    assert got[tid(2)]["response"]["body"] == {"ok": True}
    assert report.dropped == {"oversize": 1}
    assert report.stats["events_bodies_omitted_oversize"] == 1


def test_batches_are_bounded_by_bytes(collector: CollectorThread) -> None:
    s = make_sender(collector.url, batch_size=50, max_batch_bytes=200_000)
    s.start()
    for i in range(60):
        s.submit(make_event(i, body={"blob": "z" * 30_000}))
    s.close()
    c = collector.collector
    assert c.event_count == 60
    assert max(c.batches) <= 6  # 6 x ~30.5 KB fit in 200 KB, 7 do not


def test_wrong_app_id_is_refused_by_the_collector(collector: CollectorThread) -> None:
    s = make_sender(collector.url, application_id="not-the-right-one", batch_size=5)
    s.start()
    for i in range(5):
        s.submit(make_event(i))
    report = s.close(timeout_s=0.5)
    assert collector.collector.event_count == 0
    assert report.left_unsent == 5 and report.stats["auth_failures"] >= 1


def test_queue_wakes_consumer_only_on_edges() -> None:
    wakes: list[int] = []
    q = EventQueue(maxsize=10, batch_size=4)
    q.set_waker(lambda: wakes.append(len(q)))
    for i in range(12):
        q.put(b'{"i":%d}' % i)
    assert wakes == [1]  # went non-empty; no re-arm, so no more wake-ups
    q.arm()
    q.put(b'{"i":12}')
    assert wakes == [1, 10]
    assert q.dropped_full == 3 and q.take(3) == [b'{"i":3}', b'{"i":4}', b'{"i":5}']


def test_queue_byte_cap_drops_the_oldest_and_accounts_every_byte() -> None:
    q = EventQueue(maxsize=1000, batch_size=50, max_bytes=10_000)
    events = [orjson.dumps({"i": i, "pad": "p" * 900}) for i in range(40)]
    peak = 0
    for data in events:
        q.put(data)
        peak = max(peak, q.bytes)
    assert peak <= 10_000
    kept = q.take(1000)
    assert kept == events[-len(kept) :] and 5 <= len(kept) < 11  # the newest, whole, in order
    assert q.dropped_full == 40 - len(kept) and q.bytes == 0
    # One event over the cap on its own is still kept (it passed max_event_bytes), the rest go.
    q.put(events[0])
    q.put(b"x" * 20_000)
    assert q.take(5) == [b"x" * 20_000] and q.dropped_full == 40 - len(kept) + 1
    assert q.fill() == 0.0


def test_retry_after_parsing_and_backoff_bounds() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    policy = RetryPolicy(backoff_base_s=1.0, backoff_max_s=8.0, retry_after_max_s=100)
    b = Backoff(policy, random.Random(5))
    for attempt in range(10):
        step = min(8.0, 2.0**attempt)
        assert step / 2 <= b.delay(attempt) <= step
    assert 30 <= b.delay(0, retry_after_s=30) <= 33.1
    assert b.delay(0, retry_after_s=1000) >= 100


def test_signals_during_close_first_is_logged_second_stops_waiting(
    collector: CollectorThread, caplog: Any
) -> None:
    collector.collector.control(fail_503_for=60)
    s = make_sender(collector.url, batch_size=10)
    s.start()
    for i in range(50):
        s.submit(make_event(i))

    before = signal.getsignal(signal.SIGTERM)

    def signal_twice() -> None:
        # Only once close() has taken over SIGTERM: never kill the test process itself.
        if wait_until(lambda: signal.getsignal(signal.SIGTERM) is not before):
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.3)

    threading.Thread(target=signal_twice, daemon=True).start()
    with caplog.at_level(logging.WARNING, logger="sniffer.transport"):
        report = s.close(timeout_s=60)  # would wait a minute without the second signal
    assert report.left_unsent == 50 and report.sent == 0
    assert any("still flushing 50 queued events" in r.getMessage() for r in caplog.records)
    assert signal.getsignal(signal.SIGTERM) is before


def test_unreachable_collector_counts_network_errors_and_keeps_events() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        s = make_sender(url, batch_size=10)
        s.start()
        for i in range(30):
            s.submit(make_event(i))
        report = s.close(timeout_s=0.5)
    finally:
        sock.close()
    assert report.left_unsent == 30 and report.sent == 0
    assert report.stats["network_errors"] >= 1 and report.stats["config_fetch_errors"] >= 1


def test_config_is_refetched_periodically(collector: CollectorThread) -> None:
    c = collector.collector
    s = make_sender(collector.url, retry_policy=RetryPolicy(config_refresh_s=0.2))
    s.start()
    c.set_config({"sample_rate": 100, "user_sample_rate": {"alice": 0}})  # no batch carries the new ETag
    assert wait_until(lambda: c.config_fetches >= 3)
    s.submit(make_event(0, user="alice"))
    s.submit(make_event(1, user="bob"))
    s.close()
    assert set(c.counts()) == {tid(1)}


def test_endpoint_credentials_are_not_logged() -> None:
    assert safe_url("https://user:secret@api.example.com:443/x") == "https://***@api.example.com:443/x"
    assert safe_url("https://api.moesif.net") == "https://api.moesif.net"


@pytest.mark.parametrize(("compressor", "level"), [("isal", 2), ("zlib", 3)])
def test_each_compressor_posts_the_events_gzipd(
    collector: CollectorThread, monkeypatch: pytest.MonkeyPatch, compressor: str, level: int
) -> None:
    # ISA-L (the default when installed) and zlib (without it): a gzip stream of the JSON array, which the
    # collector takes whole, every field intact.
    if compressor == "isal" and batcher._isal_compress is None:
        pytest.skip("isal is not installed")
    monkeypatch.setattr(batcher, "COMPRESSOR", compressor)
    monkeypatch.setattr(batcher, "GZIP_LEVEL", level)
    monkeypatch.setattr(batcher, "ISAL_LEVEL", level)
    events = [make_event(i, body={"v": "y" * (i % 300)}) for i in range(120)]
    body = batcher.gzip_body([orjson.dumps(e) for e in events])
    assert body[:2] == b"\x1f\x8b" and orjson.loads(gzip.decompress(body)) == events
    s = make_sender(collector.url, batch_size=50)
    s.start()
    for event in events:
        s.submit(orjson.loads(orjson.dumps(event)))
    report = s.close()
    assert report.complete and report.sent == len(events)
    got = sorted(collector.collector.events(), key=lambda e: e["transaction_id"])
    assert got == [{**e, "weight": 1} for e in sorted(events, key=lambda e: e["transaction_id"])]
    assert collector.collector.invalid == []
