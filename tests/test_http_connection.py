"""HttpConnectionParser: both directions of a flow as lists of StreamData/StreamGap, paired into Exchanges."""

from __future__ import annotations

import gc
import sys

import pytest

import reassembly.http_connection as http_connection
from reassembly.events import Direction, Exchange, ExchangeFlag, StreamData, StreamGap
from reassembly.events import GapReason as R
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.stats import Stats

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
CLIENT, SERVER = ("10.0.0.1", 40000), ("10.0.0.2", 80)
F = ExchangeFlag


class Wire:
    """Builds one flow's stream events in capture order; each event is 1 s after the previous one."""

    def __init__(self) -> None:
        self.events: list[StreamData | StreamGap] = []
        self.offsets = {C: 0, S: 0}
        self.ts = 100.0

    def send(self, direction: Direction, data: bytes) -> Wire:
        self.ts += 1
        self.events.append(StreamData(1, direction, self.offsets[direction], data, self.ts))
        self.offsets[direction] += len(data)
        return self

    def c(self, data: bytes) -> Wire:
        return self.send(C, data)

    def s(self, data: bytes) -> Wire:
        return self.send(S, data)

    def gap(self, direction: Direction, length: int | None, reason: R = R.ACKED_UNSEEN) -> Wire:
        self.ts += 1
        self.events.append(StreamGap(1, direction, self.offsets[direction], length, self.ts, reason))
        self.offsets[direction] += length or 0
        return self


def run(
    wire: Wire, *, limits: Limits | None = None, mid_stream: bool = False, close: bool = True
) -> tuple[list[Exchange], Stats, HttpConnectionParser]:
    stats = Stats()
    parser = HttpConnectionParser(1, CLIENT, SERVER, limits or Limits(), stats, mid_stream=mid_stream)
    out: list[Exchange] = []
    for event in wire.events:
        out += parser.feed(event)
    if close:
        out += parser.close(wire.ts + 1)
    return out, stats, parser


def summary(exchanges: list[Exchange]) -> list[tuple[object, ...]]:
    """(request target, response status, sorted flags) per exchange, in emission order."""
    return [
        (
            x.request.target if x.request else None,
            x.response.status if x.response else None,
            sorted(x.flags),
        )
        for x in exchanges
    ]


GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def req(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"


def test_one_exchange_fields_and_emitted_when_the_response_completes() -> None:
    stats = Stats()
    parser = HttpConnectionParser(7, CLIENT, SERVER, Limits(), stats)
    assert parser.feed(StreamData(7, C, 0, GET, 1.0)) == []
    assert parser.feed(StreamData(7, S, 0, OK[:20], 2.0)) == []
    (x,) = parser.feed(StreamData(7, S, 20, OK[20:], 3.0))
    assert (x.flow_id, x.client, x.server, x.index, x.flags) == (7, CLIENT, SERVER, 0, set())
    assert x.request is not None and x.response is not None
    assert (x.request.method, x.request.target, x.request.header(b"host")) == (b"GET", b"/a", b"h")
    assert (x.request.ts_start, x.request.ts_end, x.request.stream_offset) == (1.0, 1.0, 0)
    assert (x.response.status, x.response.body, x.response.ts_start, x.response.ts_end) == (
        200,
        b"ok",
        2.0,
        3.0,
    )
    assert parser.close(4.0) == []
    assert stats["exchanges"] == 1


def test_an_idle_connection_keeps_no_exchange_it_emitted() -> None:
    # Keep-alive connections sit idle between calls, tens of thousands of them on a gateway: what a
    # parser emitted (bodies and all) must belong to the caller alone once the call returned.
    parser = HttpConnectionParser(7, CLIENT, SERVER, Limits(), Stats())
    parser.feed(StreamData(7, C, 0, GET, 1.0))
    out = parser.feed(StreamData(7, S, 0, OK, 2.0))
    (x,) = out
    del out
    assert sys.getrefcount(x) == 2  # `x` and getrefcount's argument
    out = []  # feed_data, as the pipeline's fast path calls it, with the caller's list
    parser.feed_data(True, GET, len(GET), 3.0, out)
    parser.feed_data(False, OK, len(OK), 4.0, out)
    (y,) = out
    del out
    assert y.index == 1 and sys.getrefcount(y) == 2
    out = []  # and close, which emits the request still unanswered
    parser.feed_data(True, GET, 2 * len(GET), 5.0, out)
    parser.close(6.0, out)
    (z,) = out
    del out
    assert F.UNANSWERED in z.flags and sys.getrefcount(z) == 2


def test_a_closed_connection_is_freed_without_the_cycle_collector() -> None:
    # A parser's readers point back at it. Left linked, every closed or evicted connection is cyclic
    # garbage that waits for a full collection, which the daemon's collector thresholds make rare: a
    # flood of evicted connections then held twice what the budgets allow.
    gc.collect()
    gc.disable()
    try:
        for i in range(50):
            parser = HttpConnectionParser(i, CLIENT, SERVER, Limits(), Stats())
            parser.feed(StreamData(i, C, 0, GET, 1.0))
            parser.feed(StreamData(i, S, 0, OK, 2.0))
            parser.feed(StreamData(i, C, len(GET), GET[:20], 3.0))  # a head left unfinished
            parser.close(4.0)
        del parser
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_pipelined_head_then_get() -> None:
    wire = Wire().c(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n" + req(b"/g"))
    wire.s(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n" + OK)
    out, _, _ = run(wire, close=False)
    assert summary(out) == [(b"/h", 200, []), (b"/g", 200, [])]
    assert (out[0].response.body_size, out[1].response.body) == (0, b"ok")  # type: ignore[union-attr]
    assert [x.index for x in out] == [0, 1]


def test_100_continue_goes_into_interim_of_the_final_response() -> None:
    wire = Wire().c(b"PUT /u HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    wire.s(b"HTTP/1.1 100 Continue\r\n\r\n").c(b"data").s(OK)
    out, _, _ = run(wire, close=False)
    assert summary(out) == [(b"/u", 200, [])]
    assert out[0].request.body == b"data"  # type: ignore[union-attr]
    assert out[0].response.interim == [100]  # type: ignore[union-attr]


def test_two_100s_and_a_103_before_the_final_response() -> None:
    wire = Wire().c(GET).s(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n")
    wire.s(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + OK)
    out, _, _ = run(wire)
    assert summary(out) == [(b"/a", 200, [])]
    assert out[0].response.interim == [100, 100, 103]  # type: ignore[union-attr]


def test_chunked_request_and_response_with_trailers_and_extensions() -> None:
    wire = Wire().c(
        b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;a=b\r\nhi\r\n0\r\nX-R: 1\r\n\r\n"
    )
    wire.s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext\r\nhello\r\n0\r\nX-S: 2\r\n\r\n")
    (x,), _, _ = run(wire, close=False)
    assert (x.request.body, x.request.trailers) == (b"hi", [(b"X-R", b"1")])  # type: ignore[union-attr]
    assert (x.response.body, x.response.trailers) == (b"hello", [(b"X-S", b"2")])  # type: ignore[union-attr]


def test_close_delimited_http10_response_ends_at_close_complete() -> None:
    wire = Wire().c(b"GET /old HTTP/1.0\r\n\r\n").s(b"HTTP/1.0 200 OK\r\n\r\npart one,").s(b" part two")
    out, _, parser = run(wire, close=False)
    assert out == []
    (x,) = parser.close(200.0)
    assert (x.response.body, x.response.complete, x.flags) == (b"part one, part two", True, set())  # type: ignore[union-attr]
    assert x.response.ts_end == wire.ts  # type: ignore[union-attr]  # the last byte, not the close


@pytest.mark.parametrize("status", [204, 304])
def test_204_304_with_content_length_have_no_body(status: int) -> None:
    wire = Wire().c(GET + req(b"/b")).s(b"HTTP/1.1 %d X\r\nContent-Length: 50\r\n\r\n" % status + OK)
    out, _, _ = run(wire)
    assert summary(out) == [(b"/a", status, []), (b"/b", 200, [])]


def test_connect_then_tunnel_bytes() -> None:
    tls = bytes.fromhex("16030100a5010000a10303") + bytes(range(256))
    wire = Wire().c(b"CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n" + tls)
    wire.s(b"HTTP/1.1 200 Connection Established\r\n\r\n" + tls[::-1])
    out, stats, parser = run(wire, close=False)
    assert summary(out) == [(b"api.example.com:443", 200, [F.TUNNEL])]
    assert parser.is_dead
    assert parser.feed(StreamData(1, C, 10_000, tls, 500.0)) == []
    assert (stats["flows_not_http"], stats["http_desync"]) == (0, 0)


def test_connect_refused_then_the_client_continues_with_http() -> None:
    wire = Wire().c(b"CONNECT x:443 HTTP/1.1\r\n\r\n" + req(b"/next"))
    wire.s(b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n" + OK)
    out, _, parser = run(wire, close=False)
    assert summary(out) == [(b"x:443", 407, []), (b"/next", 200, [])]
    assert not parser.is_dead


def test_101_upgrade_then_websocket_bytes() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    upgrade = req(b"/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: k\r\n")
    wire = Wire().c(upgrade + frame)
    wire.s(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + frame)
    out, stats, parser = run(wire)
    assert summary(out) == [(b"/ws", 101, [F.TUNNEL])]
    assert parser.is_dead
    assert stats["http_desync"] == 0


def test_upgrade_declined_resumes_the_request_side() -> None:
    wire = Wire().c(req(b"/ws", b"Upgrade: h2c\r\n") + req(b"/b")).s(OK + OK)
    out, _, _ = run(wire)
    assert summary(out) == [(b"/ws", 200, []), (b"/b", 200, [])]


def test_gap_in_a_content_length_body_keeps_the_exchange_flagged() -> None:
    wire = Wire().c(b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nab").gap(C, 5).c(b"xyz")
    wire.s(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n12").gap(S, 2).s(b"56")
    (x,), _, _ = run(wire)
    assert x.flags == {F.REQUEST_GAP, F.RESPONSE_GAP}
    assert (x.request.body, x.request.body_size, x.request.complete) == (b"abxyz", 10, True)  # type: ignore[union-attr]
    assert (x.response.body, x.response.body_size) == (b"1256", 6)  # type: ignore[union-attr]


def test_gap_in_request_headers_then_resync_on_the_next_request() -> None:
    wire = Wire().c(b"GET /lost HTTP/1.1\r\nHost: h\r\nCookie: a").gap(C, 100).c(b"bc\r\n\r\n")
    wire.s(OK).c(req(b"/b")).s(OK)
    out, stats, _ = run(wire)
    # The gap may have hidden more requests, so the placeholder's pairing is a guess.
    assert summary(out) == [
        (None, 200, [F.ORPHAN_RESPONSE, F.PAIRING_GUESSED, F.REQUEST_INCOMPLETE]),
        (b"/b", 200, []),
    ]
    assert stats["http_resync"] == 1


def test_gap_in_chunked_framing_cuts_the_response() -> None:
    wire = Wire().c(GET + req(b"/b")).s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    wire.gap(S, 9).s(b"\r\n" + OK)
    out, _, _ = run(wire)
    # 9 lost bytes could have held a whole response for /b: its pairing is flagged as a guess.
    assert summary(out) == [(b"/a", 200, [F.RESPONSE_INCOMPLETE]), (b"/b", 200, [F.PAIRING_GUESSED])]
    assert out[0].response.body == b"abc"  # type: ignore[union-attr]


def test_orphan_response() -> None:
    out, stats, _ = run(Wire().s(OK))
    assert summary(out) == [(None, 200, [F.ORPHAN_RESPONSE])]
    assert stats["http_orphan_responses"] == 1


def test_close_flushes_unanswered_and_incomplete() -> None:
    wire = Wire().c(GET + req(b"/b") + b"POST /c HTTP/1.1\r\nContent-Length: 9\r\n\r\nabc")
    wire.s(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
    out, stats, _ = run(wire)
    assert summary(out) == [
        (b"/a", 200, [F.RESPONSE_INCOMPLETE]),
        (b"/b", None, [F.UNANSWERED]),
        (b"/c", None, [F.REQUEST_INCOMPLETE, F.UNANSWERED]),
    ]
    assert stats["http_unanswered"] == 2


def test_response_head_cut_at_close() -> None:
    out, _, _ = run(Wire().c(GET).s(b"HTTP/1.1 200 OK\r\nContent-Le"))
    assert summary(out) == [(b"/a", None, [F.RESPONSE_INCOMPLETE, F.UNANSWERED])]


def test_pending_fifo_is_bounded() -> None:
    wire = Wire().c(b"".join(req(b"/%d" % i) for i in range(5)))
    out, stats, _ = run(wire, limits=Limits(max_pending_requests=2), close=False)
    assert summary(out) == [
        (b"/0", None, [F.UNANSWERED]),
        (b"/1", None, [F.UNANSWERED]),
        (b"/2", None, [F.UNANSWERED]),
    ]
    assert stats["evict_http_pending"] == 3


def test_te_and_cl_smuggling_shape_uses_chunked_and_counts() -> None:
    smuggle = (
        b"POST /s HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nGPOST\r\n0\r\n\r\n"
    )
    out, stats, _ = run(Wire().c(smuggle + req(b"/b")).s(OK + OK))
    assert summary(out) == [(b"/s", 200, []), (b"/b", 200, [])]
    assert out[0].request.body == b"GPOST"  # type: ignore[union-attr]
    assert stats["http_te_and_cl"] == 1


def test_conflicting_content_length_is_a_desync_then_resync() -> None:
    bad = b"POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc"
    wire = Wire().c(bad + req(b"/b")).s(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" + OK)
    out, stats, _ = run(wire)
    assert summary(out) == [(b"/x", 400, [F.REQUEST_INCOMPLETE]), (b"/b", 200, [])]
    assert stats["http_desync"] == 1


def test_huge_chunk_size_counts_a_desync() -> None:
    wire = Wire().c(GET).s(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc")
    out, stats, _ = run(wire)
    assert summary(out) == [(b"/a", 200, [F.RESPONSE_INCOMPLETE])]
    assert stats["http_desync"] == 1


def test_one_megabyte_header_line_is_dropped_within_bounds() -> None:
    big = b"GET /big HTTP/1.1\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    wire = Wire()
    for i in range(0, len(big), 65536):
        wire.c(big[i : i + 65536])
    wire.c(req(b"/b")).s(b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n" + OK)
    out, stats, _ = run(wire, limits=Limits(max_header_bytes=8192), close=False)
    assert summary(out) == [(None, 431, [F.ORPHAN_RESPONSE, F.REQUEST_INCOMPLETE]), (b"/b", 200, [])]
    assert stats["cap_header_bytes"] == 1


@pytest.mark.parametrize(
    "first",
    [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", bytes.fromhex("160301020001") + bytes(300), b"\x00\xff" * 40],
)
def test_not_http_kills_the_flow(first: bytes) -> None:
    out, stats, parser = run(Wire().c(first).s(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"))
    assert (out, parser.is_dead, stats["flows_not_http"]) == ([], True, 1)


def test_server_speaking_first_in_another_protocol_kills_the_flow() -> None:
    _, stats, parser = run(Wire().s(b"220 mail.example.com ESMTP Postfix\r\n"), close=False)
    assert parser.is_dead and stats["flows_not_http"] == 1


def test_mid_stream_start_in_a_body_then_resync() -> None:
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    wire.c(b'ail of a JSON body"}').c(req(b"/b"))
    wire.s(b"rest of a response body HTTP/1.1 200 nope\r\n}").s(OK)
    out, _, _ = run(wire, mid_stream=True)
    assert summary(out) == [(b"/b", 200, [F.MIDSTREAM])]
    assert (out[0].client, out[0].server) == (CLIENT, SERVER)
    assert out[0].request.stream_offset == 20  # type: ignore[union-attr]


def test_mid_stream_roles_swapped_when_the_guess_was_wrong() -> None:
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    wire.c(b"xx\r\n" + OK).s(req(b"/r")).c(OK)  # the "client" side carries responses
    out, stats, _ = run(wire, mid_stream=True)
    assert summary(out) == [
        (None, 200, [F.MIDSTREAM, F.ORPHAN_RESPONSE]),
        (b"/r", 200, [F.MIDSTREAM]),
    ]
    assert (out[1].client, out[1].server) == (SERVER, CLIENT)
    assert stats["http_roles_swapped"] == 1


def test_lost_request_on_a_non_pipelined_connection_realigns() -> None:
    wire = Wire().c(req(b"/1")).s(OK).gap(C, len(req(b"/2"))).s(OK).c(req(b"/3")).s(OK)
    out, _, _ = run(wire)
    assert summary(out) == [
        (b"/1", 200, []),
        (None, 200, [F.ORPHAN_RESPONSE]),
        (b"/3", 200, [F.PAIRING_GUESSED]),
    ]


def test_lost_response_on_a_non_pipelined_connection_realigns() -> None:
    wire = Wire().c(req(b"/1")).gap(S, len(OK)).c(req(b"/2")).s(OK).c(req(b"/3")).s(OK)
    out, _, _ = run(wire)
    # /1 and /2 both wait when a response comes: the newest wins on a connection that never pipelined,
    # and once nothing waits the pairing is trusted again.
    assert summary(out) == [
        (b"/1", None, [F.UNANSWERED]),
        (b"/2", 200, [F.PAIRING_GUESSED]),
        (b"/3", 200, []),
    ]


def test_lost_response_on_a_pipelined_connection_keeps_fifo() -> None:
    # Seen pipelining before the loss: the next response is taken to answer the oldest waiting request.
    wire = Wire().c(req(b"/1") + req(b"/2") + req(b"/3")).s(OK).gap(S, 5).s(b"\r\n" + OK)
    out, _, _ = run(wire)
    assert summary(out) == [
        (b"/1", 200, []),
        (b"/2", 200, [F.PAIRING_GUESSED]),
        (b"/3", None, [F.UNANSWERED]),
    ]


def test_internal_error_is_counted_and_the_direction_resyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(*args: object) -> object:
        calls.append(args)
        raise ZeroDivisionError("bug")

    stats = Stats()
    parser = HttpConnectionParser(1, CLIENT, SERVER, Limits(), stats)
    monkeypatch.setattr(http_connection, "body_framing", broken)
    assert parser.feed(StreamData(1, C, 0, GET, 1.0)) == []
    monkeypatch.undo()
    assert calls and stats["http_desync"] == 1
    parser.feed(StreamData(1, C, len(GET), req(b"/b"), 2.0))
    out = parser.feed(StreamData(1, S, 0, OK, 3.0))
    # The head of /a was read before the error; after it FIFO order is not trusted (realign).
    assert summary(out) == [
        (b"/a", None, [F.REQUEST_INCOMPLETE, F.UNANSWERED]),
        (b"/b", 200, [F.PAIRING_GUESSED]),
    ]


def test_feed_after_close_is_misuse() -> None:
    parser = HttpConnectionParser(1, CLIENT, SERVER, Limits(), Stats())
    assert parser.close(1.0) == []
    with pytest.raises(RuntimeError):
        parser.feed(StreamData(1, C, 0, GET, 1.0))
    assert parser.close(2.0) == []


def test_gap_events_that_overlap_or_skip_are_reconciled_with_the_stream() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"
    events = [
        StreamData(1, C, 0, GET, 1.0),
        StreamData(1, S, 0, head, 2.0),
        StreamGap(1, S, len(head) - 2, 3, 3.0, R.TIMEOUT),  # overlaps "ab": only 1 byte really lost
        StreamGap(1, S, len(head) + 1, 0, 3.0, R.TIMEOUT),  # empty: nothing lost
        StreamData(1, S, len(head) + 4, b"efgh", 4.0),  # 3 more bytes skipped without a gap event
    ]
    parser = HttpConnectionParser(1, CLIENT, SERVER, Limits(), Stats())
    out = [x for e in events for x in parser.feed(e)]
    assert summary(out) == [(b"/a", 200, [F.RESPONSE_GAP])]
    assert (out[0].response.body, out[0].response.body_size) == (b"abefgh", 10)  # type: ignore[union-attr]


def test_a_flow_never_proven_http_is_given_up_after_a_budget() -> None:
    noise = bytes(range(256)) * 256  # 64 KiB without a start line
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    for _ in range(http_connection.UNPROVEN_BYTES_LIMIT // len(noise) + 1):
        wire.s(noise)
    out, stats, parser = run(wire, mid_stream=True, close=False)
    assert (out, parser.is_dead, stats["flows_not_http"]) == ([], True, 1)


def test_a_long_mid_stream_body_within_the_budget_is_sat_out() -> None:
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    for _ in range(32):
        wire.s(b"x" * 65536)  # 2 MiB of the body of a download already under way
    wire.c(GET).s(OK)
    out, _, parser = run(wire, mid_stream=True)
    assert summary(out) == [(b"/a", 200, [F.MIDSTREAM])]
    assert not parser.is_dead


def test_picked_up_flow_pairs_a_pipelined_batch_fifo() -> None:
    # Not a loss: a later HEAD + GET batch pairs in order (a HEAD answer has no body to misread).
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    wire.s(b"tail of an old body").c(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n" + req(b"/g") + req(b"/z"))
    wire.s(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n").s(OK).s(OK)
    out, stats, _ = run(wire, mid_stream=True)
    assert summary(out) == [
        (b"/h", 200, [F.MIDSTREAM]),
        (b"/g", 200, [F.MIDSTREAM]),
        (b"/z", 200, [F.MIDSTREAM]),
    ]
    assert stats["http_desync"] == 0


def test_picked_up_flow_response_to_a_request_sent_before_the_capture_is_an_orphan() -> None:
    wire = Wire().gap(C, None, R.MIDSTREAM).gap(S, None, R.MIDSTREAM)
    wire.s(OK).c(req(b"/seen")).s(OK)
    out, _, _ = run(wire, mid_stream=True)
    assert summary(out) == [(None, 200, [F.MIDSTREAM, F.ORPHAN_RESPONSE]), (b"/seen", 200, [F.MIDSTREAM])]
