"""The body-framing decision (RFC 9112 §6.3) as a table, plus the chunk-size line."""

from __future__ import annotations

import pytest

from reassembly import http_framing
from reassembly.http_framing import Framing, FramingKind, body_framing, parse_chunk_size

NONE, LENGTH, CHUNKED, CLOSE, TUNNEL, DESYNC = (
    FramingKind.NONE,
    FramingKind.LENGTH,
    FramingKind.CHUNKED,
    FramingKind.CLOSE,
    FramingKind.TUNNEL,
    FramingKind.DESYNC,
)
CL5 = [(b"Content-Length", b"5")]
TE = [(b"Transfer-Encoding", b"chunked")]


@pytest.mark.parametrize(
    ("method", "status", "headers", "kind", "length"),
    [
        # requests
        (b"GET", None, [], NONE, 0),
        (b"POST", None, CL5, LENGTH, 5),
        (b"POST", None, [(b"content-length", b"0")], NONE, 0),
        (b"POST", None, TE, CHUNKED, 0),
        (b"POST", None, [(b"TRANSFER-ENCODING", b"gzip, Chunked")], CHUNKED, 0),
        (b"POST", None, [(b"Transfer-Encoding", b"chunked, gzip")], DESYNC, 0),
        (b"CONNECT", None, [], NONE, 0),
        # responses: the status and the request method come first
        (b"GET", 200, CL5, LENGTH, 5),
        (b"HEAD", 200, CL5, NONE, 0),
        (b"HEAD", 200, TE, NONE, 0),
        (b"GET", 204, CL5, NONE, 0),
        (b"GET", 304, CL5, NONE, 0),
        (b"GET", 100, [], NONE, 0),
        (b"GET", 103, CL5, NONE, 0),
        (b"GET", 101, [(b"Upgrade", b"websocket")], TUNNEL, 0),
        (b"CONNECT", 200, [], TUNNEL, 0),
        (b"CONNECT", 204, CL5, TUNNEL, 0),
        (b"CONNECT", 407, CL5, LENGTH, 5),
        (b"GET", 200, TE, CHUNKED, 0),
        (b"GET", 200, [(b"Transfer-Encoding", b"gzip")], CLOSE, 0),
        (b"GET", 200, [], CLOSE, 0),
        (None, 200, CL5, LENGTH, 5),
        (None, 200, [], CLOSE, 0),
    ],
)
def test_framing_table(
    method: bytes | None,
    status: int | None,
    headers: list[tuple[bytes, bytes]],
    kind: FramingKind,
    length: int,
) -> None:
    framing = body_framing(method, status, headers)
    assert framing.kind is kind
    assert framing.length == length
    assert not framing.te_and_cl


@pytest.mark.parametrize("status", [None, 200])
def test_transfer_encoding_wins_over_content_length(status: int | None) -> None:
    framing = body_framing(b"POST", status, [(b"Content-Length", b"10"), *TE])
    assert framing == Framing(CHUNKED, te_and_cl=True)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"5", b"5"], 5),
        ([b"5, 5"], 5),
        ([b"005"], 5),
        ([b" 7 "], 7),
        ([b"5", b"6"], None),
        ([b"5, 6"], None),
        ([b"-1"], None),
        ([b"0x10"], None),
        ([b""], None),
        ([b"1" * 19], None),
        ([b"\xd9\xa3"], None),  # an Arabic-Indic digit in UTF-8: not an ASCII digit
    ],
)
def test_content_length_values(values: list[bytes], expected: int | None) -> None:
    framing = body_framing(b"PUT", None, [(b"Content-Length", v) for v in values])
    if expected is None:
        assert framing.kind is DESYNC
    else:
        assert (framing.kind, framing.length) == (LENGTH, expected)


def test_content_length_text_memo_changes_no_decision() -> None:
    # A remembered value text gives what the rules give, the second time too, after the status and
    # method rules; the memo stays within its bound however many texts come.
    for value, (kind, length) in [
        (b"5", (LENGTH, 5)),
        (b"005", (LENGTH, 5)),
        (b"0", (NONE, 0)),
        (b"000", (NONE, 0)),
        (b"9" * 18, (LENGTH, 10**18 - 1)),
        (b"1" * 19, (DESYNC, 0)),
        (b" 7", (LENGTH, 7)),
    ]:
        for _ in range(2):
            framing = body_framing(b"PUT", None, [(b"Content-Length", value)])
            assert (framing.kind, framing.length) == (kind, length)
            assert body_framing(b"HEAD", 200, [(b"Content-Length", value)]).kind is NONE
            assert body_framing(b"GET", 304, [(b"Content-Length", value)]).kind is NONE
            assert body_framing(b"GET", 200, [(b"Content-Length", value), *TE]).kind is CHUNKED
    for i in range(2 * http_framing._MAX_CACHED_LENGTHS):
        framing = body_framing(b"GET", 200, [(b"Content-Length", b"%d" % (i + 1))])
        assert (framing.kind, framing.length) == (LENGTH, i + 1)
    assert len(http_framing._LENGTH_TEXTS) <= http_framing._MAX_CACHED_LENGTHS


@pytest.mark.parametrize(
    ("line", "size"),
    [
        (b"0", 0),
        (b"1a", 26),
        (b"1A\r", 26),
        (b"ff;name=value;x", 255),
        (b"10 ; ext", 16),
        (b"fffffffffffffff", 2**60 - 1),
        (b"10000000000000000", None),  # 2**64
        (b"1" * 100, None),
        (b"", None),
        (b";ext", None),
        (b"-1", None),
        (b"0x10", None),
        (b"g", None),
    ],
)
def test_chunk_size_line(line: bytes, size: int | None) -> None:
    assert parse_chunk_size(line) == size
