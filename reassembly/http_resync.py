"""Finding the next plausible HTTP/1.x start line after lost or misframed bytes (resynchronisation).

A reader that lost its place scans forward for a request line `METHOD SP target SP HTTP/1.x CRLF` or a
status line `HTTP/1.x SP 3DIGIT`, each at the start of a line (or of a chunk the writer sent, since a
writer starts a message with a fresh write). The scan is resumable: a call that finds nothing says where
the next one, with more bytes appended, must resume, so no byte is examined twice.
"""

from __future__ import annotations

from collections.abc import Sequence

from reassembly.http_head import _HTTP1, _SP_HTTP1, MAX_METHOD_BYTES, TOKEN_CHARS, Buffer

__all__ = ["find_start_line"]

_STRICT_METHOD_CHARS = b"-_ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
