"""The end user's IP address: the plugin's header order (reference 6.1), parsed correctly.

Differences from the plugin's client_ip.lua, all fixes: compressed IPv6 (`2001:db8::1`) is accepted
(the plugin cuts it at the last colon, taking it for a port); `[v6]:port`, `v4:port` and zone ids
(`fe80::1%eth0`, zone dropped: it means nothing off the host) are handled; `Forwarded: for=` is parsed
(RFC 7239, quoted values too) instead of compared whole; every header may hold a comma list and the
leftmost valid address wins (a repeated header is joined with ", " by the event builder).
IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is reported as the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["HEADER_ORDER", "client_ip", "forwarded_ip", "parse_ip"]

HEADER_ORDER: Final = (
    "x-client-ip",
    "x-forwarded-for",
    "cf-connecting-ip",
    "fastly-client-ip",
    "true-client-ip",
    "x-real-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
    "forwarded",
)
_HEADER_NAMES: Final = frozenset(HEADER_ORDER)

# parse_ip is pure and sees the same few texts over and over (a flow's peer, a proxy's X-Forwarded-For),
# while ipaddress costs microseconds: remember answers, forgetting all when full so memory stays bounded.
_PARSED: dict[str, str | None] = {}
_PARSED_MAX: Final = 4096
_MISSING: Final = object()


def parse_ip(text: str) -> str | None:
    """Normalised address text of one candidate (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, ...), or None."""
    found = _PARSED.get(text, _MISSING)
    if found is _MISSING:
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        found = _PARSED[text] = _parse_ip(text)
    return found  # type: ignore[return-value]


def _parse_ip(text: str) -> str | None:
    text = text.strip().strip('"').strip()
    if not text:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        rest = text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        if not port.isdigit():
            return None
        text = host
    text = text.partition("%")[0]  # zone id
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _forwarded_for(value: str) -> list[str]:
    """The `for=` values of an RFC 7239 Forwarded header, in order."""
    out = []
    for element in value.split(","):
        for pair in element.split(";"):
            key, eq, val = pair.partition("=")
            if eq and key.strip().lower() == "for":
                out.append(val)
    return out


def _candidates(name: str, value: str) -> list[str]:
    if name == "forwarded" or "for=" in value.lower():
        return _forwarded_for(value)
    return value.split(",")


def client_ip(headers: Mapping[str, str], peer: str | None) -> str | None:
    """The first valid address from the headers in the plugin's order, else the TCP peer."""
    for name in HEADER_ORDER:
        value = headers.get(name)
        if not value:
            continue
        for candidate in _candidates(name, value):
            ip = parse_ip(candidate)
            if ip is not None:
                return ip
    if peer is None:
        return None
    return parse_ip(peer) or peer


def forwarded_ip(headers: Mapping[str, Sequence[str]]) -> str | None:
    """`client_ip(..., None)` over header lists (name -> values, a repeated header joined with ", ").

    Most requests carry none of the headers, so that case costs one set operation and no joining.
    """
    if _HEADER_NAMES.isdisjoint(headers):
        return None
    return client_ip({name: ", ".join(headers[name]) for name in HEADER_ORDER if name in headers}, None)
