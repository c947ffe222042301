"""HttpConnectionParser properties (Hypothesis): any split gives the same result; garbage never raises."""

from __future__ import annotations

import itertools
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reassembly.events import Direction, Exchange, GapReason, StreamData, StreamGap, replace
from reassembly.events import ExchangeFlag as F
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.stats import Stats

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
# HTTP_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps this file a few seconds.
SETTINGS = settings(
    max_examples=int(os.environ.get("HTTP_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

tokens = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12).map(str.encode)
values = st.binary(max_size=30).map(lambda b: bytes(c for c in b if 0x21 <= c < 0x7F))
bodies = st.binary(max_size=300)
header_lists = st.lists(st.tuples(tokens.map(lambda t: b"X-" + t), values), max_size=4)


def chunked(body: bytes, cuts: list[int], trailers: list[tuple[bytes, bytes]]) -> bytes:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    out = b"".join(
        b"%x;e=1\r\n" % (b - a) + body[a:b] + b"\r\n" for a, b in itertools.pairwise(points) if b > a
    )
    return out + b"0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in trailers) + b"\r\n"


@st.composite
def message(draw: st.DrawFn, start_line: bytes, *, may_have_body: bool = True) -> bytes:
    headers = draw(header_lists)
    head = start_line + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
    if not may_have_body:
        return head + b"\r\n"
    body = draw(bodies)
    if draw(st.booleans()):
        return head + b"Content-Length: %d\r\n\r\n" % len(body) + body
    cuts = draw(st.lists(st.integers(0, 400), max_size=4))
    return head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(body, cuts, draw(header_lists))


@st.composite
def conversation(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    """(client stream, server stream, end offsets of each request and response)."""
    n = draw(st.integers(1, 5))
    client = server = b""
    ends: list[tuple[int, int]] = []
    for i in range(n):
        method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE"]))
        target = b"/" + draw(tokens)
        if method in (b"POST", b"PUT"):
            client += draw(message(method + b" " + target + b" HTTP/1.1\r\n"))
        else:
            client += draw(message(method + b" " + target + b" HTTP/1.1\r\n", may_have_body=False))
        for _ in range(draw(st.integers(0, 2))):
            server += b"HTTP/1.1 100 Continue\r\n\r\n"
        status = draw(st.sampled_from([200, 201, 204, 304, 404, 500]))
        status_line = b"HTTP/1.1 %d Reason Phrase\r\n" % status
        if status in (204, 304) or method == b"HEAD":
            server += draw(message(status_line, may_have_body=False))
        elif i == n - 1 and draw(st.booleans()):
            server += status_line + b"\r\n" + draw(bodies)  # close-delimited, last only
        else:
            server += draw(message(status_line))
        ends.append((len(client), len(server)))
    return client, server, ends


def cut(data: bytes, points: list[int]) -> list[tuple[int, bytes]]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [(a, data[a:b]) for a, b in itertools.pairwise(marks) if b > a]


def schedule(
    client: bytes,
    server: bytes,
    ends: list[tuple[int, int]],
    c_points: list[int],
    s_points: list[int],
    *,
    pipelined: bool = True,
) -> list[StreamData]:
    """Both streams cut at the given points; a server chunk goes after every request it answers.

    With pipelined=False the cuts also fall at every message end, so the client never sends a request
    before the previous response is complete (what Kong and most clients do).
    """
    if not pipelined:
        c_points = c_points + [c for c, _ in ends]
        s_points = s_points + [s for _, s in ends]
    c_chunks, s_chunks = cut(client, c_points), cut(server, s_points)
    events: list[StreamData] = []
    fed = 0

    def feed_client(upto: int) -> None:
        nonlocal fed
        while c_chunks and fed < upto:
            offset, data = c_chunks.pop(0)
            events.append(StreamData(1, C, offset, data, float(len(events))))
            fed = offset + len(data)

    for offset, data in s_chunks:
        # The last response this chunk touches, and the end of the request it answers.
        last = next(i for i, (_, s_end) in enumerate(ends) if s_end >= offset + len(data))
        feed_client(ends[last][0])
        events.append(StreamData(1, S, offset, data, float(len(events))))
    feed_client(len(client))
    return events


def normalized(exchanges: list[Exchange]) -> list[Exchange]:
    """The exchanges with capture times zeroed: chunking decides those, nothing else."""
    out = []
    for x in exchanges:
        req = x.request and replace(x.request, ts_start=0.0, ts_end=0.0)
        resp = x.response and replace(x.response, ts_start=0.0, ts_end=0.0)
        out.append(replace(x, request=req, response=resp))
    return out


def in_order(body: bytes, stream: bytes) -> bool:
    """Is body a subsequence of stream (chunk framing may sit between its bytes)?"""
    rest = iter(stream)
    return all(byte in rest for byte in body)


def parse(
    events: list[StreamData | StreamGap], limits: Limits, *, mid_stream: bool = False
) -> list[Exchange]:
    parser = HttpConnectionParser(
        1, ("10.0.0.1", 1), ("10.0.0.2", 80), limits, Stats(), mid_stream=mid_stream
    )
    out: list[Exchange] = []
    for event in events:
        out += parser.feed(event)
    return out + parser.close(1e6)


@SETTINGS
@given(
    conversation(),
    st.lists(st.integers(0, 5000), max_size=12),
    st.lists(st.integers(0, 5000), max_size=12),
    st.integers(16, 400),
)
def test_any_split_gives_the_same_exchanges(
    conv: tuple[bytes, bytes, list[tuple[int, int]]], c_points: list[int], s_points: list[int], cap: int
) -> None:
    client, server, ends = conv
    limits = Limits(max_body_bytes=cap)
    whole = parse(schedule(client, server, ends, [], []), limits)
    split = parse(schedule(client, server, ends, c_points, s_points), limits)
    bytewise = parse(
        schedule(client, server, ends, list(range(len(client))), list(range(len(server)))), limits
    )
    assert len(whole) == len(ends)
    assert all(x.flags <= {F.REQUEST_BODY_TRUNCATED, F.RESPONSE_BODY_TRUNCATED} for x in whole)
    assert normalized(split) == normalized(whole)
    assert normalized(bytewise) == normalized(whole)


FRAGMENTS = [
    b"GET / HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"CONNECT a:1 HTTP/1.1\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999999999999999999\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Upgrade: x\r\n",
    b"\r\n",
    b"\n",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffffffffffffffff\r\n",
    b" folded\r\n",
    b"HEAD /h HTTP/1.0\r\n",
]
garbage = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=40)), max_size=12).map(b"".join)


@st.composite
def garbage_events(draw: st.DrawFn) -> list[StreamData | StreamGap]:
    offsets = {C: 0, S: 0}
    events: list[StreamData | StreamGap] = []
    for ts in range(draw(st.integers(0, 12))):
        direction = draw(st.sampled_from([C, S]))
        if draw(st.integers(0, 5)) == 0:
            length = draw(st.one_of(st.none(), st.integers(1, 100)))
            events.append(StreamGap(1, direction, offsets[direction], length, ts, GapReason.TIMEOUT))
            offsets[direction] += length or 0
        else:
            data = draw(garbage)
            events.append(StreamData(1, direction, offsets[direction], data, ts))
            offsets[direction] += len(data)
    return events


@SETTINGS
@given(garbage_events(), st.booleans(), st.integers(1, 3))
def test_arbitrary_bytes_never_raise_and_stay_bounded(
    events: list[StreamData | StreamGap], mid_stream: bool, pending: int
) -> None:
    limits = Limits(max_header_bytes=64, max_body_bytes=16, max_pending_requests=pending)
    stats = Stats()
    parser = HttpConnectionParser(1, ("a", 1), ("b", 2), limits, stats, mid_stream=mid_stream)
    largest = max((len(e.data) for e in events if isinstance(e, StreamData)), default=0)
    for event in events:
        for x in parser.feed(event):
            for msg in (x.request, x.response):
                assert msg is None or len(msg.body) <= 16
        for reader in (parser._from_client, parser._from_server):
            assert reader.buffered_bytes <= 64 + 16 + largest
        assert len(parser._waiting) <= pending
    emitted = parser.close(99.0)
    assert all(x.request is not None or x.response is not None for x in emitted)
    assert len({x.index for x in emitted}) == len(emitted)


@SETTINGS
@given(
    conversation(),
    st.lists(st.integers(0, 5000), max_size=8),
    st.lists(st.integers(0, 5000), max_size=8),
    st.sets(st.integers(0, 20), max_size=4),
    st.booleans(),
)
def test_lost_chunks_never_invent_messages(
    conv: tuple[bytes, bytes, list[tuple[int, int]]],
    c_points: list[int],
    s_points: list[int],
    lost: set[int],
    pipelined: bool,
) -> None:
    """With some chunks replaced by gaps, every message emitted is one that was sent, at its true offset;
    on a connection that does not pipeline, a pair without flags is a true pair."""
    client, server, ends = conv
    events: list[StreamData | StreamGap] = []
    for i, e in enumerate(schedule(client, server, ends, c_points, s_points, pipelined=pipelined)):
        if i in lost:
            events.append(StreamGap(1, e.direction, e.offset, len(e.data), e.ts, GapReason.ACKED_UNSEEN))
        else:
            events.append(e)
    for x in parse(events, Limits()):
        if x.request is not None:
            req = x.request
            assert client[req.stream_offset :].startswith(req.method + b" " + req.target + b" HTTP/1.1\r\n")
            assert req.body_size >= len(req.body)
            if req.complete and not req.gap:
                assert in_order(req.body, client[req.stream_offset :])
        if x.response is not None:
            resp = x.response
            assert server[resp.stream_offset :].startswith(b"HTTP/1.1 %d " % resp.status)
            if resp.complete and not resp.gap:
                assert in_order(resp.body, server[resp.stream_offset :])
        if x.request is not None and x.response is not None and not x.flags and not pipelined:
            # An unflagged pair must be a true pair: the same position in both streams.
            n_req = sum(1 for c_end, _ in ends if c_end <= x.request.stream_offset)
            n_resp = sum(1 for _, s_end in ends if s_end <= x.response.stream_offset)
            assert n_req == n_resp
