"""`Pipeline.feed`'s fused fast path gives exactly what the stage-by-stage path gives.

The reference is the same pipeline with the fast path switched off, so every frame goes Decoder ->
FlowTable.feed -> routing. Both are fed the same frames: real captures (the public corpus, the Kong demo)
and, by Hypothesis, the Kong demo's frames with some dropped, duplicated or swapped (loss, retransmission,
reordering: the cases where the fast path must step aside). Exchanges and every counter must be equal,
and the fast path must actually have carried frames, or the comparison would prove nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import frames, tcp_conversation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import CookedLinux

from reassembly.events import Direction, Exchange
from reassembly.flow_table import FlowEntry
from reassembly.pipeline import Pipeline
from sniffer.capture.pcapfile import open_capture

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = Path(__file__).resolve().parents[2] / "shared" / "pcaps" / "public"
KONG_DEMO = ROOT / "pcaps" / "kong-demo.pcap"

Frame = tuple[float, int, bytes, int | None]


class CountingPipeline(Pipeline):
    """The pipeline as shipped, counting the frames its fast path carried."""

    __slots__ = ("fast_frames",)

    def __init__(self) -> None:
        super().__init__()
        self.fast_frames = 0

    def _fast(self, ts: float, entry: FlowEntry, *args: object) -> bool:  # type: ignore[override]
        done = super()._fast(ts, entry, *args)  # type: ignore[arg-type]
        self.fast_frames += done
        return done


class StageByStage(Pipeline):
    """The reference: every frame through Decoder, FlowTable.feed and the routing."""

    __slots__ = ()

    def _fast(self, *args: object) -> bool:  # type: ignore[override]
        return False


def _frames(path: Path) -> list[Frame]:
    with open_capture(path) as cap:
        return list(cap)


def _run(pipeline: Pipeline, frames: list[Frame]) -> tuple[list[Exchange], dict[str, int]]:
    exchanges: list[Exchange] = []
    for ts, linktype, frame, wire_len in frames:
        exchanges.extend(pipeline.feed(ts, linktype, frame, wire_len))
    exchanges.extend(pipeline.close())
    return exchanges, {k: v for k, v in pipeline.stats.items() if v}


def _captures() -> list[Path]:
    found = sorted(PUBLIC.glob("*.pcap*")) if PUBLIC.is_dir() else []
    return [*found, KONG_DEMO]


@pytest.mark.parametrize("path", _captures(), ids=lambda p: p.name)
def test_real_captures_same_as_stage_by_stage(path: Path) -> None:
    frames = _frames(path)
    fast = CountingPipeline()
    assert _run(fast, frames) == _run(StageByStage(), frames)


def test_fast_path_carries_half_the_frames_of_the_kong_demo() -> None:
    fast = CountingPipeline()
    frames = _frames(KONG_DEMO)
    _run(fast, frames)
    # The demo's 27 connections are short: SYNs, FINs and each direction's first data segment (before
    # the flow is open) take the general path, about half of its 501 frames; the rest is in-order data
    # and ACKs. (On keep-alive traffic, bench/core.py's capture, it is 99.9% of the frames.)
    assert fast.fast_frames > len(frames) * 0.45


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("link", ["ethernet", "sll", "raw"])
def test_each_link_type_and_ip_version_takes_the_fast_path(link: str, ipv6: bool) -> None:
    requests = [b"GET /a%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)]
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"] * 5
    packets = tcp_conversation(requests, responses, ipv6=ipv6)
    if link == "sll":
        packets = [CookedLinux(proto=0x86DD if ipv6 else 0x0800) / p.payload for p in packets]
    elif link == "raw":
        packets = [p.payload for p in packets]
    for old, new in zip(tcp_conversation(requests, responses, ipv6=ipv6), packets, strict=True):
        new.time = old.time
    got = frames(packets)
    fast = CountingPipeline()
    result = _run(fast, got)
    assert result == _run(StageByStage(), got)
    assert len(result[0]) == 5
    # Every request and response after the first of each direction, and the ACKs between them.
    assert fast.fast_frames >= 8


@pytest.mark.parametrize(
    ("isn_client", "isn_server"),
    [(0x9000_0000, 0xF000_0000), (2**32 - 40, 2**32 - 70)],
    ids=["top-bit-set", "wrapping"],
)
def test_sequence_numbers_past_2_to_the_31_take_the_fast_path(isn_client: int, isn_server: int) -> None:
    # The fast path reads sequence numbers as signed 32-bit words: past 2^31 (and through the wrap at 2^32)
    # they must still match the expected ones, or every frame falls back to the general path.
    requests = [b"GET /a%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)]
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"] * 5
    got = frames(tcp_conversation(requests, responses, isn_client=isn_client, isn_server=isn_server))
    fast = CountingPipeline()
    result = _run(fast, got)
    assert result == _run(StageByStage(), got)
    assert len(result[0]) == 5
    assert fast.fast_frames >= 8


_DEMO = _frames(KONG_DEMO)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(st.sampled_from(["drop", "dup", "swap"]), st.integers(0, len(_DEMO) - 2)),
        min_size=1,
        max_size=12,
    )
)
def test_loss_duplicates_reordering_same_as_stage_by_stage(edits: list[tuple[str, int]]) -> None:
    frames = list(_DEMO)
    for op, i in edits:
        i %= len(frames) - 1
        if op == "drop":
            del frames[i]
        elif op == "dup":
            frames.insert(i, frames[i])
        else:
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
    assert _run(CountingPipeline(), frames) == _run(StageByStage(), frames)


def test_link_types_changing_frame_by_frame_as_pcapng_interfaces_may() -> None:
    # One pipeline keeps the last frame's link type: frames whose link types change (a pcapng with
    # interfaces of several kinds), IPv4 and IPv6 connections interleaved, give what the stage-by-stage
    # path gives, and the fast path still carries frames of every kind.
    requests = [b"GET /m%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(6)]
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"] * 6
    v4 = tcp_conversation(requests, responses)
    v6 = tcp_conversation(requests, responses, ipv6=True, client=("fd00::1", 40001), server=("fd00::2", 80))
    mixed = []
    for i, (a, b) in enumerate(zip(v4, v6, strict=True)):
        for j, p in enumerate((a, b)):
            ipv6 = j == 1
            kind = (i + j) % 3
            q = (
                p
                if kind == 0
                else CookedLinux(proto=0x86DD if ipv6 else 0x0800) / p.payload
                if kind == 1
                else p.payload
            )
            q.time = p.time + j * 1e-6
            mixed.append(q)
    got = frames(mixed)
    assert {linktype for _, linktype, _, _ in got} == {1, 113, 101}
    fast = CountingPipeline()
    result = _run(fast, got)
    assert result == _run(StageByStage(), got)
    assert len(result[0]) == 12
    assert fast.fast_frames >= 16


@pytest.mark.parametrize("kind", [Pipeline, StageByStage], ids=["fast path", "stage by stage"])
def test_an_idle_connection_keeps_no_payload_once_all_is_acknowledged(kind: type[Pipeline]) -> None:
    # Thousands of idle keep-alive connections on a gateway: the last segment of each direction is only
    # kept (to count a retransmission with other bytes) until the peer acknowledges it.
    get = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    packets = tcp_conversation([get, get], [ok, ok], close=False)
    last_client = [p for p in packets if p[TCP].sport == 40000][-1]
    last_server = packets[-1]
    ack = last_client.copy()
    ack[TCP].remove_payload()
    ack[TCP].seq = last_client[TCP].seq + len(last_client[TCP].payload)
    ack[TCP].ack = last_server[TCP].seq + len(last_server[TCP].payload)
    ack[TCP].flags = "A"
    del ack[IP].len, ack[IP].chksum, ack[TCP].chksum
    ack.time = last_server.time + 0.001
    pipeline = kind()
    for ts, linktype, frame, wire_len in frames(packets):
        pipeline.feed(ts, linktype, frame, wire_len)
    ((_flow, c2s, s2c),) = {id(e[0]): e for e in pipeline._raw_index.values()}.values()
    halves = {c2s.direction: c2s, s2c.direction: s2c}
    assert halves[Direction.TO_SERVER].recent is None  # the server's response acknowledged the request
    assert halves[Direction.TO_CLIENT].recent == ok  # the response: not acknowledged yet
    ((ts, linktype, frame, wire_len),) = frames([ack])
    assert pipeline.feed(ts, linktype, frame, wire_len) == []
    assert halves[Direction.TO_CLIENT].recent is None and pipeline.flow_count == 1
