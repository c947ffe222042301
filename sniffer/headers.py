"""A message's headers decoded once: lowercased name -> values as text, the view every step reads.

Names are latin-1 (any byte is a character), values UTF-8 when valid, else latin-1. The event builder,
identification, the client IP, masks and bodies all read this one view instead of decoding again.
"""

from __future__ import annotations

from typing import Final

from reassembly.events import HttpMessage

__all__ = [
    "BYTES_WHITESPACE",
    "HeaderLists",
    "ascii_first",
    "header_lists",
    "latin1_values",
    "read_headers",
    "render_headers",
    "text",
]

HeaderLists = dict[str, list[str]]
BYTES_WHITESPACE: Final = " \t\n\r\x0b\x0c"  # what bytes.strip() strips (str.strip() strips more)

# Header names repeat call after call: remember their lowercase text, emptied when full (bounded).
_NAMES_MAX: Final = 4096
_NAMES: dict[bytes, str] = {}


def text(raw: bytes) -> str:
    """UTF-8 when valid, else latin-1 (every byte sequence is latin-1)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def header_lists(headers: list[tuple[bytes, bytes]]) -> HeaderLists:
    """Lowercased name -> values as text: the one view of a message's headers every later step reads."""
    return read_headers(headers, None)[0]


def read_headers(
    headers: list[tuple[bytes, bytes]], masks: frozenset[str] | None
) -> tuple[HeaderLists, dict[str, str | list[str]]]:
    """`header_lists` and, when `masks` is given, `render_headers` of it too, in one pass over the headers."""
    out: HeaderLists = {}
    shown: dict[str, str | list[str]] = {}
    names = _NAMES
    # The usual block names each header once: no test for repeats per header, one count at the end.
    for name, value in headers:
        key = names.get(name)
        if key is None:
            if len(names) >= _NAMES_MAX:
                names.clear()
            key = names[name] = name.decode("latin-1").lower()
        try:
            decoded = value.decode()
        except UnicodeDecodeError:
            decoded = value.decode("latin-1")
        out[key] = [decoded]
        if masks is not None and key not in masks:
            shown[key] = decoded
    if len(out) == len(headers):
        return out, shown
    return _read_repeated(headers, masks)


def _read_repeated(
    headers: list[tuple[bytes, bytes]], masks: frozenset[str] | None
) -> tuple[HeaderLists, dict[str, str | list[str]]]:
    """`read_headers` of a block that names a header more than once (rare: no need to be quick)."""
    out: HeaderLists = {}
    shown: dict[str, str | list[str]] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        decoded = text(value)
        values = out.get(key)
        if values is not None:
            values.append(decoded)
            if key in shown:
                shown[key] = values if key == "set-cookie" else ", ".join(values)
        else:
            out[key] = [decoded]
            if masks is not None and key not in masks:
                shown[key] = decoded
    return out, shown


def render_headers(headers: HeaderLists, masks: frozenset[str]) -> dict[str, str | list[str]]:
    """Masked headers in the API's form: repeated ones joined with ", ", except set-cookie (a list).

    The names are lowercase already, so a mask name matches without lowercasing again.
    """
    return {
        k: (v[0] if len(v) == 1 else v if k == "set-cookie" else ", ".join(v))
        for k, v in headers.items()
        if k not in masks
    }


def latin1_values(headers: HeaderLists, name: str, msg: HttpMessage) -> list[str]:
    """The values of `name` decoded as latin-1, as the body decoder reads them. For ASCII values that is
    our UTF-8 text; anything else is decoded again from the wire bytes."""
    values = headers.get(name)
    if values is None:
        return []
    if (len(values) == 1 and values[0].isascii()) or all(v.isascii() for v in values):
        return values
    raw = name.encode("ascii")
    return [v.decode("latin-1") for k, v in msg.headers if k.lower() == raw]


def ascii_first(headers: HeaderLists, name: str) -> str | None:
    """`text(msg.header(name).strip())` when that value is ASCII and not blank, else None.

    For ASCII our text is the wire bytes, char for char, and bytes.strip() strips BYTES_WHITESPACE.
    """
    values = headers.get(name)
    if values is None or not values[0].isascii():
        return None
    return values[0].strip(BYTES_WHITESPACE) or None
