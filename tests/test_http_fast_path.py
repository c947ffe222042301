"""The per-message fast paths give exactly what the general code gives, on clean and on odd heads.

`read_head` (one split, cached status lines and name plans, framing fields collected while parsing) is
checked against `parse_head` + `framing_fields` + `body_framing` without fields, which stay the reference;
the reader's one-slice body and head-end shortcut (no empty line before the first LF CR LF) against
byte-at-a-time feeding.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reassembly import http_head
from reassembly.events import HttpRequest, HttpResponse
from reassembly.http_framing import body_framing
from reassembly.http_head import HeadError, find_head_end, framing_fields, parse_head, read_head
from reassembly.http_reader import Message, MessageReader, Role
from reassembly.limits import Limits
from reassembly.stats import Stats

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces chosen to hit every branch of the field parser: framing names in any case, colonless lines,
# empty names, folds, non-token names, OWS and stray CRs around values, bare LF line ends.
names = st.sampled_from(
    [b"Host", b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding", b"Upgrade",
     b"upgrade", b"X-A", b"Connection", b"", b"Bad Name", b" Folded", b"\tTab", b"Content-Length "]
)  # fmt: skip
values = st.sampled_from(
    [b"5", b" 5", b"5 ", b"0005", b"5, 5", b"5,6", b"abc", b"", b"  ", b"chunked", b"gzip, chunked",
     b"websocket", b"a\rb", b"\t x \t", b"123456789012345678901"]
)  # fmt: skip
field_lines = st.one_of(
    st.tuples(names, st.sampled_from([b":", b": ", b":\t"]), values).map(b"".join),
    st.sampled_from([b"NoColon", b"", b"  continued", b":empty-name", b"x:y:z"]),
)
# The same without the framing fields and empty lines: a second Content-Length would be a desync, an empty
# line would end the head early, and where a resync then finds the next message legitimately depends on
# how the bytes were cut.
plain_field_lines = st.one_of(
    st.tuples(
        st.sampled_from([b"Host", b"X-A", b"Connection", b"", b"Bad Name", b" Folded", b"\tTab"]),
        st.sampled_from([b":", b": ", b":\t"]),
        values,
    ).map(b"".join),
    st.sampled_from([b"NoColon", b"  continued", b":empty-name", b"x:y:z"]),
)
request_lines = st.sampled_from(
    [b"GET / HTTP/1.1", b"POST /u HTTP/1.0", b"GET  /two-spaces  HTTP/1.1", b"get / HTTP/1.1",
     b"GET / HTTP/2.0", b"GET /", b"G(T / HTTP/1.1", b"A" * 33 + b" / HTTP/1.1", b"PUT /x HTTP/1.9"]
)  # fmt: skip
status_lines = st.sampled_from(
    [b"HTTP/1.1 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.0 304", b"HTTP/1.1  200  OK ",
     b"HTTP/1.1 2000 OK", b"HTTP/1.1 20x OK", b"HTTP/2 200 OK", b"HTTP/1.1 101 Switching", b"HTTP/1.1 100"]
)  # fmt: skip
line_ends = st.sampled_from([b"\r\n", b"\n", b"\r\r\n"])


@st.composite
def head_blocks(
    draw: st.DrawFn, start_lines: st.SearchStrategy[bytes], fields: st.SearchStrategy[bytes] = field_lines
) -> bytes:
    """A head block as the reader cuts it: start line and field lines, each with its line end."""
    lines = [draw(start_lines), *draw(st.lists(fields, max_size=8))]
    return b"".join(line + draw(line_ends) for line in lines)


def fields_of(msg: Message) -> dict[str, object]:
    return {name: getattr(msg, name) for name in msg.FIELDS}


def check_same(block: bytes, is_request: bool) -> None:
    try:
        want = parse_head(block, is_request)
    except HeadError:
        with pytest.raises(HeadError):
            read_head(block, is_request, 2.5, 7)
        return
    want.ts_start, want.stream_offset = 2.5, 7
    for _ in range(2):  # the second time from the caches
        got, fields = read_head(block, is_request, 2.5, 7)
        assert type(got) is type(want) and fields_of(got) == fields_of(want)
        assert fields == framing_fields(want.headers)
        for method in (b"GET", b"HEAD", b"CONNECT", None):
            if is_request:
                assert isinstance(got, HttpRequest)
                ref = body_framing(got.method, None, want.headers)
                assert body_framing(got.method, None, got.headers, fields) == ref
            else:
                assert isinstance(got, HttpResponse)
                ref = body_framing(method, got.status, want.headers)
                assert body_framing(method, got.status, got.headers, fields) == ref


@SETTINGS
@given(head_blocks(request_lines))
def test_read_head_matches_the_reference_on_requests(block: bytes) -> None:
    check_same(block, True)


@SETTINGS
@given(head_blocks(status_lines))
def test_read_head_matches_the_reference_on_responses(block: bytes) -> None:
    check_same(block, False)


def test_upgrade_and_framing_fields_are_collected_in_order_by_lower_case_name() -> None:
    block = (
        b"GET /chat HTTP/1.1\r\nupgrade: websocket\r\nContent-Length: 0005\r\nX: 1\r\n"
        b"CONTENT-LENGTH:5 \r\nTransfer-Encoding: gzip\r\ntransfer-encoding: chunked\r\nContent-Length\r\n"
    )
    msg, fields = read_head(block, True, 0.0, 0)
    assert fields == {
        b"upgrade": [b"websocket"],
        b"content-length": [b"0005", b"5"],
        b"transfer-encoding": [b"gzip", b"chunked"],
    }
    assert framing_fields(msg.headers) == fields


def test_heads_with_the_same_field_names_share_the_name_objects() -> None:
    """A name is one bytes object in every head with the same names (the cached plan's), so its hash is
    computed once and a batch between processes carries it once; other names get their own."""
    a, _ = read_head(b"GET /a HTTP/1.1\r\nHost: x\r\nUser-Agent: u\r\n", True, 0.0, 0)
    b, _ = read_head(b"GET /b HTTP/1.1\r\nHost: y\r\nUser-Agent: v\r\n", True, 0.0, 0)
    c, _ = read_head(b"GET /c HTTP/1.1\r\nUser-Agent: u\r\nHost: x\r\n", True, 0.0, 0)
    assert a.headers == [(b"Host", b"x"), (b"User-Agent", b"u")] and b.headers[1] == (b"User-Agent", b"v")
    assert all(x is y for (x, _), (y, _) in zip(a.headers, b.headers, strict=True))
    assert c.headers[1][0] == b"Host" and c.headers[1][0] is not a.headers[0][0]


@pytest.mark.parametrize("is_request", [True, False])
def test_a_head_that_differs_from_the_guessed_names_or_spacing_is_parsed_as_the_reference(
    is_request: bool,
) -> None:
    """After a head sets the guess for its kind and line count, heads with as many lines but other names,
    other case, other white space or a missing colon give exactly the reference's result."""
    start = b"GET /g HTTP/1.1\r\n" if is_request else b"HTTP/1.1 200 OK\r\n"
    guessed = b"Host: a\r\nContent-Length: 5\r\nX-A: b c\r\n"
    others = [
        guessed,
        b"Host: a\r\nContent-Length: 5\r\nX-A: b c \r\n",  # trailing space
        b"Host:  a\r\nContent-Length: 5\r\nX-A: b c\r\n",  # two spaces
        b"Host:\ta\r\nContent-Length:\t5\r\nX-A:b c\r\n",  # tab, none
        b"Host: a\r\nContent-Length: 5\r\nX-A: \r\n",  # empty value
        b"Host: a\r\nContent-Length: 5\r\nX-A:\r\n",
        b"Host: a\r\nContent-Length: 5\r\nX-A: b\r\r\n",  # stray CR
        b"Host: a\nContent-Length: 5\r\nX-A: b c\n",  # bare LFs
        b"Host: a\r\nContent-Length: 5\r\nX-A: b c \n",  # trailing space, bare LF
        b"Host: a\r\nContent-Length: 5\r\nX-A: b c\t\n",
        b"Host: a\r\nContent-Length: 5\r\nX-A: b\t\r\n",
        b"Host: a\r\nContent-Length: 5\r\nX-A: b\rc\r\n",  # a CR inside a value stays
        b"host: a\r\nContent-Length: 5\r\nX-A: b c\r\n",  # other case
        b"Host: a\r\nContent-Length: 5\r\nX-AB: c\r\n",  # longer name, same prefix
        b"Host: a\r\nContent-Length: 5\r\nX-A b c\r\n",  # no colon
        b"Host: a\r\nContent-Length: 5\r\n folded\r\n",
        b"Host: a\r\nTransfer-Encoding: chunked\r\nX-A: b c\r\n",
        b"Host: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n",
    ]
    for fields in others:
        check_same(start + guessed, is_request)  # the guess, every time
        check_same(start + fields, is_request)
    msg, fields = read_head(start + guessed, is_request, 0.0, 0)
    assert fields == {b"content-length": [b"5"]} and msg.headers[2] == (b"X-A", b"b c")


def test_read_head_caches_stay_bounded() -> None:
    for i in range(3 * http_head._MAX_PLANS):
        read_head(b"HTTP/1.1 %d R%d\r\nX-%d: v\r\n" % (200 + i % 300, i, i), False, 0.0, 0)
    for i in range(3 * http_head._MAX_GUESS_LINES):
        read_head(b"GET / HTTP/1.1\r\n" + b"X: v\r\n" * i, True, 0.0, 0)
    assert len(http_head._PLANS) <= http_head._MAX_PLANS
    assert len(http_head._STATUS_LINES) <= http_head._MAX_STATUS_LINES
    for i in range(3 * http_head._GUESSES_PER_KEY):
        read_head(b"GET / HTTP/1.1\r\nX-%d: v\r\n" % i, True, 0.0, 0)
    for _ in range(2 * http_head._GUESSES_PER_KEY):  # the same names, missed each time (two spaces)
        read_head(b"GET / HTTP/1.1\r\nHost:  a\r\nX-Twice: b\r\n", True, 0.0, 0)
    slot = http_head._GUESSES[2 * 2 + 1]
    assert len(set(slot)) == len(slot), "a plan is kept once, however often it is missed"
    long_names = b"".join(b"X-%d-%s: v\r\n" % (i, b"n" * 40) for i in range(20))  # 20 lines, > 512 bytes
    read_head(b"GET / HTTP/1.1\r\n" + long_names, True, 0.0, 0)
    kept = [names for names, _, _ in http_head._GUESSES.get(20 * 2 + 1, [])]
    assert kept and all(b"X-0-" + b"n" * 40 not in names for names in kept), "long names are not kept"
    assert len(http_head._GUESSES) <= 2 * (http_head._MAX_GUESS_LINES + 1)
    assert max(map(len, http_head._GUESSES.values())) == http_head._GUESSES_PER_KEY


def read(data: bytes, pieces: list[int], limits: Limits) -> tuple[list[Message], Stats]:
    """Messages of a request stream fed in pieces of the given sizes (the rest in one piece)."""
    messages: list[Message] = []

    class Sink:
        def on_head(self, reader: MessageReader, msg: Message) -> object:
            assert isinstance(msg, HttpRequest)
            return body_framing(msg.method, None, msg.headers)

        def on_message(self, reader: MessageReader, msg: Message) -> None:
            messages.append(msg)

        def on_lost(self, reader: MessageReader, started: bool, exact: bool) -> None:
            messages.append(("lost", started, exact))  # type: ignore[arg-type]

        def on_role(self, reader: MessageReader, role: Role) -> None:
            raise AssertionError("roles are known")

        def on_not_http(self, reader: MessageReader) -> None:
            messages.append("not_http")  # type: ignore[arg-type]

    stats = Stats()
    reader = MessageReader(Role.REQUEST, limits, stats, Sink(), mid_stream=False)  # type: ignore[arg-type]
    offset = 0
    for size in [*pieces, len(data)]:
        piece = data[offset : offset + size]
        if piece:
            reader.feed(piece, offset, 1.0)
            offset += len(piece)
    return messages, stats


@SETTINGS
@given(
    st.lists(
        st.tuples(head_blocks(st.just(b"POST /p HTTP/1.1"), plain_field_lines), st.binary(max_size=40)),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.integers(1, 40), max_size=6),
    st.integers(0, 50),
)
def test_reader_whole_chunks_and_pieces_agree(
    messages: list[tuple[bytes, bytes]], pieces: list[int], max_body: int
) -> None:
    data = b"".join(head + b"Content-Length: %d\r\n\r\n" % len(body) + body for head, body in messages)
    limits = Limits(max_body_bytes=max_body)
    whole, whole_stats = read(data, [], limits)
    split, split_stats = read(data, pieces, limits)
    bytewise, bytewise_stats = read(data, [1] * len(data), limits)
    assert split == whole and bytewise == whole
    assert split_stats == whole_stats == bytewise_stats
    # The first head as the reference parser cuts it.
    end, _ = find_head_end(data, 0)
    ref = parse_head(data[:end], True)
    first = whole[0]
    assert isinstance(first, HttpRequest)
    assert (first.method, first.target, first.headers) == (ref.method, ref.target, ref.headers)


@pytest.mark.parametrize("cap", [9, 10, 11])
def test_body_at_the_cap_boundary_whole_or_in_pieces(cap: int) -> None:
    data = b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789GET /n HTTP/1.1\r\n\r\n"
    whole, stats = read(data, [], Limits(max_body_bytes=cap))
    split, _ = read(data, [30, 1, 1], Limits(max_body_bytes=cap))
    assert whole == split
    first, second = whole
    assert (first.body, first.body_size, first.body_truncated) == (b"0123456789"[:cap], 10, cap < 10)
    assert stats["truncated_http_body"] == (1 if cap < 10 else 0)
    assert (second.target, second.stream_offset) == (b"/n", data.index(b"GET"))


def test_bare_lf_before_the_crlf_empty_line_ends_the_head_there() -> None:
    # LF LF comes before the first LF CR LF: the head ends at the LF LF, and what follows is the next
    # message, as find_head_end says.
    data = b"GET /a HTTP/1.1\nHost: x\n\nGET /b HTTP/1.1\r\nHost: y\r\n\r\n"
    msgs, _ = read(data, [], Limits())
    assert [(m.target, m.headers) for m in msgs] == [(b"/a", [(b"Host", b"x")]), (b"/b", [(b"Host", b"y")])]
    assert msgs == read(data, [1] * len(data), Limits())[0]
