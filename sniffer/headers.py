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
# Blocks of at most this many fields leave a template (`_Template`), one per number of fields.
_TEMPLATE_MAX_FIELDS: Final = 64


class _Template:
    """The last block of a number of fields `read_headers` read, for the next block with the same name
    objects (the core shares one object per name among heads with the same names, and peers send the same
    few heads again and again): its `names`, the `masks` it was shown under, its two dicts with every key
    in place (values None: copies are filled, never these) and, per field, its key and whether it is shown.
    Copying a dict with its keys in place and setting their values costs about half of inserting them
    into a new dict, which grows as they come."""

    __slots__ = ("keys", "lists", "masks", "names", "show", "shown")

    def __init__(
        self,
        names: list[bytes],
        masks: frozenset[str] | None,
        keys: list[str],
        show: list[bool],
        lists: dict[str, object],
        shown: dict[str, object],
    ) -> None:
        self.names = names
        self.masks = masks
        self.keys = keys
        self.show = show
        self.lists = lists
        self.shown = shown


_TEMPLATES: dict[int, _Template] = {}


def _same_names(headers: list[tuple[bytes, bytes]], names: list[bytes]) -> bool:
    """Are `headers`' names these very objects, in this order?"""
    n = len(headers)
    if n != len(names):
        return False
    for i in range(n):  # noqa: SIM110 (compiled, a loop over indexes: no iterator, no tuple unpacking)
        if headers[i][0] is not names[i]:
            return False
    return True


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
    n = len(headers)
    # Only with masks, as the event builder reads a message it shows: `header_lists` (masks None) mostly
    # reads what crossed from a worker, whose names are new objects each time (a template would never
    # be used, and making one costs more than the reading).
    template = _TEMPLATES.get(n) if masks is not None else None
    if template is not None and template.masks is masks and _same_names(headers, template.names):
        return _fill(template, headers)
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
        if masks is not None and 0 < n <= _TEMPLATE_MAX_FIELDS:
            keys = list(out)
            _TEMPLATES[n] = _Template(
                [name for name, _ in headers],
                masks,
                keys,
                [key in shown for key in keys],
                dict.fromkeys(keys),
                dict.fromkeys(shown),
            )
        return out, shown
    return _read_repeated(headers, masks)


def _fill(
    template: _Template, headers: list[tuple[bytes, bytes]]
) -> tuple[HeaderLists, dict[str, str | list[str]]]:
    """`read_headers` of a block with the template's names: copies of its dicts, their values set."""
    out: HeaderLists = template.lists.copy()  # type: ignore[assignment]  # every value set below
    shown: dict[str, str | list[str]] = template.shown.copy()  # type: ignore[assignment]
    keys = template.keys
    show = template.show
    for i in range(len(keys)):
        decoded = text(headers[i][1])
        key = keys[i]
        out[key] = [decoded]
        if show[i]:
            shown[key] = decoded
    return out, shown


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
