"""Masks: what must not leave the host (moesif.md "Masks").

Header masks delete headers (case-insensitive); body masks delete JSON keys at any depth, arrays
included (exact, case-sensitive, as the plugin); query masks replace the value of every occurrence of
that exact parameter name with `*****`. Credential headers are masked by default (beyond the plugin).
Identification runs before masking, on the unmasked values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, TypeVar
from urllib.parse import unquote_plus

__all__ = ["CREDENTIAL_HEADERS", "MASK_VALUE", "header_mask_set", "mask_body", "mask_headers", "mask_query"]

CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "cookie", "set-cookie", "x-api-key", "apikey", "proxy-authorization"}
)
MASK_VALUE: Final = "*****"

V = TypeVar("V")


def header_mask_set(configured: Iterable[str], mask_credentials: bool) -> frozenset[str]:
    """Lowercased header names to delete: the configured ones plus, unless opted out, the credentials."""
    names = {name.strip().lower() for name in configured if name.strip()}
    if mask_credentials:
        names |= CREDENTIAL_HEADERS
    return frozenset(names)


def mask_headers(headers: Mapping[str, V], names: frozenset[str]) -> dict[str, V]:
    """A copy of `headers` without the masked names (keys compared lowercased)."""
    if not names:
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() not in names}


def mask_body(value: object, keys: frozenset[str]) -> object:
    """Delete every dict key in `keys`, at any depth, in place; returns `value` for chaining.

    Iterative, because a parsed body may nest deeper than Python's recursion limit.
    """
    if not keys or not isinstance(value, dict | list):
        return value
    stack: list[object] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in [k for k in node if k in keys]:
                del node[key]
            stack.extend(v for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))
    return value


def mask_query(target: str, names: frozenset[str]) -> str:
    """Replace the value of each `name=value` pair whose (percent-decoded) name is in `names`.

    A parameter without `=` has no value to hide and is kept as it is.
    """
    if not names:
        return target
    path, sep, query = target.partition("?")
    if not sep or not query:
        return target
    pairs = query.split("&")
    changed = False
    for i, pair in enumerate(pairs):
        name, eq, _ = pair.partition("=")
        if eq and (name in names or unquote_plus(name) in names):
            pairs[i] = f"{name}={MASK_VALUE}"
            changed = True
    return f"{path}?{'&'.join(pairs)}" if changed else target
