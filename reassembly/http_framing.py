"""The HTTP/1.x body-framing decision (RFC 9112 §6.3) as one pure function over a parsed head.

Theory of operation: a passive parser must know where each message ends before it can find the next one,
and for a response that depends on the request it answers (HEAD, CONNECT). `body_framing` takes the
request method for a response (None when the request was never seen), so the caller pairs first and
frames second; this is the one thing a standalone response parser such as httptools cannot do.

The function never raises on bad input: a length that cannot be determined reliably (conflicting or
invalid Content-Length, a request whose last transfer coding is not chunked) is the `DESYNC` kind, and the
caller counts it and resynchronises, because guessing there is exactly how request smuggling works.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = ["Framing", "FramingKind", "body_framing", "parse_chunk_size"]

# 18 digits stay below 2**63: a longer Content-Length is not a body anyone sends, only an attack.
_MAX_LENGTH_DIGITS: Final = 18
# 15 hex digits stay below 2**60, so int() never builds a huge number and offsets stay 64-bit.
_MAX_CHUNK_SIZE_DIGITS: Final = 15
_HEX_CHARS: Final = b"0123456789abcdefABCDEF"


class FramingKind(StrEnum):
    NONE = "none"  # no body: HEAD response, 1xx, 204, 304, request without length headers
    LENGTH = "length"  # exactly `Framing.length` bytes (Content-Length)
    CHUNKED = "chunked"  # chunked transfer coding, then trailers
    CLOSE = "close"  # response body runs until the connection closes
    TUNNEL = "tunnel"  # 101 Switching Protocols or CONNECT 2xx: the rest of the flow is not HTTP
    DESYNC = "desync"  # the length cannot be determined reliably: stop trusting this direction


@dataclass(frozen=True, slots=True)
class Framing:
    kind: FramingKind
    length: int = 0  # for LENGTH only
    te_and_cl: bool = False  # both Transfer-Encoding and Content-Length were sent (TE wins)


NO_BODY: Final = Framing(FramingKind.NONE)
CHUNKED: Final = Framing(FramingKind.CHUNKED)
CHUNKED_WITH_CL: Final = Framing(FramingKind.CHUNKED, te_and_cl=True)
UNTIL_CLOSE: Final = Framing(FramingKind.CLOSE)
UNTIL_CLOSE_WITH_CL: Final = Framing(FramingKind.CLOSE, te_and_cl=True)
TUNNEL: Final = Framing(FramingKind.TUNNEL)
DESYNC: Final = Framing(FramingKind.DESYNC)

# Framings are immutable, so the LENGTH ones are shared: small APIs send the same few lengths again and
# again, and building a frozen dataclass costs more than the rest of the decision. Bounded, first come.
_MAX_CACHED_LENGTHS: Final = 4096
_LENGTHS: Final[dict[int, Framing]] = {}
# The framing of a lone Content-Length value by its text (plain digits, at most _MAX_LENGTH_DIGITS): a
# lookup, where the digits test and the int conversion were two generic calls. Bounded like _LENGTHS.
_LENGTH_TEXTS: Final[dict[bytes, Framing]] = {}


def body_framing(
    method: bytes | None,
    status: int | None,
    headers: list[tuple[bytes, bytes]],
    fields: dict[bytes, list[bytes]] | None = None,  # a dict, not a Mapping: compiled, .get is native
) -> Framing:
    """Decide how the body of one message is delimited.

    Args:
        method: for a request its own method; for a response the method of the request it answers, or
            None when that request is unknown (an orphan response is framed as if it answered a GET).
        status: None for a request, the status code for a response.
        headers: the header fields as parsed, in order.
        fields: the values of Content-Length and Transfer-Encoding by lower-case name, when the head
            parser already collected them (`http_head.read_head`); then `headers` is not scanned again.
    Returns:
        A `Framing`; DESYNC when the length cannot be trusted.
    """
    is_response = status is not None
    if status is not None:
        # RFC 9112 §6.3 rules 1 and 2, in the order the RFC gives them.
        if status == 101:
            return TUNNEL
        if method == b"CONNECT" and 200 <= status < 300:
            return TUNNEL
        if status < 200 or status in (204, 304) or method == b"HEAD":
            return NO_BODY

    te_values: list[bytes] | None
    cl_values: list[bytes] | None
    if fields is not None:
        te_values = fields.get(b"transfer-encoding")
        cl_values = fields.get(b"content-length")
    else:
        te_values = []
        cl_values = []
        for name, value in headers:
            # Cheap length test first: almost every header is neither of the two.
            n = len(name)
            if n == 14:
                if name.lower() == b"content-length":
                    cl_values.append(value)
            elif n == 17 and name.lower() == b"transfer-encoding":
                te_values.append(value)

    if te_values:
        codings = b",".join(te_values).split(b",")
        last = codings[-1].strip(b" \t").lower()
        if last == b"chunked":
            return CHUNKED_WITH_CL if cl_values else CHUNKED
        # §6.3 rule 4: a response is then read until close; a request cannot be framed at all.
        if is_response:
            return UNTIL_CLOSE_WITH_CL if cl_values else UNTIL_CLOSE
        return DESYNC

    if cl_values:
        value = cl_values[0]
        plain = len(cl_values) == 1
        if plain:
            framing = _LENGTH_TEXTS.get(value)
            if framing is not None:
                return framing
            plain = value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS
        # the common case of _content_length: one plain number
        length = int(value) if plain else _content_length(cl_values)
        if length is None:
            return DESYNC
        if not length:
            framing = NO_BODY
        else:
            framing = _LENGTHS.get(length)
            if framing is None:
                framing = Framing(FramingKind.LENGTH, length)
                if len(_LENGTHS) < _MAX_CACHED_LENGTHS:
                    _LENGTHS[length] = framing
        if plain and len(_LENGTH_TEXTS) < _MAX_CACHED_LENGTHS:
            _LENGTH_TEXTS[value] = framing
        return framing

    return UNTIL_CLOSE if is_response else NO_BODY


def _content_length(values: list[bytes]) -> int | None:
    """The one length all Content-Length values agree on (RFC 9110 §8.6 allows `5, 5`), else None."""
    found: bytes | None = None
    for value in values:
        for part in value.split(b","):
            digits = part.strip(b" \t")
            if not digits or len(digits) > _MAX_LENGTH_DIGITS or not digits.isdigit():
                return None
            digits = digits.lstrip(b"0") or b"0"
            if found is None:
                found = digits
            elif digits != found:
                return None
    return None if found is None else int(found)


def parse_chunk_size(line: bytes) -> int | None:
    """The size of a chunk from its size line (`1a;ext=v`, line end stripped or not); None if invalid."""
    size_text = line.split(b";", 1)[0].strip(b" \t\r")
    if not size_text or len(size_text) > _MAX_CHUNK_SIZE_DIGITS or size_text.translate(None, _HEX_CHARS):
        return None
    return int(size_text, 16)
