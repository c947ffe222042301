"""One direction's message reader, h11 style: each shape read whole, byte-at-a-time and with trailing data."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from reassembly.events import HttpRequest, HttpResponse
from reassembly.http_framing import Framing, body_framing
from reassembly.http_reader import Message, MessageReader, Role, State
from reassembly.limits import Limits
from reassembly.stats import Stats

Piece = bytes | int | None  # bytes fed, a gap of that many bytes, or a gap of unknown length


@dataclass
class Recorder:
    """A reader sink that frames responses as answers to `method` and records every call."""

    method: bytes = b"GET"
    events: list[tuple[object, ...]] = field(default_factory=list)

    def on_head(self, reader: MessageReader, msg: Message) -> Framing:
        self.events.append(("head", msg.stream_offset))
        if isinstance(msg, HttpRequest):
            return body_framing(msg.method, None, msg.headers)
        return body_framing(self.method, msg.status, msg.headers)

    def on_message(self, reader: MessageReader, msg: Message) -> None:
        self.events.append(("message", msg))

    def on_lost(self, reader: MessageReader, started: bool, exact: bool) -> None:
        self.events.append(("lost", started, exact))

    def on_role(self, reader: MessageReader, role: Role) -> None:
        reader.role = role
        self.events.append(("role", role))

    def on_not_http(self, reader: MessageReader) -> None:
        self.events.append(("not_http",))

    @property
    def messages(self) -> list[Message]:
        return [e[1] for e in self.events if e[0] == "message"]  # type: ignore[misc]


def read(
    role: Role,
    pieces: list[Piece],
    *,
    method: bytes = b"GET",
    limits: Limits | None = None,
    close: bool = False,
    mid_stream: bool = False,
    bytewise: bool = False,
) -> tuple[Recorder, MessageReader, Stats]:
    sink = Recorder(method)
    stats = Stats()
    reader = MessageReader(role, limits or Limits(), stats, sink, mid_stream=mid_stream)
    offset = 0
    for piece in pieces:
        if isinstance(piece, bytes):
            parts = [piece[i : i + 1] for i in range(len(piece))] if bytewise else [piece]
            for part in parts:
                reader.feed(part, offset, 1.0)
                offset += len(part)
        else:
            reader.gap(offset, piece)
            offset += piece or 0
    if close:
        reader.close()
    return sink, reader, stats


def read_all_ways(role: Role, data: bytes, **kwargs: object) -> list[Message]:
    """Messages from data fed whole, byte-at-a-time and followed by trailing bytes: all must agree."""
    whole = read(role, [data], **kwargs)[0].messages  # type: ignore[arg-type]
    bytewise = read(role, [data], bytewise=True, **kwargs)[0].messages  # type: ignore[arg-type]
    assert bytewise == whole
    trailing = b"GET /next HTTP/1.1\r\n" if role is Role.REQUEST else b"HTTP/1.1 200 OK\r\n"
    sink, reader, _ = read(role, [data + trailing], **{k: v for k, v in kwargs.items() if k != "close"})  # type: ignore[arg-type]
    if not kwargs.get("close"):
        assert sink.messages == whole
        assert reader.state is State.HEAD  # the trailing bytes wait as the next head
    return whole


def test_request_without_body() -> None:
    (msg,) = read_all_ways(Role.REQUEST, b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Empty:\r\n\r\n")
    assert isinstance(msg, HttpRequest)
    assert (msg.method, msg.target, msg.version) == (b"GET", b"/p?q=1", b"HTTP/1.1")
    assert msg.headers == [(b"Host", b"example.com"), (b"X-Empty", b"")]
    assert (msg.body, msg.body_size, msg.complete, msg.stream_offset) == (b"", 0, True, 0)


def test_request_with_content_length_keeps_case_order_and_strips_ows() -> None:
    data = b"POST /u HTTP/1.1\r\nX-B:  two \t\r\nx-a:one\r\nContent-Length: 11\r\n\r\nhello world"
    (msg,) = read_all_ways(Role.REQUEST, data)
    assert msg.headers == [(b"X-B", b"two"), (b"x-a", b"one"), (b"Content-Length", b"11")]
    assert (msg.body, msg.body_size, msg.body_truncated) == (b"hello world", 11, False)


def test_chunked_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;name=value\r\nWiki\r\n5 ; quoted="a;b"\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n'
        b"0;last\r\nExpires: never\r\nX-Sum:  abc \r\n\r\n"
    )
    (msg,) = read_all_ways(Role.RESPONSE, data)
    assert isinstance(msg, HttpResponse)
    assert (msg.status, msg.reason) == (200, b"OK")
    assert msg.body == b"Wikipedia in\r\n\r\nchunks."
    assert msg.body_size == len(msg.body)
    assert msg.trailers == [(b"Expires", b"never"), (b"X-Sum", b"abc")]


def test_chunked_without_trailers_then_next_message_offset() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    sink, _, _ = read(Role.RESPONSE, [data + b"HTTP/1.1 204 No Content\r\n\r\n"])
    first, second = sink.messages
    assert (first.body, first.trailers) == (b"abc", [])
    assert (second.status, second.stream_offset) == (204, len(data))


def test_close_delimited_http10_response() -> None:
    data = b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n<html>until the end</html>"
    (msg,) = read_all_ways(Role.RESPONSE, data, close=True)
    assert (msg.version, msg.body, msg.complete) == (b"HTTP/1.0", b"<html>until the end</html>", True)
    sink, _, _ = read(Role.RESPONSE, [data])
    assert sink.messages == []  # not finished before the flow ends


def test_head_response_has_no_body_even_with_content_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
    (msg,) = read_all_ways(Role.RESPONSE, data, method=b"HEAD")
    assert (msg.body_size, msg.complete) == (0, True)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_ignore_content_length(status: int) -> None:
    data = b"HTTP/1.1 %d X\r\nContent-Length: 3\r\n\r\n" % status
    (msg,) = read_all_ways(Role.RESPONSE, data)
    assert (msg.status, msg.body_size) == (status, 0)


def test_lenient_line_endings_folding_and_invalid_names() -> None:
    data = b"\r\n\r\nGET / HTTP/1.0\nHost: a\nX-Fold: one\n  two\nBad Name: x\n"
    data += b"Transfer-Encoding : chunked\nnocolon\n\n"
    (msg,) = read_all_ways(Role.REQUEST, data)
    assert msg.version == b"HTTP/1.0"
    assert msg.headers == [(b"Host", b"a"), (b"X-Fold", b"one two")]
    assert msg.stream_offset == 4  # the leading empty lines are skipped


def test_body_cap_counts_every_byte_but_keeps_only_the_cap() -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 25\r\n\r\n" + b"x" * 25
    (msg,) = read_all_ways(Role.REQUEST, data, limits=Limits(max_body_bytes=10))
    assert (msg.body, msg.body_size, msg.body_truncated) == (b"x" * 10, 25, True)


def test_gap_inside_content_length_body_is_kept_and_flagged() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    sink, _, _ = read(Role.RESPONSE, [head + b"abc", 4, b"xyz", b"HTTP/1.1 204 N\r\n\r\n"])
    msg, nxt = sink.messages
    assert (msg.body, msg.body_size, msg.gap, msg.complete) == (b"abcxyz", 10, True, True)
    assert (nxt.status, nxt.stream_offset) == (204, len(head) + 10)
    assert not any(e[0] == "lost" for e in sink.events)


def test_gap_reaching_past_the_body_ends_it_and_resyncs() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
    sink, _, stats = read(
        Role.RESPONSE, [head + b"abc", 20, b"junk\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"]
    )
    msg, nxt = sink.messages
    assert (msg.body_size, msg.gap, msg.complete, msg.body_truncated) == (10, True, True, False)
    assert ("lost", False, False) in sink.events
    assert nxt.status == 201
    assert stats["http_resync"] == 1


def test_gap_inside_a_chunk_is_kept() -> None:
    data = [b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\na\r\n01", 5, b"789\r\n0\r\n\r\n"]
    (msg,) = read(Role.REQUEST, data)[0].messages
    assert (msg.body, msg.body_size, msg.gap, msg.complete) == (b"01789", 10, True, True)


def test_gap_in_chunk_framing_ends_the_message_incomplete() -> None:
    data = [
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        7,
        b"GET /n HTTP/1.1\r\n\r\n",
    ]
    sink, _, _ = read(Role.REQUEST, data)
    cut, nxt = sink.messages
    assert (cut.body, cut.complete, cut.gap) == (b"abc", False, False)
    assert ("lost", False, False) in sink.events
    assert nxt.target == b"/n"


def test_gap_in_headers_reports_a_lost_message_and_resyncs_on_the_next_request() -> None:
    pieces: list[Piece] = [
        b"GET /a HTTP/1.1\r\nHost: x\r\nCookie: abc",
        30,
        b"def\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    ]
    sink, _, stats = read(Role.REQUEST, pieces)
    assert ("lost", True, False) in sink.events
    (msg,) = sink.messages
    assert (msg.method, msg.body, msg.stream_offset) == (b"POST", b"hi", len(pieces[0]) + 30 + 7)  # type: ignore[arg-type]
    assert stats["http_resync"] == 1


def test_close_delimited_body_continues_over_a_gap() -> None:
    sink, _, _ = read(Role.RESPONSE, [b"HTTP/1.0 200 OK\r\n\r\nab", 3, b"cd"], close=True)
    (msg,) = sink.messages
    assert (msg.body, msg.body_size, msg.gap, msg.complete) == (b"abcd", 7, True, True)


def test_close_cuts_a_content_length_body() -> None:
    sink, _, _ = read(Role.RESPONSE, [b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc"], close=True)
    (msg,) = sink.messages
    assert (msg.body, msg.body_size, msg.complete) == (b"abc", 3, False)


def test_close_in_the_middle_of_a_head_reports_it_lost() -> None:
    sink, _, _ = read(Role.RESPONSE, [b"HTTP/1.1 200 OK\r\nContent-"], close=True)
    assert sink.events == [("lost", True, True)]


def test_huge_chunk_size_is_a_desync_not_a_crash() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\nabc"
    sink, _, stats = read(Role.RESPONSE, [data, b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
    cut, nxt = sink.messages
    assert (cut.complete, stats["http_desync"]) == (False, 1)
    assert nxt.status == 200


def test_oversized_head_is_dropped_within_the_cap() -> None:
    limits = Limits(max_header_bytes=1024)
    line = b"X-Big: " + b"a" * (1 << 20) + b"\r\n"
    sink = Recorder()
    stats = Stats()
    reader = MessageReader(Role.REQUEST, limits, stats, sink, mid_stream=False)
    stream = b"GET / HTTP/1.1\r\n" + line + b"\r\nGET /after HTTP/1.1\r\n\r\n"
    high_water = 0
    for offset in range(0, len(stream), 1460):
        reader.feed(stream[offset : offset + 1460], offset, 1.0)
        high_water = max(high_water, reader.buffered_bytes)
    assert high_water <= 1024 + 1460
    assert stats["cap_header_bytes"] == 1
    assert sink.events[0] == ("lost", True, True)
    assert [m.target for m in sink.messages] == [b"/after"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("role", "data"),
    [
        (Role.REQUEST, bytes.fromhex("16030100a5010000a10303") + b"\x00" * 40),  # TLS ClientHello
        (Role.REQUEST, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),  # HTTP/2 preface
        (Role.REQUEST, b"\x00\x01\x02\x03binary"),
        (Role.REQUEST, b"A" * 100),  # no space where a method must end
        (Role.RESPONSE, b"SSH-2.0-OpenSSH_9.6\r\n"),
        (Role.RESPONSE, b"220 smtp.example.com ESMTP\r\n"),
        (Role.RESPONSE, b"HTTP/2.0 200\r\n\r\n"),
    ],
)
def test_first_bytes_that_cannot_be_http(role: Role, data: bytes) -> None:
    for bytewise in (False, True):
        sink, reader, _ = read(role, [data], bytewise=bytewise)
        assert sink.events == [("not_http",)]
        assert reader.state is State.DEAD


def test_garbage_after_a_message_is_a_desync_then_resync() -> None:
    data = b"GET /1 HTTP/1.1\r\n\r\n\x16\x03\x01garbage\r\nmore HTTP/1.1 junk\r\nGET /2 HTTP/1.1\r\n\r\n"
    sink, _, stats = read(Role.REQUEST, [data])
    assert [m.target for m in sink.messages] == [b"/1", b"/2"]  # type: ignore[union-attr]
    assert stats["http_desync"] == 1


def test_resync_ignores_status_lines_that_do_not_start_a_line() -> None:
    data = [None, b"dy text HTTP/1.1 200 OK inside\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"]
    (msg,) = read(Role.RESPONSE, data)[0].messages
    assert msg.status == 404


def test_mid_stream_unknown_role_is_decided_by_the_first_start_line() -> None:
    data = b"tail of a body\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    for bytewise in (False, True):
        sink, reader, _ = read(Role.UNKNOWN, [None, data], mid_stream=True, bytewise=bytewise)
        assert [e for e in sink.events if e[0] == "role"] == [("role", Role.RESPONSE)]
        (msg,) = sink.messages
        assert (msg.body, msg.stream_offset) == (b"ok", 16)
        assert reader.role is Role.RESPONSE


def test_paused_reader_holds_bytes_until_resumed() -> None:
    sink, reader, _ = read(Role.REQUEST, [b"CONNECT h:443 HTTP/1.1\r\n\r\n"])
    reader.pause()
    reader.feed(b"GET / HTTP/1.1\r\n\r\n", 26, 2.0)
    assert len(sink.messages) == 1
    reader.resume()
    assert [m.method for m in sink.messages] == [b"CONNECT", b"GET"]  # type: ignore[union-attr]


def test_a_body_fed_in_tiny_pieces_is_kept_whole() -> None:
    body = bytes(range(256)) * 40
    data = b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    (msg,) = read_all_ways(Role.REQUEST, data)
    assert (msg.body, msg.body_size, type(msg.body)) == (body, len(body), bytes)


def test_resync_takes_a_chunk_boundary_inside_a_line_as_a_message_start() -> None:
    # After a gap, the last byte of a body ("!", a token byte) and the next request arrive as separate
    # writes; the request line, split over two more chunks, must not become "!HEAD".
    pieces: list[Piece] = [
        b"POST /p HTTP/1.1\r\nContent-Length: 9\r\n",
        40,
        b"!",
        b"HE",
        b"AD /x HTTP/1.1\r\n\r\n",
    ]
    for bytewise in (False, True):
        sink, _, _ = read(Role.REQUEST, pieces, bytewise=bytewise)
        (msg,) = sink.messages
        assert (msg.method, msg.target) == (b"HEAD", b"/x")  # type: ignore[union-attr]


def test_resync_does_not_split_a_glued_line_without_a_boundary() -> None:
    # Inside one chunk there is no evidence where a body ended: no request is invented from "}GET".
    sink, _, _ = read(Role.REQUEST, [None, b'{"a": 1}GET /x HTTP/1.1\r\n\r\nget /lower HTTP/1.1\r\n\r\n'])
    assert [(m.method, m.target) for m in sink.messages] == [(b"get", b"/lower")]  # type: ignore[union-attr]


def test_resync_finds_a_response_written_after_a_long_body_line() -> None:
    # A minified JSON body tail of 100 chunks without a line end, then a response in a fresh write.
    pieces: list[Piece] = [None] + [b'"x":1,' * 50] * 100 + [b"HTTP/1.1 204 No Content\r\n\r\n"]
    (msg,) = read(Role.RESPONSE, pieces)[0].messages
    assert msg.status == 204  # type: ignore[union-attr]
