"""Parsing one HTTP/1.x head from bytes: start lines, header fields, and finding where a head starts or ends.

Strategy: a head is parsed once, whole, when its terminating empty line has arrived. Everything is done
with C-level bytes methods (`find`, `split`, `partition`, `translate`) rather than a regex per line, because
this runs once per message on the hot path. The parser is lenient where real servers are (bare LF line
ends, obs-fold, extra spaces in the request line) and strict where leniency would misframe a stream
(the version must be HTTP/1.x; a field name must be a token, as nginx's default `ignore_invalid_headers`).

`read_head` is the per-message entry point: the same result as `parse_head` (which stays the reference)
plus the few fields that decide body framing, collected in the same pass. The resync scanners live in
`http_resync`.
"""

from __future__ import annotations

from typing import Final, TypeVar

from reassembly.events import HttpRequest, HttpResponse

__all__ = [
    "NO_FIELDS",
    "EmptyLine",
    "HeadError",
    "check_start_line",
    "find_head_end",
    "framing_fields",
    "is_token",
    "lf_lines",
    "parse_fields",
    "parse_head",
    "parse_request_line",
    "parse_status_line",
    "plausible_request_prefix",
    "plausible_response_prefix",
    "read_head",
    "read_lines",
    "split_lines",
]

TOKEN_CHARS: Final = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# No registered method is longer than 17 bytes (BASELINE-CONTROL is 16); 32 leaves room for extensions.
MAX_METHOD_BYTES: Final = 32
_HTTP1: Final = b"HTTP/1."
_SP_HTTP1: Final = b" HTTP/1."

Buffer = bytes | bytearray
Fields = dict[bytes, list[bytes]]

_TOKEN_CHARS_NL: Final = TOKEN_CHARS + b"\n"
# The header fields `read_head` collects (lower case): the ones that decide body framing or a switch of
# protocols. Everything else is left to the consumers of the message.
_FRAMING_NAMES: Final = frozenset((b"content-length", b"transfer-encoding", b"upgrade"))
NO_FIELDS: Final[Fields] = {}  # shared by every head without any of them: never mutated
# Bounded caches for read_head, emptied when full: a long-running capture follows the traffic of the day,
# and a flood of odd heads costs only the uncached path.
_MAX_STATUS_LINES: Final = 256
_MAX_PLANS: Final = 1024
_MAX_CACHED_LINE: Final = 64
_MAX_CACHED_NAMES: Final = 512
_STATUS_LINES: Final[dict[bytes, tuple[bytes, int, bytes]]] = {}
# A head's plan, by its LF-joined field names: the names themselves, one bytes object each shared by every
# head with these names; where the framing fields are; and each line's prefix `name: `. Shared names keep
# their hash (computed once, not once per message by each consumer's dict or set lookup) and are sent once
# per batch between processes (marshal writes a repeated object as a reference).
_Framing = tuple[tuple[bytes, int], ...]
_Plan = tuple[tuple[bytes, ...], _Framing, tuple[bytes, ...]]
_PLANS: Final[dict[bytes, _Plan]] = {}
# The plan of names that are not all tokens (or a folded line): no names, the general loop decides. Told
# apart by having no names, not by identity (compiled, a Final tuple of literals may not be one object).
_GENERAL: Final[_Plan] = ((), (), ())
# The last few plans of a request's or a response's head, by its number of field lines (key: 2 * lines + 1
# for a request), most recently seen or matched first: the guesses `read_lines` checks first. Bounded by
# the key's range, `_GUESSES_PER_KEY` and, as `_PLANS`, `_MAX_CACHED_NAMES` bytes of names a plan.
_GUESSES: Final[dict[int, list[_Plan]]] = {}
_GUESSES_PER_KEY: Final = 8
_MAX_GUESS_LINES: Final = 64
_V = TypeVar("_V")
# Methods known to be tokens of a valid length, so the check of a request line can skip them.
_COMMON_METHODS: Final = frozenset(
    (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT")
)


class HeadError(ValueError):
    """The bytes are not a well-formed HTTP/1.x start line (raised and caught inside the core only)."""


class EmptyLine(Exception):
    """`read_lines(..., cut_at_crlf=True)`: an empty line comes before the end the lines were cut at, so
    the head ends there, earlier (a bare LF LF before the first LF CR LF)."""


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


def framing_fields(headers: list[tuple[bytes, bytes]]) -> Fields:
    """The values of Content-Length, Transfer-Encoding and Upgrade by lower-case name, in order."""
    found: Fields | None = None
    for name, value in headers:
        n = len(name)
        # Cheap length test first: almost every header is none of the three.
        if n == 14 or n == 17 or n == 7:
            key = name.lower()
            if key in _FRAMING_NAMES:
                if found is None:
                    found = {}
                values = found.get(key)
                if values is None:
                    found[key] = [value]
                else:
                    values.append(value)
    return NO_FIELDS if found is None else found


def read_head(
    block: bytes, is_request: bool, ts: float, offset: int
) -> tuple[HttpRequest | HttpResponse, Fields]:
    """`parse_head` for the hot path: the message (ts_start=ts, stream_offset=offset) and its framing fields.

    `block` is the head without its empty line (ending with its last line's LF). The result is the same
    as `parse_head`'s and `framing_fields`', with fewer C calls: lines split once on LF (`lf_lines`),
    status lines and per-name-sequence facts (are all names tokens, where are the framing fields)
    looked up in small bounded caches, since a server sends the same few status lines and header name
    sequences again and again (the last few such sequences are tried first, line by line). Raises
    HeadError as `parse_head` does.
    """
    return read_lines(lf_lines(block), is_request, ts, offset)


def lf_lines(block: bytes) -> list[bytes]:
    """`block` split on LF: each line keeps the CR of a CRLF (`read_lines` takes one off), so a head with
    bare LFs splits as one with CRLFs does. (Splitting on CRLF needed a count of the LFs to find a bare
    one, a byte-by-byte loop in CPython that cost more than the split.)"""
    return block.split(b"\n")


def read_lines(
    lines: list[bytes], is_request: bool, ts: float, offset: int, cut_at_crlf: bool = False
) -> tuple[HttpRequest | HttpResponse, Fields]:
    """`read_head` of a head already split into lines (`lf_lines`: each line may end with the CR of its
    CRLF, which is not part of it; the list may end with an empty string). The list is only read.

    `cut_at_crlf`: the lines were cut at the first LF CR LF, unchecked for an earlier LF LF: an empty line
    among them raises `EmptyLine` (no guessed plan matches a head with one, so only the planned path,
    which the unusual heads take, looks).
    """
    line = lines[0]
    if is_request:
        parts = line.split()
        if len(parts) != 3:
            raise HeadError("request line needs three parts")
        method, target, version = parts
        if (version != b"HTTP/1.1" and not _is_http1(version)) or (
            method != b"GET"  # (a comparison, where the set's lookup hashes the fresh bytes)
            and method not in _COMMON_METHODS
            and (len(method) > MAX_METHOD_BYTES or method.translate(None, TOKEN_CHARS))
        ):
            raise HeadError("not an HTTP/1.x request line")
    else:
        parsed = _STATUS_LINES.get(line)  # by the line as split, its CR included
        if parsed is None:
            bare = line[:-1] if line.endswith(b"\r") else line
            parsed = _remember(
                _STATUS_LINES, line, parse_status_line(bare), _MAX_STATUS_LINES, _MAX_CACHED_LINE
            )
        version, status, reason = parsed
    # The header fields, and the framing fields among them (collected in the same pass when all names
    # are tokens): one function with the start line, since a call per message costs measurably here.
    fields: Fields = NO_FIELDS
    if len(lines) <= 2:
        headers: list[tuple[bytes, bytes]] = []
    else:
        # The field lines are lines[1 : n + 1]: after the start line, without the empty string that
        # follows the last line end (read in place: deleting and popping were generic calls).
        n = len(lines) - 1 if lines[-1] else len(lines) - 2
        headers = []
        # First the guesses, the last few plans of a head of this kind with this many lines, most recently
        # matched first, each checked line by line from the last (where name sequences tend to differ, so
        # a wrong guess fails at once): a line that starts with its prefix `name: ` followed by no other
        # white space is that field, its value a slice up to the line's CR (what partition and strip
        # would give, without their two calls per line; other trailing white space, rare, is stripped).
        # Peers send the same few name sequences again and again; a miss costs the lines checked, and
        # the plan found instead becomes the first guess.
        matched: _Plan | None = None
        guesses = _GUESSES.get(n + n + (1 if is_request else 0))
        if guesses is not None:
            for j in range(len(guesses)):
                guess = guesses[j]
                shared, _, prefixes = guess
                headers = []
                for i in range(n - 1, -1, -1):
                    line = lines[i + 1]
                    prefix = prefixes[i]
                    k = len(prefix)
                    if len(line) > k and line.startswith(prefix) and line[k] > 32:
                        # line[k] is no CR, so a line ending in one has a byte before it past the prefix.
                        last = line[-1]
                        if last == 13 and line[-2] > 32:
                            value = line[k:-1]
                        elif last > 32:
                            value = line[k:]
                        else:
                            value = line[k:].rstrip(b" \t\r")
                        headers.append((shared[i], value))
                    else:
                        break
                else:
                    headers.reverse()
                    matched = guess
                    if j:  # by index: compiled, a plan is unboxed, so `is` would not find it
                        guesses.insert(0, guesses.pop(j))
                    break
        if matched is None:
            field_lines = lines[1 : n + 1]
            if cut_at_crlf and b"" in field_lines:
                raise EmptyLine
            headers, fields = _planned_fields(field_lines, is_request)
        elif matched[1]:
            fields = _framing_values(matched[1], headers)
    # Positional (body, body_size, body_truncated, trailers, ts_start, ts_end, stream_offset): interpreted,
    # a third cheaper than by keyword, and this runs for every message.
    if is_request:
        return HttpRequest(method, target, version, headers, b"", 0, False, None, ts, 0.0, offset), fields
    return HttpResponse(status, version, headers, reason, b"", 0, False, None, ts, 0.0, offset), fields


def _planned_fields(lines: list[bytes], is_request: bool) -> tuple[list[tuple[bytes, bytes]], Fields]:
    """The header fields of a head's field lines (start line and line ends removed) and the framing fields
    among them, by the plan of their names; the plan becomes the guess for the next head of this kind
    with as many lines, when each of them is a field."""
    fields: Fields = NO_FIELDS
    pairs = [line.partition(b":") for line in lines]
    names = b"\n".join([pair[0] for pair in pairs])
    plan = _PLANS.get(names)
    if plan is None:
        plan = _remember(_PLANS, names, _plan(names), _MAX_PLANS, _MAX_CACHED_NAMES)
    shared, framing, _ = plan
    if not shared:
        # A name that is not a token, or a folded line: the general loop decides.
        headers = parse_fields(lines)
        return headers, framing_fields(headers)
    # All names are tokens, so no line is folded. The names are the plan's shared ones.
    headers = [(shared[i], value.strip(b" \t\r")) for i, (_, _, value) in enumerate(pairs)]
    if framing:
        # A line without a colon is no field: its framing name (if it is one) is not looked at.
        fields = _framing_values(tuple([f for f in framing if pairs[f[1]][1]]), headers) or NO_FIELDS
    if not all([sep and n for n, sep, _ in pairs]):
        # Lines without a colon and empty names are skipped, exactly as parse_fields skips them.
        return [h for h, (n, sep, _) in zip(headers, pairs, strict=True) if sep and n], fields
    if len(lines) <= _MAX_GUESS_LINES and len(names) <= _MAX_CACHED_NAMES:
        slot = len(lines) * 2 + (1 if is_request else 0)
        guesses = _GUESSES.get(slot)
        if guesses is None:
            _GUESSES[slot] = [plan]
        elif plan in guesses:
            # Known, and missed all the same (other white space around a value): first, not twice.
            guesses.remove(plan)
            guesses.insert(0, plan)
        else:
            guesses.insert(0, plan)
            del guesses[_GUESSES_PER_KEY:]
    return headers, fields


def _framing_values(framing: _Framing, headers: list[tuple[bytes, bytes]]) -> Fields:
    """The framing fields by the plan's (lower-case name, line index) pairs; `headers` has one field a
    line (a guess that matched, or a plan's lines all with a colon)."""
    collected: Fields = {}
    for key, index in framing:
        value = headers[index][1]
        values = collected.get(key)
        if values is None:
            collected[key] = [value]
        else:
            values.append(value)
    return collected


def _remember(cache: dict[bytes, _V], key: bytes, value: _V, limit: int, max_key: int) -> _V:
    """`value`, kept in a bounded memo (emptied when full) when `key` is at most `max_key` bytes long (a
    miss's path only: the hits stay inline)."""
    if len(key) <= max_key:
        if len(cache) >= limit:
            cache.clear()
        cache[key] = value
    return value


def _plan(names: bytes) -> _Plan:
    """For LF-joined field names: `_GENERAL` if one is not a token, else (the names, (lower-case name,
    line index) of each framing field, in order, each name + `: `)."""
    if names.translate(None, _TOKEN_CHARS_NL):
        return _GENERAL
    framing = tuple((key, i) for i, key in enumerate(names.lower().split(b"\n")) if key in _FRAMING_NAMES)
    shared = tuple(names.split(b"\n"))
    return shared, framing, tuple([name + b": " for name in shared])
