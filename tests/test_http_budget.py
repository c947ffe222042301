"""The HTTP layer's global buffer budget (http_budget) and heads left unfinished when their flow ends.

Several connections share one `HttpBufferPool`: what they hold between feeds (partial heads, bodies
spanning segments) is charged to it, the connection whose growth takes it over its limit sheds what it
holds, every shed is counted, and the pool goes back to zero when the connections close.
"""

from __future__ import annotations

import random

from hostile.attacks import SERVER
from hostile.frames import TcpConn

from reassembly.events import Direction, Exchange, ExchangeFlag, StreamData
from reassembly.http_budget import HttpBufferPool
from reassembly.http_connection import HttpConnectionParser
from reassembly.limits import Limits
from reassembly.pipeline import Pipeline
from reassembly.stats import Stats
from sniffer.config import Config

C, S = Direction.TO_SERVER, Direction.TO_CLIENT
F = ExchangeFlag


class Conn:
    """One connection's parser on a shared pool, fed one direction's bytes at a time."""

    def __init__(self, flow_id: int, pool: HttpBufferPool, stats: Stats, limits: Limits) -> None:
        self.parser = HttpConnectionParser(
            flow_id, ("10.0.0.1", 40000 + flow_id), ("10.0.0.2", 80), limits, stats, pool=pool
        )
        self.flow_id = flow_id
        self.offsets = {C: 0, S: 0}
        self.out: list[Exchange] = []

    def send(self, direction: Direction, data: bytes, ts: float = 1.0) -> Conn:
        self.parser.feed(StreamData(self.flow_id, direction, self.offsets[direction], data, ts), self.out)
        self.offsets[direction] += len(data)
        return self

    def held(self) -> int:
        """What this connection should have charged: its readers' buffers and its waiting request bodies."""
        p = self.parser
        entries = [*p._waiting, p._resp_entry]
        pending = sum(e.held for e in entries if e is not None)
        return p._from_client.buffered_bytes + p._from_server.buffered_bytes + pending


def setup(limit: int, n: int = 2) -> tuple[HttpBufferPool, Stats, list[Conn]]:
    pool, stats = HttpBufferPool(limit), Stats()
    limits = Limits(max_http_buffer_bytes=limit)
    return pool, stats, [Conn(i + 1, pool, stats, limits) for i in range(n)]


def head(target: bytes, pad: int) -> bytes:
    """A request head of at least `pad` bytes of header lines, without its final empty line."""
    return b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n" + b"X-Pad: " + b"p" * pad + b"\r\n"


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_the_connection_that_takes_the_pool_over_drops_its_partial_head_and_resyncs() -> None:
    pool, stats, (a, b) = setup(1000)
    a.send(C, head(b"/a", 700))
    assert pool.used == a.held() > 700
    b.send(C, head(b"/b", 300))
    # B asked for more than was left: its partial head is dropped, A's is untouched.
    assert stats["cap_http_buffer_head"] == 1
    assert stats["drop_http_buffer_head_bytes"] == len(head(b"/b", 300))
    assert b.held() == 0 and pool.used == a.held()
    # B's head ends later (its rest is scanned over), its response is an orphan of a lost request, and
    # the next request on B is read whole.
    b.send(C, b"X-More: 1\r\n\r\n").send(S, OK)
    b.send(C, b"GET /b2 HTTP/1.1\r\nHost: h\r\n\r\n").send(S, OK)
    assert [(x.request and x.request.target, sorted(x.flags)) for x in b.out] == [
        (None, [F.ORPHAN_RESPONSE, F.REQUEST_INCOMPLETE]),
        (b"/b2", []),
    ]
    a.send(C, b"\r\n").send(S, OK)
    assert [(x.request and x.request.target, sorted(x.flags)) for x in a.out] == [(b"/a", [])]
    assert pool.used == 0
    assert stats["drop_http_unfinished_head"] == 0


def test_a_body_spanning_segments_stops_being_kept_when_the_pool_is_full() -> None:
    pool, stats, (a, b) = setup(1000)
    a.send(C, head(b"/a", 900))
    body = bytes(range(256)) * 2
    b.send(C, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:200])
    assert stats["cap_http_buffer_body"] == 1 and stats["drop_http_buffer_body_bytes"] == 200
    assert b.held() == 0
    b.send(C, body[200:]).send(S, OK)
    (x,) = b.out
    assert x.request is not None and x.request.target == b"/up"
    # The size is still known; the bytes are not kept and the exchange says so.
    assert x.request.body_size == len(body) and x.request.body_truncated
    assert sorted(x.flags) == [F.REQUEST_BODY_TRUNCATED]
    assert stats["truncated_http_body"] == 1
    # The next body on the same connection is kept whole again once there is room.
    a.send(C, b"\r\n").send(S, OK)
    assert pool.used == 0
    b.send(C, b"POST /up2 HTTP/1.1\r\nContent-Length: 512\r\n\r\n" + body[:100]).send(C, body[100:])
    b.send(S, OK)
    assert b.out[-1].request is not None and b.out[-1].request.body == body
    assert not b.out[-1].flags


def test_a_resync_scan_held_over_the_budget_is_dropped_and_counted() -> None:
    pool, stats, (a, b) = setup(600)
    a.send(C, head(b"/a", 500))
    # B is scanning for a start line after garbage (desync); the unterminated tail it keeps is shed.
    b.send(C, b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").send(C, b"z" * 300)
    assert stats["http_desync"] == 1
    assert stats["cap_http_buffer_other"] == 1 and stats["drop_http_buffer_other_bytes"] > 0
    assert b.held() == 0 and pool.used == a.held()


def test_unfinished_heads_at_the_end_of_a_flow_are_counted_not_emitted() -> None:
    pool, stats, (a, b) = setup(1 << 20)
    a.send(C, b"GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow")
    b.send(C, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n").send(S, b"HTTP/1.1 200 OK\r\nContent-Le")
    a.parser.close(2.0, a.out)
    b.parser.close(2.0, b.out)
    # A: no event for a request the server never fully received. B: the request goes out, its
    # response cut short.
    assert a.out == []
    assert [(x.request and x.request.target, sorted(x.flags)) for x in b.out] == [
        (b"/b", [F.RESPONSE_INCOMPLETE, F.UNANSWERED])
    ]
    assert stats["drop_http_unfinished_head"] == 2
    assert "drop_http_unfinished_head" in stats.losses()
    assert pool.used == 0


def test_the_pool_always_equals_what_the_readers_hold() -> None:
    """Random messages cut at random points over many connections: the pool's count is exact after every
    feed, never negative, within its limit plus one segment, and zero once every connection closed."""
    rnd = random.Random(7)
    limit = 1500
    pool, stats, conns = setup(limit, 12)
    for step in range(3000):
        conn = rnd.choice(conns)
        kind = rnd.random()
        if kind < 0.5:
            msg = head(b"/r%d" % step, rnd.randrange(0, 1500)) + b"\r\n"
        elif kind < 0.8:
            body = rnd.randbytes(rnd.randrange(0, 3000))
            msg = b"POST /p HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        else:
            msg = OK
        direction = S if msg is OK else C
        cut = sorted(rnd.randrange(len(msg) + 1) for _ in range(rnd.randrange(1, 4)))
        for lo, hi in zip([0, *cut], [*cut, len(msg)], strict=True):
            if lo < hi:
                conn.send(direction, msg[lo:hi])
                assert pool.used == sum(c.held() for c in conns)
                assert 0 <= pool.used <= limit + 3100
    assert stats["cap_http_buffer_head"] > 0 and stats["cap_http_buffer_body"] > 0
    assert stats["cap_http_buffer_pending"] > 0
    for conn in conns:
        conn.parser.close(9.0, conn.out)
    assert pool.used == 0


def test_the_pipeline_shares_one_pool_and_empties_it_at_close() -> None:
    limits = Limits(max_http_buffer_bytes=8000)
    pipe = Pipeline(limits)
    ts = 1.0
    conns = [TcpConn((f"172.16.0.{i}", 40000 + i), SERVER, i * 1000, 5000) for i in range(10)]
    for conn in conns:
        for frame in conn.handshake() + conn.send(True, head(b"/h", 1400)):
            pipe.feed(ts, 1, frame)
    # Ten heads of ~1.4 KB against 8000 bytes: the first five fit, the rest were shed as they came.
    assert 0 < pipe.http_buffer_bytes <= 8000
    assert pipe.stats["cap_http_buffer_head"] == 5
    pipe.close()
    assert pipe.http_buffer_bytes == 0
    assert pipe.stats["drop_http_unfinished_head"] == 5


def test_the_http_budget_defaults_to_the_global_buffer_budget() -> None:
    assert Config.load(None, {"SNIFFER_MAX_BUFFER_BYTES": "5000"}).limits().max_http_buffer_bytes == 5000
    env = {"SNIFFER_MAX_BUFFER_BYTES": "5000", "SNIFFER_MAX_HTTP_BUFFER_BYTES": "7000"}
    assert Config.load(None, env).limits().max_http_buffer_bytes == 7000
    assert Limits().max_http_buffer_bytes == Limits().max_buffer_bytes


def test_request_bodies_awaiting_their_responses_are_charged_until_emitted() -> None:
    pool, stats, (a, b) = setup(1000)
    body = b"x" * 400
    post = b"POST /p HTTP/1.1\r\nContent-Length: 400\r\n\r\n" + body
    # Two pipelined requests on A wait with their bodies; a third would take the pool over: it waits
    # without its body (its size still known), flagged, counted.
    a.send(C, post).send(C, post)
    assert pool.used == a.held() == 800
    a.send(C, post)
    assert stats["cap_http_buffer_pending"] == 1 and stats["drop_http_buffer_body_bytes"] == 400
    assert pool.used == 800
    a.send(S, OK)
    assert pool.used == 400
    a.send(S, OK).send(S, OK)
    assert pool.used == 0
    assert [(x.request and x.request.body_size, sorted(x.flags)) for x in a.out] == [
        (400, []),
        (400, []),
        (400, [F.REQUEST_BODY_TRUNCATED]),
    ]
    assert [x.request and x.request.body for x in a.out] == [body, body, b""]
    # Bodies still waiting when the flow ends go out unanswered and give their charge back.
    b.send(C, post)
    assert pool.used == 400
    b.parser.close(3.0, b.out)
    assert pool.used == 0 and [sorted(x.flags) for x in b.out] == [[F.UNANSWERED]]
