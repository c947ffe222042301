"""Edge cases of the whole engine, from packets crafted with scapy to the Moesif events a user gets.

Each layer has its own tests; these check that the layers compose: what a capture with reordering,
loss, duplicates, wraparound, pipelining or a mid-stream start turns into, seen as events.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ListSink, frames, tcp_conversation, write_pcap
from scapy.layers.inet import TCP
from scapy.packet import Packet

from reassembly.stats import Stats
from sniffer import replay
from sniffer.capture.pcapfile import CaptureFile, Frame
from sniffer.config import Config
from sniffer.engine import Engine

JSON_HEADERS = b"Content-Type: application/json\r\n"


def run(packets: list[Packet], **env: str) -> tuple[list[dict[str, Any]], Stats]:
    sink = ListSink()
    engine = Engine(Config.load(None, {"SNIFFER_KONG_PORTS": "", **env}), sink)
    for frame in frames(packets):
        engine.feed(*frame)
    engine.close()
    return sink.events, engine.stats


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: api.example.com\r\n\r\n".encode()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (JSON_HEADERS + extra, len(body), body)


def doc(i: int, size: int = 40) -> bytes:
    return json.dumps({"i": i, "pad": "x" * size}).encode()


def summary(events: list[dict[str, Any]]) -> list[tuple[str, str, int | None, Any]]:
    return [
        (
            e["request"]["verb"],
            e["request"]["uri"],
            e.get("response", {}).get("status"),
            e.get("response", {}).get("body"),
        )
        for e in events
    ]


def conversation(n: int = 4, **kw: Any) -> list[Packet]:
    return tcp_conversation([get(f"/items/{i}") for i in range(n)], [ok(doc(i)) for i in range(n)], **kw)


def flags_of(event: dict[str, Any]) -> list[str]:
    return event["metadata"]["capture"].get("flags", [])


def data_packets(packets: list[Packet]) -> list[int]:
    return [i for i, p in enumerate(packets) if len(p[TCP].payload)]


def test_in_order_baseline() -> None:
    events, stats = run(conversation())
    assert summary(events) == [
        ("GET", f"http://api.example.com:80/items/{i}", 200, json.loads(doc(i))) for i in range(4)
    ]
    assert not stats.losses()
    assert all(not flags_of(e) for e in events)


def test_the_packet_count_is_exact_whenever_the_stats_are_synced_or_closed() -> None:
    """stats["packets"] is brought up to date once per capture second (not per frame): a reader that
    syncs first (the daemon's metrics do) sees every frame fed, and so does one after close."""
    packets = frames(conversation())
    engine = Engine(Config.load(None, {"SNIFFER_KONG_PORTS": ""}), ListSink())
    for i, frame in enumerate(packets, 1):
        engine.feed(*frame)
        if i in (1, len(packets) // 2):
            engine.sync_stats()
            assert engine.stats["packets"] == i
    engine.close()
    assert engine.stats["packets"] == len(packets) > 2


def shuffle_within_bursts(packets: list[Packet], rng: random.Random) -> list[Packet]:
    """Reorder segments within each run of same-direction segments: what a capture point sees when
    packets of one burst take different paths. (Across directions a capture point cannot see an ACK
    before the data it acknowledges; the engine reads that as loss, as zeek does.)"""
    out: list[Packet] = []
    run_: list[Packet] = []
    for p in packets:
        if run_ and (p[TCP].sport != run_[0][TCP].sport or not len(p[TCP].payload)):
            rng.shuffle(run_)
            out.extend(run_)
            run_ = []
        if len(p[TCP].payload):
            run_.append(p)
        else:
            out.append(p)
    rng.shuffle(run_)
    return out + run_


def test_reordering_within_bursts_gives_the_same_events() -> None:
    base = conversation(mss=20)
    expected = summary(run(base)[0])
    rng = random.Random(7)
    for _ in range(10):
        shuffled = shuffle_within_bursts(base, rng)
        assert shuffled != base
        events, stats = run(shuffled)
        assert summary(events) == expected
        assert not stats.losses()


def test_lo_duplicate_copies_do_not_corrupt_or_double() -> None:
    base = conversation(mss=60)
    doubled = [p for p in base for _ in range(2)]
    events, stats = run(doubled)
    assert summary(events) == summary(run(base)[0])
    assert stats["conflict_bytes"] == 0


def test_overlapping_retransmission_with_conflicting_bytes_first_copy_wins() -> None:
    pkts = tcp_conversation([get("/a")], [ok(b'{"v": "first-copy"}')], mss=30)
    resp = [i for i in data_packets(pkts) if pkts[i][TCP].sport == 80]
    victim = pkts[resp[-1]]
    forged = victim.copy()
    payload = bytes(victim[TCP].payload)
    forged[TCP].remove_payload()
    forged = forged / payload.replace(b"first", b"FORGE")
    forged.time = victim.time + 0.0001
    pkts.insert(resp[-1] + 1, forged)
    events, stats = run(pkts)
    assert events[0]["response"]["body"] == {"v": "first-copy"}
    assert stats["conflict_bytes"] > 0


def test_sequence_wraparound_changes_nothing() -> None:
    near = conversation(mss=40, isn_client=2**32 - 50, isn_server=2**32 - 100)
    assert summary(run(near)[0]) == summary(run(conversation(mss=40))[0])


def test_mid_stream_start_reports_the_calls_that_follow() -> None:
    pkts = conversation(n=4, handshake=False)
    first_response_end = max(i for i in data_packets(pkts)[:2])
    events, stats = run(pkts[first_response_end + 1 :])
    assert [e["request"]["uri"] for e in events] == [
        f"http://api.example.com:80/items/{i}" for i in (1, 2, 3)
    ]
    assert all(e["response"]["status"] == 200 for e in events)
    assert stats["gap_midstream"] >= 1


def test_pipelined_head_then_get() -> None:
    head = b"HEAD /doc HTTP/1.1\r\nHost: h\r\n\r\n"
    body = doc(1, 300)
    head_resp = b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n" % (JSON_HEADERS, len(body))
    pkts = tcp_conversation([head + get("/doc")], [head_resp + ok(body)], mss=100)
    events, stats = run(pkts)
    assert [(e["request"]["verb"], e["response"]["status"]) for e in events] == [("HEAD", 200), ("GET", 200)]
    assert "body" not in events[0]["response"]
    assert events[1]["response"]["body"] == json.loads(body)
    assert stats["http_desync"] == 0


def test_100_continue_then_final_response() -> None:
    body = b'{"name": "widget"}'
    headers = (
        b"POST /items HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    created = ok(b'{"id": 9}').replace(b"200 OK", b"201 Created")
    pkts = tcp_conversation([headers, body], [b"HTTP/1.1 100 Continue\r\n\r\n", created])
    (event,) = run(pkts)[0]
    assert event["request"]["body"] == {"name": "widget"}
    assert event["response"]["status"] == 201 and event["response"]["body"] == {"id": 9}


def test_chunked_with_trailers_and_gzip_split_across_30_segments() -> None:
    original = json.dumps({"rows": [{"n": i, "word": f"w{i * 7919 % 10007}"} for i in range(700)]}).encode()
    packed = gzip.compress(original, mtime=0)
    chunks = [packed[i : i + 997] for i in range(0, len(packed), 997)]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Checksum: abc\r\n\r\n"
    resp = (
        b"HTTP/1.1 200 OK\r\n" + JSON_HEADERS + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
        b"Trailer: X-Checksum\r\n\r\n" + body
    )
    mss = len(resp) // 30 + 1
    pkts = tcp_conversation([get("/rows")], [resp], mss=mss)
    assert sum(1 for p in pkts if p[TCP].sport == 80 and len(p[TCP].payload)) == 30
    (event,) = run(pkts)[0]
    assert event["response"]["body"] == json.loads(original)
    assert event["response"]["transfer_encoding"] == "json"


def test_lost_segment_inside_a_body_of_known_length_keeps_the_call_flagged() -> None:
    big = doc(1, 3000)
    pkts = tcp_conversation([get("/big"), get("/next")], [ok(big), ok(doc(2))], mss=500)
    resp = [i for i in data_packets(pkts) if pkts[i][TCP].sport == 80]
    del pkts[resp[2]]  # a segment in the middle of the first body
    events, stats = run(pkts)
    assert [(e["request"]["uri"].rsplit("/", 1)[1], e["response"]["status"]) for e in events] == [
        ("big", 200),
        ("next", 200),
    ]
    assert "response_gap" in flags_of(events[0])
    assert events[0]["metadata"]["capture"]["gap"] is True
    assert events[1]["response"]["body"] == json.loads(doc(2))  # nothing after the hole is disturbed
    assert stats["gap_acked_unseen"] + stats["gap_closed"] + stats["gap_timeout"] >= 1


def test_lost_segment_inside_headers_then_resync_on_the_next_request() -> None:
    long_req = b"GET /first HTTP/1.1\r\nHost: h\r\nX-Pad: " + b"p" * 400 + b"\r\n\r\n"
    pkts = tcp_conversation([long_req, get("/second")], [ok(doc(1)), ok(doc(2))], mss=100)
    req = [i for i in data_packets(pkts) if pkts[i][TCP].dport == 80]
    del pkts[req[1]]  # inside the first request's header block
    events, _stats = run(pkts)
    second = [e for e in events if e["request"]["uri"].endswith("/second")]
    assert len(second) == 1
    assert second[0]["response"]["status"] == 200
    assert second[0]["response"]["body"] == json.loads(doc(2))
    assert not any(e["request"]["uri"].endswith("/first") and not flags_of(e) for e in events)


def test_rst_mid_response_gives_a_flagged_event() -> None:
    body = doc(1, 2000)
    pkts = tcp_conversation([get("/cut")], [ok(body)], mss=500, close=False)
    resp = [i for i in data_packets(pkts) if pkts[i][TCP].sport == 80]
    rst = pkts[resp[1]].copy()
    rst[TCP].remove_payload()
    rst[TCP].flags = "R"
    pkts = [*pkts[: resp[1] + 1], rst]
    (event,) = run(pkts)[0]
    assert event["response"]["status"] == 200
    assert "response_incomplete" in flags_of(event)


def test_ipv6_and_unanswered_request() -> None:
    pkts = tcp_conversation([get("/v6"), get("/never")], [ok(doc(6))], ipv6=True)
    events, _ = run(pkts)
    assert events[0]["request"]["ip_address"] == "fd00::a00:1"
    assert events[0]["request"]["uri"] == "http://api.example.com:80/v6"
    assert "response" not in events[1] and "unanswered" in flags_of(events[1])


def test_snaplen_truncated_frames_are_counted_and_never_invent_bytes() -> None:
    pkts = conversation(n=2, mss=400)
    fr = frames(pkts)
    target = max(i for i, p in enumerate(pkts) if p[TCP].sport == 80 and len(p[TCP].payload))
    ts, lt, data, wire = fr[target]
    fr[target] = (ts, lt, data[:80], wire)
    sink = ListSink()
    engine = Engine(Config.load(None, {"SNIFFER_KONG_PORTS": ""}), sink)
    for f in fr:
        engine.feed(*f)
    engine.close()
    assert engine.stats["truncated_snaplen"] == 1
    first, last = sink.events
    assert first["response"]["body"] == json.loads(doc(0))
    # The response's bytes were cut by the snaplen: never completed from nothing, flagged.
    assert last.get("response", {}).get("body") != json.loads(doc(1))
    assert flags_of(last)


def test_scrapes_of_the_daemons_own_metrics_port_are_not_api_calls() -> None:
    scrape = tcp_conversation(
        [b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9464\r\n\r\n"],
        [ok(b"{}")],
        client=("127.0.0.1", 50000),
        server=("127.0.0.1", 9464),
    )
    events, stats = run(scrape + conversation(n=1))
    assert [e["request"]["uri"] for e in events] == ["http://api.example.com:80/items/0"]
    assert stats["segments_ignored_ports"] > 0
    # A port the operator lists as an API port is parsed, and so is any port with metrics off.
    assert len(run(scrape, SNIFFER_PORTS="9464")[0]) == 1
    assert len(run(scrape, SNIFFER_METRICS_ADDR="")[0]) == 1


def test_feed_all_ticks_every_block_of_frames_and_stops_when_told() -> None:
    # Many calls' frames, then garbage: every frame is fed (counted), the tick comes after each 4 frames
    # with the count so far, and a tick that says stop ends the walk right there.
    packets = [
        p
        for i in range(6)
        for p in tcp_conversation([get(f"/f/{i}")], [ok(b"{}")], client=("10.0.0.9", 41000 + i))
    ]
    data = [(ts, lt, raw, n) for ts, lt, raw, n in frames(packets)] + [(2e9, 1, b"\x00" * 30, 30)] * 5
    for stop_at in (None, 8):
        sink = ListSink()
        engine = Engine(Config(), sink, Stats())
        ticks: list[int] = []

        def tick(n: int, stop_at: int | None = stop_at, ticks: list[int] = ticks) -> bool:
            ticks.append(n)
            return n == stop_at

        fed = engine.feed_all(iter(data), tick, 4)
        engine.close()
        if stop_at is None:
            assert fed == len(data) and ticks == list(range(4, len(data) + 1, 4))
            assert len(sink.events) == 6
        else:
            assert fed == 8 and ticks == [4, 8]
        engine.sync_stats()
        assert engine.stats["packets"] == fed


class _SignalAt:
    """A capture that sends this process SIGINT once it has given `at` frames."""

    def __init__(self, capture: CaptureFile, at: int) -> None:
        self.capture, self.at = capture, at
        self.size_bytes = self.bytes_read = 0

    def __enter__(self) -> _SignalAt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.capture.close()

    def __iter__(self) -> Iterator[Frame]:
        for i, frame in enumerate(self.capture):
            if i == self.at:
                os.kill(os.getpid(), signal.SIGINT)
            yield frame


def test_replay_stops_at_a_signal_with_the_frames_read_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGINT during a replay: the walk stops at the end of the block of 16,384 frames it is in, and the
    # result says it was interrupted, with the frames read until then.
    one = bytes(tcp_conversation([get("/x")], [ok(b"{}")])[3])
    path = tmp_path / "many.pcap"
    write_pcap(path, [(1_700_000_000.0 + i * 1e-5, one) for i in range(40_000)])
    real_open = replay.open_capture
    monkeypatch.setattr(replay, "open_capture", lambda p: _SignalAt(real_open(p), 100))
    result = replay.replay_file(str(path), Config(), ListSink())
    assert result.interrupted and result.stats["packets"] == 16_384
