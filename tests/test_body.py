"""Bodies: content decoding (gzip, deflate both forms, br, stacked), bomb caps, JSON vs base64, limits."""

from __future__ import annotations

import base64
import gzip
import os
import zlib
from collections.abc import Callable

import brotli
import pytest

from sniffer.moesif.body import (
    COUNT_CAP,
    BodyCapture,
    capture_body,
    capture_body_with,
    decode_content,
    encode_body,
    plain_body,
)

JSON_CT = (b"Content-Type", b"application/json; charset=utf-8")
DOC = b'{"id": 7, "items": [1, 2, 3], "name": "caf\xc3\xa9"}' * 1


def raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


def cap(
    body: bytes,
    *headers: tuple[bytes, bytes],
    limit: int = 100_000,
    truncated: bool = False,
    size: int | None = None,
    decode: bool = True,
) -> BodyCapture:
    return capture_body(
        body,
        headers=list(headers),
        body_size=len(body) if size is None else size,
        body_truncated=truncated,
        limit=limit,
        decode=decode,
    )


PARSED = {"id": 7, "items": [1, 2, 3], "name": "café"}


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        (b"gzip", gzip.compress(DOC)),
        (b"x-gzip", gzip.compress(DOC)),
        (b"GZIP", gzip.compress(DOC)),
        (b"deflate", zlib.compress(DOC)),
        (b"deflate", raw_deflate(DOC)),
        (b"br", brotli.compress(DOC)),
        (b"identity", DOC),
        (b"gzip, br", brotli.compress(gzip.compress(DOC))),
        (b"deflate,gzip", gzip.compress(raw_deflate(DOC))),
        (b"gzip", gzip.compress(DOC[:20]) + gzip.compress(DOC[20:])),  # two gzip members
    ],
    ids=[
        "gzip",
        "x-gzip",
        "GZIP",
        "zlib",
        "raw-deflate",
        "br",
        "identity",
        "gzip,br",
        "deflate,gzip",
        "members",
    ],
)
def test_content_codings_decoded_to_json(coding: bytes, encoded: bytes) -> None:
    out = cap(encoded, JSON_CT, (b"Content-Encoding", coding))
    assert out.present and out.transfer_encoding == "json"
    assert out.value == PARSED
    assert not out.flags and not out.meta


def test_repeated_content_encoding_headers_stack() -> None:
    encoded = brotli.compress(gzip.compress(DOC))
    out = cap(encoded, JSON_CT, (b"Content-Encoding", b"gzip"), (b"content-encoding", b"br"))
    assert out.value == PARSED


def test_non_json_content_type_is_base64_of_decoded_bytes() -> None:
    text = b"hello, world " * 10
    out = cap(gzip.compress(text), (b"Content-Type", b"text/plain"), (b"Content-Encoding", b"gzip"))
    assert out.transfer_encoding == "base64"
    assert base64.b64decode(out.value) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'  \r\n\t{"a": [1]}  ', {"a": [1]}),
        (b"42", 42),
        (b' "str"', "str"),
        (b"true", True),
        (b"[]", []),
        (b"-0.5e3", -500.0),
    ],
)
def test_json_leading_whitespace_and_scalars(raw: bytes, expected: object) -> None:
    assert encode_body(raw, "application/json") == (expected, "json")


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        (b'{"a": 1', "application/json"),  # truncated JSON
        (b"null", "application/json"),  # would read as "no body"
        (b"\xef\xbb\xbf{}", "application/json"),  # BOM
        (b'{"a": 1}', "text/plain"),
        (b'{"a": 1}', None),
        (b"\xff\xfe", "application/json"),
    ],
)
def test_non_json_falls_back_to_base64(raw: bytes, content_type: str | None) -> None:
    value, te = encode_body(raw, content_type)
    assert te == "base64" and base64.b64decode(value) == raw  # type: ignore[arg-type]


@pytest.mark.parametrize("content_type", ["application/vnd.api+json", "APPLICATION/JSON", "text/json"])
def test_json_content_type_variants(content_type: str) -> None:
    assert encode_body(b'{"x":1}', content_type) == ({"x": 1}, "json")


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        (b"gzip", b"\x1f\x8b\x08\x00garbage-not-deflate"),
        (b"gzip", gzip.compress(DOC)[:-12]),  # cut before the end marker
        (b"deflate", b"\x00\x01\x02 definitely not deflate \xff" * 3),
        (b"br", b"not brotli at all"),
        (b"br", brotli.compress(os.urandom(3000))[:-50]),
        (b"compress", b"lzw?"),
        (b"gzip, zstd", b"anything"),
    ],
    ids=["bad-gzip", "cut-gzip", "bad-deflate", "bad-br", "cut-br", "unknown", "unknown-stacked"],
)
def test_undecodable_body_keeps_raw_bytes_flagged(coding: bytes, encoded: bytes) -> None:
    out = cap(encoded, JSON_CT, (b"Content-Encoding", coding))
    assert out.present and out.transfer_encoding == "base64"
    assert base64.b64decode(out.value) == encoded  # type: ignore[arg-type]
    assert out.flags == ["body_undecoded"]
    assert out.meta["undecoded"]


def test_decoding_disabled_sends_wire_bytes() -> None:
    encoded = gzip.compress(DOC)
    out = cap(encoded, JSON_CT, (b"Content-Encoding", b"gzip"), decode=False)
    assert out.transfer_encoding == "base64" and base64.b64decode(out.value) == encoded  # type: ignore[arg-type]
    assert not out.flags


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", lambda b: gzip.compress(b, 1)),
        ("deflate", lambda b: zlib.compress(b, 1)),
        ("deflate", raw_deflate),
        ("br", lambda b: brotli.compress(b, quality=1)),
    ],
    ids=["gzip", "zlib", "raw-deflate", "br"],
)
def test_bomb_is_capped_and_sized(coding: str, compress: Callable[[bytes], bytes]) -> None:
    plain = b"\0" * (COUNT_CAP * 3)
    encoded = compress(plain)
    assert len(encoded) < 300_000  # a small wire body that would inflate 160-fold
    decoded = decode_content(encoded, [coding], 1000)
    assert decoded.over_limit and not decoded.size_exact
    assert COUNT_CAP < decoded.size < len(plain)  # stopped counting soon after the cap
    assert decoded.data == b""


def test_body_over_limit_after_decoding_reports_true_size() -> None:
    plain = b"a" * 1_000_000
    encoded = gzip.compress(plain)
    out = cap(encoded, (b"Content-Encoding", b"gzip"), limit=100_000)
    assert not out.present
    assert out.meta == {"omitted": "over_limit", "wire_size": len(encoded), "size": 1_000_000}


def test_stacked_bomb_is_capped() -> None:
    encoded = brotli.compress(gzip.compress(b"\0" * (COUNT_CAP * 2), 1), quality=1)
    decoded = decode_content(encoded, ["gzip", "br"], 1000)
    assert decoded.over_limit and decoded.data == b""


@pytest.mark.parametrize("coding", [None, b"gzip", b"br"])
def test_limit_boundary_is_on_decoded_size(coding: bytes | None) -> None:
    limit = 5000
    for size, kept in ((limit - 1, True), (limit, True), (limit + 1, False)):
        plain = b"x" * size
        headers = [(b"Content-Type", b"text/plain")]
        body = plain
        if coding is not None:
            body = gzip.compress(plain) if coding == b"gzip" else brotli.compress(plain)
            headers.append((b"Content-Encoding", coding))
        out = cap(body, *headers, limit=limit)
        assert out.present is kept, (coding, size)
        if kept:
            assert base64.b64decode(out.value) == plain  # type: ignore[arg-type]
        else:
            assert out.meta["size"] == size and out.meta["omitted"] == "over_limit"


def test_truncated_by_core_is_over_limit_with_wire_size() -> None:
    out = cap(b"x" * 1024, (b"Content-Type", b"text/plain"), limit=1000, truncated=True, size=50_000)
    assert not out.present
    assert out.meta == {"omitted": "over_limit", "wire_size": 50_000, "size": 50_000}
    out = cap(b"x" * 1024, (b"Content-Encoding", b"gzip"), limit=1000, truncated=True, size=50_000)
    assert out.meta == {"omitted": "over_limit", "wire_size": 50_000}  # decoded size unknown


def test_undecodable_body_over_limit_left_out() -> None:
    out = cap(b"\x1f\x8b" + b"z" * 3000, (b"Content-Encoding", b"gzip"), limit=1000)
    assert not out.present and out.flags == ["body_undecoded"]
    assert out.meta["omitted"] == "over_limit"


def test_empty_body_left_out() -> None:
    out = cap(b"", JSON_CT)
    assert not out.present and out.value is None and out.transfer_encoding is None and not out.meta


@pytest.mark.parametrize(
    ("body", "headers", "limit", "truncated"),
    [
        (DOC, [JSON_CT], 100_000, False),
        (b"plain text", [(b"Content-Type", b"text/plain")], 100_000, False),
        (b"null", [JSON_CT], 100_000, False),
        (DOC, [JSON_CT], len(DOC), False),  # exactly at the limit
        (DOC, [JSON_CT], len(DOC) - 1, False),  # one over
        (DOC, [JSON_CT], 100_000, True),
        (b"", [JSON_CT], 100_000, False),
        (gzip.compress(DOC), [JSON_CT, (b"Content-Encoding", b"gzip")], 100_000, False),
        (DOC, [JSON_CT, (b"Content-Encoding", b"identity")], 100_000, False),
        (DOC, [(b"Content-Type", b"application/json"), (b"content-type", b"charset=utf-8")], 100_000, False),
    ],
    ids=[
        "json",
        "text",
        "null",
        "at-limit",
        "over-limit",
        "truncated",
        "empty",
        "gzip",
        "identity",
        "two-types",
    ],
)
def test_plain_body_is_capture_body_short_cut(
    body: bytes, headers: list[tuple[bytes, bytes]], limit: int, truncated: bool
) -> None:
    size = len(body) + (5 if truncated else 0)
    full = capture_body(body, headers=headers, body_size=size, body_truncated=truncated, limit=limit)
    encodings = [v.decode("latin-1") for k, v in headers if k.lower() == b"content-encoding"]
    content_type = ", ".join(v.decode("latin-1") for k, v in headers if k.lower() == b"content-type") or None
    with_values = capture_body_with(
        body,
        content_encoding=encodings,
        content_type=content_type,
        body_size=size,
        body_truncated=truncated,
        limit=limit,
    )
    assert with_values == full
    plain = plain_body(body, content_type, coded=bool(encodings), truncated=truncated, limit=limit)
    if plain is not None:
        # Only taken when there is nothing else to say about the body.
        assert full.present and not full.meta and not full.flags
        assert plain == (full.value, full.transfer_encoding)
    else:
        assert encodings or truncated or not body or len(body) > limit
