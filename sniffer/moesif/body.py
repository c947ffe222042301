"""One HTTP body as Moesif sees it: content coding undone, size-limited, JSON or base64.

Input is `HttpMessage.body` (chunked framing already removed, content coding kept). Content-Encoding
gzip/x-gzip, deflate (zlib-wrapped or raw), br and stacked codings ("gzip, br") are decoded with an
output cap, so a decompression bomb never inflates beyond the limit (we keep counting a while, without
keeping bytes, to report the true size). A coding we cannot undo leaves the wire bytes, base64, flagged.

JSON when the content type contains "json" (case-insensitive) and the decoded bytes parse: the parsed
value with transfer_encoding "json". Otherwise standard base64. The size limit applies to the decoded
body; a larger body is left out and its sizes are reported for `metadata.capture`.
"""

from __future__ import annotations

import base64
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import brotli
import orjson

__all__ = [
    "COUNT_CAP",
    "BodyCapture",
    "Decoded",
    "capture_body",
    "capture_body_with",
    "decode_content",
    "encode_body",
    "parse_codings",
    "plain_body",
]

_CHUNK: Final = 64 << 10
# How far we keep inflating, discarding output, to learn the true size of a body over the limit.
# Bounded so a bomb costs at most ~tens of milliseconds of CPU.
COUNT_CAP: Final = 16 << 20
# Bound once: compiled, `orjson.loads` would be an attribute lookup on the module per body.
_loads: Final = orjson.loads


class _DecodeError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Decoded:
    data: bytes  # decoded bytes (at most limit + 1 of them kept); the wire bytes when `failed`
    size: int  # decoded size, exact unless `size_exact` is False (then a lower bound)
    size_exact: bool = True
    over_limit: bool = False
    failed: str | None = None  # the coding that could not be undone


def _zlib_stream(data: bytes, wbits: int, keep: int, count_cap: int, gzip: bool) -> tuple[bytes, int, bool]:
    """Inflate keeping `keep` bytes and counting up to `count_cap`; (kept, counted, finished)."""
    out = bytearray()
    total = 0
    d = zlib.decompressobj(wbits)
    buf = data
    while True:
        try:
            chunk = d.decompress(buf, _CHUNK)
        except zlib.error as exc:
            raise _DecodeError(str(exc)) from None
        total += len(chunk)
        if len(out) < keep:
            out += chunk[: keep - len(out)]
        if total > count_cap:
            return bytes(out), total, False
        buf = d.unconsumed_tail
        if d.eof:
            rest = d.unused_data
            # Concatenated gzip members form one body (RFC 1952 2.2); other trailing bytes are ignored.
            if gzip and rest[:2] == b"\x1f\x8b":
                d = zlib.decompressobj(wbits)
                buf = rest
                continue
            return bytes(out), total, True
        if not buf and not chunk:
            raise _DecodeError("stream ends before its end marker")


def _gzip(data: bytes, keep: int, cap: int) -> tuple[bytes, int, bool]:
    return _zlib_stream(data, 16 + zlib.MAX_WBITS, keep, cap, gzip=True)


def _deflate(data: bytes, keep: int, cap: int) -> tuple[bytes, int, bool]:
    # HTTP "deflate" is meant to be zlib-wrapped (RFC 9110 8.4.1.2) but servers also send raw deflate.
    looks_zlib = len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
    if looks_zlib:
        try:
            return _zlib_stream(data, zlib.MAX_WBITS, keep, cap, gzip=False)
        except _DecodeError:
            pass
    return _zlib_stream(data, -zlib.MAX_WBITS, keep, cap, gzip=False)


def _brotli(data: bytes, keep: int, cap: int) -> tuple[bytes, int, bool]:
    out = bytearray()
    d = brotli.Decompressor()
    try:
        chunk = d.process(data, output_buffer_limit=_CHUNK)
        total = len(chunk)
        out += chunk[:keep]
        while not d.is_finished():
            if total > cap:
                return bytes(out), total, False
            chunk = d.process(b"", output_buffer_limit=_CHUNK)
            if not chunk and d.can_accept_more_data():
                raise _DecodeError("stream ends before its end marker")
            total += len(chunk)
            if len(out) < keep:
                out += chunk[: keep - len(out)]
    except brotli.error as exc:
        raise _DecodeError(str(exc)) from None
    return bytes(out), total, True


_DECODERS: dict[str, Callable[[bytes, int, int], tuple[bytes, int, bool]]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
}


def parse_codings(values: Iterable[str]) -> list[str]:
    """Codings in the order they were applied, from one or more Content-Encoding values."""
    out: list[str] = []
    for value in values:
        for item in value.split(","):
            name = item.strip().lower()
            if name and name != "identity":
                out.append(name)
    return out


def decode_content(data: bytes, codings: list[str], limit: int) -> Decoded:
    """Undo `codings` (as applied, first to last), keeping at most `limit` + 1 decoded bytes."""
    if not codings:
        return Decoded(data, len(data), over_limit=len(data) > limit)
    if any(c not in _DECODERS for c in codings):
        return Decoded(data, len(data), failed=",".join(codings))
    current = data
    for i, coding in enumerate(reversed(codings)):
        last = i == len(codings) - 1
        # Intermediate layers are kept whole (up to COUNT_CAP) because the next decoder needs them.
        keep = limit + 1 if last else COUNT_CAP
        cap = max(COUNT_CAP, keep)
        try:
            kept, total, finished = _DECODERS[coding](current, keep, cap)
        except _DecodeError:
            return Decoded(data, len(data), failed=coding)
        if not finished:
            # Stopped counting: the body is certainly over the limit; its size is only a lower bound.
            return Decoded(b"", total, size_exact=False, over_limit=True)
        current = kept
    over = total > limit
    return Decoded(b"" if over else current, total, over_limit=over)


def encode_body(data: bytes, content_type: str | None) -> tuple[object, str]:
    """(value, transfer_encoding): parsed JSON for a JSON content type that parses, else base64."""
    if content_type is not None and "json" in content_type.lower():
        try:
            value = _loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            # A literal `null` body would read as "no body" (events never carry null); keep its bytes.
            if value is not None:
                return value, "json"
    return base64.b64encode(data).decode("ascii"), "base64"


@dataclass(slots=True)
class BodyCapture:
    """The body fields of one side of the event, plus what `metadata.capture` should say about it."""

    present: bool = False
    value: Any = None  # parsed JSON or base64 text (Any, not object: mypyc resolves field types by name)
    transfer_encoding: str | None = None
    meta: dict[str, object] = field(default_factory=dict)  # keys without the request_/response_ prefix
    flags: list[str] = field(default_factory=list)  # e.g. "body_undecoded"


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in headers if k.lower() == name]


def plain_body(
    body: bytes, content_type: str | None, *, coded: bool, truncated: bool, limit: int
) -> tuple[object, str] | None:
    """The common case, short-cut: a body with nothing to undo (`coded`: a Content-Encoding to apply),
    whole, not empty and within the limit is just `encode_body`, with nothing to report about it.
    None: the caller needs `capture_body_with`."""
    if coded or truncated or not body or len(body) > limit:
        return None
    return encode_body(body, content_type)


def capture_body(
    body: bytes,
    *,
    headers: list[tuple[bytes, bytes]],
    body_size: int,
    body_truncated: bool,
    limit: int,
    decode: bool = True,
) -> BodyCapture:
    """Decode, size-check and encode one message body (masks are applied by the caller)."""
    return capture_body_with(
        body,
        content_encoding=_values(headers, b"content-encoding"),
        content_type=", ".join(_values(headers, b"content-type")) or None,
        body_size=body_size,
        body_truncated=body_truncated,
        limit=limit,
        decode=decode,
    )


def capture_body_with(
    body: bytes,
    *,
    content_encoding: Sequence[str],
    content_type: str | None,
    body_size: int,
    body_truncated: bool,
    limit: int,
    decode: bool = True,
) -> BodyCapture:
    """`capture_body` for a caller that already holds the message's Content-Encoding values and its
    Content-Type (repeated headers joined with ", "), each header value decoded as latin-1."""
    plain = plain_body(
        body, content_type, coded=bool(decode and content_encoding), truncated=body_truncated, limit=limit
    )
    if plain is not None:
        return BodyCapture(True, *plain)
    wire_size = max(body_size, len(body))
    if wire_size == 0:
        return BodyCapture()
    codings = parse_codings(content_encoding) if decode else []
    out = BodyCapture()
    if body_truncated:
        # The core kept only a prefix (its cap sits just above the limit): the body is over the limit.
        out.meta.update(omitted="over_limit", wire_size=wire_size)
        if not codings:
            out.meta["size"] = wire_size
        return out
    decoded = decode_content(body, codings, limit)
    if decoded.failed is not None:
        out.flags.append("body_undecoded")
        out.meta["undecoded"] = decoded.failed
        if len(body) > limit:
            out.meta.update(omitted="over_limit", wire_size=wire_size)
            return out
    elif decoded.over_limit:
        out.meta.update(omitted="over_limit", wire_size=wire_size)
        out.meta["size" if decoded.size_exact else "size_at_least"] = decoded.size
        return out
    out.value, out.transfer_encoding = encode_body(decoded.data, None if decoded.failed else content_type)
    out.present = True
    return out
