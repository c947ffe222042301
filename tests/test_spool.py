"""The durable spool: on its own, through a sender in an outage, and across a SIGKILLed sender process."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector import APP_ID, CollectorThread, running_collector
from test_sender import make_event, make_sender, tid, wait_until

from sniffer.errors import ConfigError
from sniffer.moesif.batcher import Batch
from sniffer.moesif.spool import Spool

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _batch(first: int, n: int) -> Batch:
    return Batch.of([orjson.dumps(make_event(i)) for i in range(first, first + n)])


def test_spool_writes_atomically_and_reloads_in_order(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    spool = Spool(tmp_path, 1 << 20, counters)
    names = [spool.write(_batch(i * 10, 10).body, 10) for i in range(3)]
    assert all(names) and len(spool) == 3 and spool.pending_events == 30
    (tmp_path / "00000000000000000001-1-1-n5.batch.gz.tmp").write_bytes(b"half a batch")
    spool.close()

    again = Spool(tmp_path, 1 << 20, Counter())
    assert not list(tmp_path.glob("*.tmp"))  # an interrupted write is discarded
    entry = again.next_ready()
    assert entry is not None and entry.name == names[0] and entry.count == 10
    body = again.read(entry.name)
    assert body is not None
    assert [e["transaction_id"] for e in orjson.loads(gzip.decompress(body))] == [tid(i) for i in range(10)]
    again.remove(entry.name)
    assert len(again) == 2 and again.pending_events == 20
    assert counters["events_spooled"] == 30
    again.close()


def test_spool_is_bounded_and_evicts_oldest(tmp_path: Path) -> None:
    counters: Counter[str] = Counter()
    one = _batch(0, 10).body
    spool = Spool(tmp_path, int(len(one) * 2.5), counters)
    names = [spool.write(_batch(i * 10, 10).body, 10) for i in range(4)]
    assert [e.name for e in [spool.next_ready(), spool.next_ready()] if e] == names[2:]
    assert counters["events_dropped_spool_full"] == 20 and counters["spool_files_evicted"] == 2
    assert spool.total_bytes <= spool.max_bytes
    assert sorted(p.name for p in tmp_path.glob("*.gz")) == sorted(names[2:])
    spool.close()


def test_spool_refuses_a_second_sender(tmp_path: Path) -> None:
    first = Spool(tmp_path, 1 << 20, Counter())
    with pytest.raises(ConfigError, match="in use"):
        Spool(tmp_path, 1 << 20, Counter())
    first.close()
    Spool(tmp_path, 1 << 20, Counter()).close()


@pytest.fixture
def collector() -> Iterator[CollectorThread]:
    with running_collector() as c:
        yield c


def test_outage_at_close_spools_then_next_start_delivers(collector: CollectorThread, tmp_path: Path) -> None:
    c = collector.collector
    c.control(fail_503_for=60)
    s = make_sender(collector.url, batch_size=20, spool_dir=str(tmp_path))
    s.start()
    for i in range(250):
        s.submit(make_event(i))
    report = s.close(timeout_s=1)  # keeps retrying until the deadline, then leaves the rest on disk
    assert report.sent == 0 and report.left_unsent == 0 and report.spooled == 250
    # The spool's probe POST cut off at the deadline must be judged (503) before the outage ends: once
    # in CI it was judged after, under load, and its events arrived twice, then, and from the spool.
    assert wait_until(lambda: c.settled(0.5))
    assert c.event_count == 0

    c.control(fail_503_for=0)
    s2 = make_sender(collector.url, batch_size=20, spool_dir=str(tmp_path))
    s2.start()
    for i in range(250, 300):
        s2.submit(make_event(i))
    report2 = s2.close(timeout_s=10)
    assert c.counts() == {tid(i): 1 for i in range(300)}
    assert report2.complete and report2.sent == 300
    assert report2.stats["bytes_sent_uncompressed"] > 3 * report2.stats["bytes_sent"]  # sizes kept on disk
    assert not list(tmp_path.glob("*.gz"))


def test_spool_during_outage_then_recovery_drains_it(collector: CollectorThread, tmp_path: Path) -> None:
    c = collector.collector
    s = make_sender(collector.url, batch_size=20, spool_dir=str(tmp_path))
    s.start()
    c.control(fail_503_for=1.5)
    for i in range(400):
        s.submit(make_event(i))
        if i % 100 == 0:
            time.sleep(0.2)
    assert wait_until(lambda: s.stats.get("events_spooled", 0) > 0)
    report = s.close(timeout_s=15)
    assert c.counts() == {tid(i): 1 for i in range(400)}
    assert report.complete and report.stats["spool_batches"] == 0


def test_413_on_a_spooled_batch_splits_it(collector: CollectorThread, tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1 << 20, Counter())
    spool.write(_batch(0, 40).body, 40)
    spool.close()
    collector.collector.control(max_batch_events=15)
    s = make_sender(collector.url, batch_size=20, spool_dir=str(tmp_path))
    s.start()
    report = s.close(timeout_s=10)
    assert collector.collector.counts() == {tid(i): 1 for i in range(40)}
    assert max(collector.collector.batches) <= 15 and report.complete


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_sender import make_event, make_sender
    s = make_sender({url!r}, batch_size=25, spool_dir={spool!r})
    s.start()
    for i in range({n}):
        s.submit(make_event(i))
    while s.stats.get("events_spooled", 0) < {n}:
        time.sleep(0.02)
    print("SPOOLED", flush=True)
    time.sleep(60)
    """
)


def test_sigkilled_sender_loses_nothing_with_a_spool(tmp_path: Path) -> None:
    """The collector runs as its own process here, steered over HTTP like a real remote API."""
    import urllib.request

    proc = subprocess.Popen(
        [PY, str(REPO / "tests/collector.py"), "--port", "0", "--app-id", APP_ID, "--fail-503-for", "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        url = f"http://127.0.0.1:{int(line.split()[1])}"
        spool = tmp_path / "spool"
        n = 500
        child = subprocess.Popen(
            [PY, "-c", CHILD.format(tests=str(REPO / "tests"), url=url, spool=str(spool), n=n)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "SPOOLED"
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
        assert child.returncode == -signal.SIGKILL

        def post(path: str, doc: dict[str, object]) -> None:
            req = urllib.request.Request(url + path, data=orjson.dumps(doc), method="POST")
            urllib.request.urlopen(req, timeout=5).read()

        def received() -> dict[str, object]:
            with urllib.request.urlopen(url + "/_received", timeout=5) as resp:
                return dict(orjson.loads(resp.read()))

        assert received()["counts"] == {}
        post("/_control", {"fail_503_for": 0})
        s = make_sender(url, batch_size=25, spool_dir=str(spool))
        s.start()
        report = s.close(timeout_s=15)
        got = received()
        assert got["counts"] == {tid(i): 1 for i in range(n)}
        assert got["invalid"] == []
        assert report.sent == n and report.complete
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
