"""Parsing one HTTP/1.x head from bytes: start lines, header fields, and finding where a head starts or ends.

Strategy: a head is parsed once, whole, when its terminating empty line has arrived. Everything is done
with C-level bytes methods (`find`, `split`, `partition`, `translate`) rather than a regex per line, because
this runs once per message on the hot path. The parser is lenient where real servers are (bare LF line
ends, obs-fold, extra spaces in the request line) and strict where leniency would misframe a stream
(the version must be HTTP/1.x; a field name must be a token, as nginx's default `ignore_invalid_headers`).

The resync scanners find the next plausible start line after lost bytes: a request line
`METHOD SP target SP HTTP/1.x CRLF` or a status line `HTTP/1.x SP 3DIGIT`, each at the start of a line.
"""

from __future__ import annotations

from collections.abc import Sequence

from reassembly.events import HttpRequest, HttpResponse

__all__ = [
    "HeadError",
    "check_start_line",
    "find_head_end",
    "find_start_line",
    "is_token",
    "parse_fields",
    "parse_head",
    "parse_request_line",
    "parse_status_line",
    "plausible_request_prefix",
    "plausible_response_prefix",
    "split_lines",
]

TOKEN_CHARS = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_STRICT_METHOD_CHARS = b"-_ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# No registered method is longer than 17 bytes (BASELINE-CONTROL is 16); 32 leaves room for extensions.
MAX_METHOD_BYTES = 32
_HTTP1 = b"HTTP/1."
_SP_HTTP1 = b" HTTP/1."

Buffer = bytes | bytearray


class HeadError(ValueError):
    """The bytes are not a well-formed HTTP/1.x start line (raised and caught inside the core only)."""


def is_token(value: Buffer) -> bool:
    """True for a non-empty RFC 9110 token (a method or a field name)."""
    return bool(value) and not value.translate(None, TOKEN_CHARS)


def _is_http1(version: bytes) -> bool:
    return len(version) == 8 and version.startswith(_HTTP1) and 48 <= version[7] <= 57


def parse_request_line(line: bytes) -> tuple[bytes, bytes, bytes]:
    """Split `METHOD SP target SP HTTP/1.x` into (method, target, version); raise HeadError otherwise."""
    parts = line.split()
    if len(parts) != 3:
        raise HeadError("request line needs three parts")
    method, target, version = parts
    if not _is_http1(version) or not is_token(method) or len(method) > MAX_METHOD_BYTES:
        raise HeadError("not an HTTP/1.x request line")
    return method, target, version


def parse_status_line(line: bytes) -> tuple[bytes, int, bytes]:
    """Split `HTTP/1.x SP 3DIGIT [SP reason]` into (version, status, reason); raise HeadError otherwise."""
    version, _, rest = line.partition(b" ")
    rest = rest.lstrip(b" ")
    code = rest[:3]
    if not _is_http1(version) or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
        raise HeadError("not an HTTP/1.x status line")
    return version, int(code), rest[4:].strip(b" \t")


def split_lines(block: bytes) -> list[bytes]:
    """Lines of a head block, accepting CRLF or bare LF endings."""
    return block.replace(b"\r\n", b"\n").split(b"\n")


def parse_fields(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) fields from their lines: original case and order, values stripped of OWS.

    An obsolete line folding continues the previous value with one space (RFC 9112 §5.2). A line without a
    colon, or whose name is not a token (e.g. `Transfer-Encoding : chunked`), is skipped as nginx does.
    """
    # Fast path, one C-level check for the whole block: every line has a colon and no name (so no
    # folded line either, as it starts with a space) holds a non-token byte.
    pairs = [line.partition(b":") for line in lines if line]
    if len(b"".join([p[1] for p in pairs])) == len(pairs) and not b"".join([p[0] for p in pairs]).translate(
        None, TOKEN_CHARS
    ):
        return [(name, value.strip(b" \t\r")) for name, _, value in pairs if name]
    fields: list[tuple[bytes, bytes]] = []
    for line in lines:
        if not line:
            continue
        if line[0] in (32, 9):
            if fields:
                name, value = fields[-1]
                fields[-1] = (name, value + b" " + line.strip(b" \t\r"))
            continue
        name, sep, value = line.partition(b":")
        if sep and is_token(name):
            fields.append((name, value.strip(b" \t\r")))
    return fields


def parse_head(block: bytes, is_request: bool) -> HttpRequest | HttpResponse:
    """A message from its head block (start line and fields, without the empty line); raise HeadError."""
    lines = split_lines(block)
    if is_request:
        method, target, version = parse_request_line(lines[0])
        return HttpRequest(method=method, target=target, version=version, headers=parse_fields(lines[1:]))
    version, status, reason = parse_status_line(lines[0])
    return HttpResponse(status=status, reason=reason, version=version, headers=parse_fields(lines[1:]))


def check_start_line(line: bytes, is_request: bool) -> bool:
    """Is line (without its line end) a well-formed start line of the given kind?"""
    try:
        if is_request:
            parse_request_line(line)
        else:
            parse_status_line(line)
    except HeadError:
        return False
    return True


def find_head_end(buf: Buffer, start: int) -> tuple[int, int]:
    """Find the empty line that ends a head, searching from `start` (at or before the first line's LF).

    Returns (end, after): the head's lines are buf[pos:end] (ending with its last line's LF) and the next
    byte after the empty line is at `after`; (-1, -1) when the empty line has not arrived yet.
    """
    crlf = buf.find(b"\n\r\n", start)
    lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else len(buf))
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return -1, -1


def plausible_request_prefix(buf: Buffer, pos: int) -> bool:
    """Can the bytes at pos (a first line not yet complete) still begin a request line?"""
    head = buf[pos : pos + MAX_METHOD_BYTES + 1]
    sp = head.find(b" ")
    method = head if sp < 0 else head[:sp]
    if sp < 0 and len(head) > MAX_METHOD_BYTES:
        return False
    return not method.translate(None, TOKEN_CHARS)


def plausible_response_prefix(buf: Buffer, pos: int) -> bool:
    """Can the bytes at pos (a first line not yet complete) still begin a status line?"""
    head = bytes(buf[pos : pos + 7])
    return _HTTP1.startswith(head)


def _request_line_at(buf: Buffer, start: int, sp: int, strict: bool) -> bool:
    """Is buf[start:sp] a plausible `METHOD SP target` (sp is the space before HTTP/1.x)?

    strict: the method is upper case (every registered method is), which a stray body byte glued in
    front of it (`}GET`) is not.
    """
    method, _, target = bytes(buf[start:sp]).partition(b" ")
    target = target.strip(b" ")
    if not target or b" " in target or len(method) > MAX_METHOD_BYTES:
        return False
    return bool(method) and not method.translate(None, _STRICT_METHOD_CHARS if strict else TOKEN_CHARS)


def _request_line_start(buf: Buffer, pos: int, sp: int, line_start: bool, starts: Sequence[int]) -> int:
    """Where the request line ending in buf[sp:] (" HTTP/1.x") begins, or -1 if nowhere plausible."""
    nl = buf.rfind(b"\n", pos, sp)
    begin = nl + 1 if nl >= 0 else (pos if line_start else -1)
    if begin >= 0 and _request_line_at(buf, begin, sp, True):
        return begin
    # A write boundary inside the line: a request written right after a body that did not end a line.
    for start in starts:
        if begin < start < sp and start >= pos and _request_line_at(buf, start, sp, True):
            return start
    if begin >= 0 and _request_line_at(buf, begin, sp, False):
        return begin
    return -1


def find_start_line(
    buf: Buffer,
    pos: int,
    scan: int,
    line_start: bool,
    want_request: bool,
    want_response: bool,
    starts: Sequence[int] = (),
) -> tuple[int, bool, int]:
    """Scan buf[pos:] for the first plausible start line beginning at the start of a line.

    Args:
        pos: the first byte that may belong to a start line; `line_start` says whether pos itself begins a
            line (true after a gap: a message often starts right where lost bytes end).
        scan: where the search for the `HTTP/1.` marker may resume (earlier bytes were already rejected).
        starts: indexes where a chunk of the stream began; a writer starts a message with a fresh write,
            so these count as line starts too.
    Returns:
        (index, is_request, next_scan): index of the start line or -1. When -1, next_scan is where a
        later call (with more bytes appended) must resume, so no byte is examined twice.
    """
    n = len(buf)
    best = -1
    resume = n
    if want_response:
        i = buf.find(_HTTP1, scan)
        while i >= 0:
            if (i == pos and line_start) or (i > pos and buf[i - 1] == 10) or i in starts:
                if n < i + 12:
                    resume = min(resume, i)
                    break
                if 48 <= buf[i + 7] <= 57 and buf[i + 8] == 32 and bytes(buf[i + 9 : i + 12]).isdigit():
                    best = i
                    break
            i = buf.find(_HTTP1, i + 1)
        else:
            resume = min(resume, max(scan, n - 7))
    if want_request:
        stop = best if best >= 0 else n
        j = buf.find(_SP_HTTP1, max(scan - 1, pos), stop)
        while j >= 0:
            if n < j + 10:
                resume = min(resume, j)
                break
            if 48 <= buf[j + 8] <= 57 and buf[j + 9] in (10, 13):
                start = _request_line_start(buf, pos, j, line_start, starts)
                if start >= 0:
                    return start, True, n
            j = buf.find(_SP_HTTP1, j + 1, stop)
        else:
            if best < 0:
                resume = min(resume, max(scan, n - 9))
    if best >= 0:
        return best, False, n
    return -1, False, max(resume, pos)
