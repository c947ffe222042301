"""User and company identification, the Kong plugin's order with moesif.md's deliberate fixes.

Pure functions over header mappings whose keys are lowercased names and whose values are the header's
first value (the event builder provides that view, unmasked). Order (reference section 5, moesif.md
"Identification"):

user:    user_id_header -> x-consumer-custom-id -> x-consumer-username -> x-consumer-id
         -> token in the first present `authorization_header_name` (Bearer JWT claim, Basic user name,
            or a scheme-less JWT / base64 JSON) -> user_id_header in the *response* (plugin pass B)
company: company_id_header -> token claim `authorization_company_id_field`
         -> company_id_header in the response

Fixes over the plugin: schemes matched case-insensitively as the first word; JWT segments decoded as
base64url (padded or not) then standard base64; Basic user = text before the FIRST colon; claim paths
may be dotted (a flat key wins); only strings and integers (not booleans) become ids; the company claim
is read whenever a token is present, not only when no x-consumer-* header named the user (the plugin's
"JWT company beats the header" quirk is dropped: the header comes first, as moesif.md says).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from sniffer.config import Config

__all__ = ["Identity", "claim_id", "decode_claims", "identify", "token_claims", "token_user"]

_CONSUMER_HEADERS = ("x-consumer-custom-id", "x-consumer-username", "x-consumer-id")


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str | None = None
    company_id: str | None = None


def _header(headers: Mapping[str, str], name: str | None) -> str | None:
    """A non-blank header value. nginx lookups also map `_` to `-`; so do we."""
    if not name:
        return None
    name = name.strip().lower()
    value = headers.get(name)
    if value is None and "_" in name:
        value = headers.get(name.replace("_", "-"))
    if value is None:
        return None
    value = value.strip()
    return value or None


def _b64decode(segment: str) -> bytes | None:
    """base64url with or without padding, then standard base64 (both strict about the alphabet)."""
    segment = segment.strip()
    padded = segment + "=" * (-len(segment) % 4)
    for alt in (b"-_", b"+/"):
        try:
            return base64.b64decode(padded.encode("ascii"), altchars=alt, validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            continue
    return None


def decode_claims(segment: str) -> dict[str, object] | None:
    """The JSON object encoded in one base64(url) segment, or None."""
    raw = _b64decode(segment)
    if raw is None:
        return None
    try:
        claims = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return claims if isinstance(claims, dict) and claims else None


def _lookup(obj: dict[str, object], key: str) -> object | None:
    """The plugin adds a lowercased copy of every key, so a key matches exactly or by its lowercase."""
    if key in obj:
        return obj[key]
    for k, v in obj.items():
        if k.lower() == key:
            return v
    return None


def claim_id(claims: Mapping[str, object], field: str | None) -> str | None:
    """The id held by `field` (flat key first, then dotted path): strings as-is, integers in full."""
    if not field:
        return None
    value = _lookup(dict(claims), field)
    if value is None and "." in field:
        node: object = dict(claims)
        for part in field.split("."):
            if not isinstance(node, dict):
                node = None
                break
            node = _lookup(node, part)
        value = node
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    return None


def _split_scheme(value: str) -> tuple[str, str]:
    scheme, _, rest = value.strip().partition(" ")
    return scheme.lower(), rest.strip()


def token_claims(value: str) -> dict[str, object] | None:
    """Claims of a Bearer JWT, or of a scheme-less JWT / base64 JSON value (plugin PR #66). Not Basic."""
    scheme, rest = _split_scheme(value)
    if scheme == "basic":
        return None
    if scheme == "bearer":
        parts = rest.split(".")
        # An opaque bearer token (no second segment) names nobody, as in the plugin.
        return decode_claims(parts[1]) if len(parts) > 1 else None
    # Anything else is read like the plugin does: the second dot-separated segment of the whole value
    # (so "Token a.b.c" and a bare JWT both work), else the whole value as base64 JSON.
    parts = value.strip().split(".")
    if len(parts) > 1:
        return decode_claims(parts[1])
    return decode_claims(value)


def _basic_user(value: str) -> str | None:
    scheme, rest = _split_scheme(value)
    if scheme != "basic":
        return None
    raw = _b64decode(rest)
    if raw is None:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, colon, _ = text.partition(":")
    return user if colon and user else None


def _token_header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first configured token header present (even if it then yields nothing, like the plugin)."""
    for name in names:
        if name in headers:
            return headers[name]
    return None


def token_user(value: str, field: str | None) -> str | None:
    """The user named by one token header value: Basic user name, or the claim `field`."""
    user = _basic_user(value)
    if user is not None:
        return user
    claims = token_claims(value)
    return claim_id(claims, field) if claims else None


def identify(
    request_headers: Mapping[str, str], response_headers: Mapping[str, str] | None, config: Config
) -> Identity:
    """User and company for one call. Headers: lowercased names -> first value, unmasked."""
    response_headers = response_headers or {}
    user = _header(request_headers, config.user_id_header)
    if user is None:
        for name in _CONSUMER_HEADERS:
            user = _header(request_headers, name)
            if user is not None:
                break
    token = _token_header(request_headers, config.authorization_header_name)
    claims = token_claims(token) if token is not None else None
    if user is None and token is not None:
        user = _basic_user(token)
        if user is None and claims:
            user = claim_id(claims, config.authorization_user_id_field)
    if user is None:
        user = _header(response_headers, config.user_id_header)

    company = _header(request_headers, config.company_id_header)
    if company is None and claims:
        company = claim_id(claims, config.authorization_company_id_field)
    if company is None:
        company = _header(response_headers, config.company_id_header)
    return Identity(user, company)
